"""``specprod-db verify``: does the database still hold what was loaded?  Touches nothing.

The checks are those of :mod:`specprod_db.ops.verify`.  Exit 0 when nothing drifted, 1 when
something did, 2 when the schema does not exist or the database cannot be reached.
``--json``: doc/daily.md.
"""
import json

from specprod_db.commands.common import (add_db_arguments, add_schema_argument,
                                         report_errors, tile_list)
from specprod_db.db.connect import connect
from specprod_db.errors import EXIT_FAILED, EXIT_OK, InputError, one_line
from specprod_db.log import get_logger
from specprod_db.ops import history, verify
from specprod_db.paths import add_path_arguments, paths_from_args


def add_arguments(parser):
    add_schema_argument(parser, required=False, default="daily")
    add_db_arguments(parser)
    add_path_arguments(parser)
    parser.add_argument("--tiles", type=tile_list, default=None, action="extend",
                        metavar="ID[,ID..]",
                        help="only these tiles' rows (and their TARGETIDs); the checks "
                             "that are not per tile are skipped")
    parser.add_argument("--hash", action="store_true",
                        help="re-hash the input files whose size or mtime moved (a file "
                             "touched with the same bytes is then not drift)")
    parser.add_argument("--json", action="store_true",
                        help="the report as one JSON object (keys: doc/daily.md)")


@report_errors
def run(args):
    paths = None
    try:
        paths = paths_from_args(args)
    except InputError as err:
        get_logger().warning("input files not compared: %s", one_line(err))
    conn = connect(args.db)
    try:
        history.require_table(conn, args.schema)
        report = verify.verify(conn, args.schema, args.tiles, paths, args.hash)
    finally:
        conn.close()
    if paths is None:
        report["checks"]["inputs"]["skipped"] = "input locations unknown (DESI_ROOT ...)"
    if args.json:
        print(json.dumps(report, indent=1, default=str))
    else:
        print(verify.format_report(report))
    return EXIT_OK if report["ok"] else EXIT_FAILED
