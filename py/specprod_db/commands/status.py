"""``specprod-db status``: tiles loaded, failed and pending, the last runs, the tables.

Reads only (the pending tiles are planned as ``specprod-db plan`` plans them).  Exit 0
when no tile is failed or pending, 1 otherwise (also when the pending tiles cannot be
known, e.g. the tiles file is unreachable: the rest is still printed), 2 when the
schema does not exist or the database cannot be reached.  ``--json``: doc/daily.md.
"""
import json

from specprod_db.commands.common import (add_db_arguments, add_schema_argument,
                                         connect_to_schema, report_errors)
from specprod_db.commands.common import plan_options as plan_options_of
from specprod_db.errors import EXIT_FAILED, EXIT_OK
from specprod_db.ops import status
from specprod_db.paths import add_path_arguments


def add_arguments(parser):
    add_schema_argument(parser, required=False, default="daily")
    add_db_arguments(parser)
    add_path_arguments(parser)
    parser.add_argument("--json", action="store_true",
                        help="the report as one JSON object (keys: doc/daily.md)")


@report_errors
def run(args):
    plan_options, plan_error = plan_options_of(args, "status")
    conn = connect_to_schema(args)
    try:
        report = status.collect(conn, args.schema, plan_options, plan_error)
    finally:
        conn.close()
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(status.format_text(report))
    return EXIT_OK if report["ok"] else EXIT_FAILED
