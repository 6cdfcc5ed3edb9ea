"""``specprod-db report``: a static HTML page of a schema's state (``DIR/index.html`` and
PNG plots beside it; no server).

Reads only (the pending tiles are planned as ``specprod-db status`` plans them; when the
tiles file is unreachable the page says so).  Exit 0 when the page is written, whatever
it shows; 2 when the schema does not exist or the database cannot be reached.
"""
from specprod_db.commands.common import (add_db_arguments, add_schema_argument,
                                         connect_to_schema, report_errors)
from specprod_db.commands.common import plan_options as plan_options_of
from specprod_db.errors import EXIT_OK
from specprod_db.paths import add_path_arguments


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

    from specprod_db.ops import report
    plan_options, plan_error = plan_options_of(args, "report")
    conn = connect_to_schema(args)
    try:
        report.write(conn, args.schema, args.out, plan_options, plan_error)
    finally:
        conn.close()
    print(os.path.abspath(os.path.join(args.out, report.INDEX)))
    return EXIT_OK
