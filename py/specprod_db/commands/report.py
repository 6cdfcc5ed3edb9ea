"""``specprod-db report``: a static HTML page of a schema's state (``DIR/index.html`` and
PNG plots beside it; no server).

Reads only (the pending tiles are planned as ``specprod-db status`` plans them; when the
tiles file is unreachable the page says so).  Exit 0 when the page is written, whatever
it shows; 2 when the schema does not exist or the database cannot be reached.
"""
from .. import db
from ..errors import EXIT_OK, InputError, RunRefused, one_line
from ..paths import add_path_arguments, paths_from_args
from .common import add_db_arguments, add_schema_argument, report_errors


def add_arguments(parser):
    add_schema_argument(parser, required=False, default="daily")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="directory of the page: DIR/index.html and its PNG files "
                             "(created if missing; the page's files are replaced)")
    add_db_arguments(parser)
    add_path_arguments(parser)


@report_errors
def run(args):
    import os

    from .. import report  # matplotlib: not for --help
    from ..pipeline import Options
    plan_options, plan_error = None, None
    try:
        plan_options = Options(schema=args.schema, paths=paths_from_args(args), dsn=args.db,
                               dry_run=True, command="report")
    except InputError as err:
        plan_error = f"input locations unknown: {one_line(err)}"
    conn = db.connect(args.db)
    try:
        if not db.schema_exists(conn, args.schema):
            raise RunRefused(f"schema {args.schema} does not exist")
        report.write(conn, args.schema, args.out, plan_options, plan_error)
    finally:
        conn.close()
    print(os.path.abspath(os.path.join(args.out, report.INDEX)))
    return EXIT_OK
