"""``specprod-db status``: tiles loaded, failed and pending, the last runs, the tables.

Reads only (the pending tiles are planned as ``specprod-db plan`` plans them).  Exit 0
when no tile is failed or pending, 1 otherwise (also when the pending tiles cannot be
known, e.g. the tiles file is unreachable: the rest is still printed), 2 when the
schema does not exist or the database cannot be reached.  ``--json``: doc/status.md.
"""
import json

from .. import db, status
from ..errors import EXIT_FAILED, EXIT_OK, InputError, RunRefused, one_line
from ..paths import add_path_arguments, paths_from_args
from .common import add_db_arguments, add_schema_argument, report_errors


def add_arguments(parser):
    add_schema_argument(parser, required=False, default="daily")
    add_db_arguments(parser)
    add_path_arguments(parser)
    parser.add_argument("--json", action="store_true",
                        help="the report as one JSON object (keys: doc/status.md)")


@report_errors
def run(args):
    from ..pipeline import Options  # not for --help (the pipeline's imports are heavy)
    plan_options, plan_error = None, None
    try:
        plan_options = Options(schema=args.schema, paths=paths_from_args(args), dsn=args.db,
                               dry_run=True, command="status")
    except InputError as err:
        plan_error = f"input locations unknown: {one_line(err)}"
    conn = db.connect(args.db)
    try:
        if not db.schema_exists(conn, args.schema):
            raise RunRefused(f"schema {args.schema} does not exist")
        report = status.collect(conn, args.schema, plan_options, plan_error)
    finally:
        conn.close()
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(status.format_text(report))
    return EXIT_OK if report["ok"] else EXIT_FAILED
