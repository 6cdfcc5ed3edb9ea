"""``specprod-db migrate --schema S [--dry-run]``: bring a schema to the current layout.

Applies the migrations of :mod:`specprod_db.db.migrate` the schema lacks, in order, each in
one transaction that records the layout it reaches in the ``version`` table; prints what
each step did.  A schema already at the current layout is left as it is (a layout found
by inspection, on a schema made before layouts were recorded, is recorded).  It takes the
schema's load lock, so it never runs beside a load (exit 2 naming the load).

Exit 0 when the schema is (or, with ``--dry-run``, would be) at the current layout; 1
when a migration failed (rolled back; the message names the layout the schema is at); 2
when nothing could start (no such schema, not a production schema, a layout newer than
this specprod-db, a load running, no database).
"""
import json

from specprod_db.commands.common import add_db_arguments, add_schema_argument, report_errors
from specprod_db.db.connect import connect, schema_exists, server_stop
from specprod_db.errors import RunRefused, one_line


def add_arguments(parser):
    add_schema_argument(parser)
    add_db_arguments(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="list the migrations and their steps; change nothing")
    parser.add_argument("--json", action="store_true", help="the report as one JSON object")


@report_errors
def run(args):
    import psycopg2
    from specprod_db.db import migrate
    from specprod_db.db.lock import acquire_lock
    conn = connect(args.db)
    try:
        if not schema_exists(conn, args.schema):
            raise RunRefused(f"schema {args.schema} does not exist")
        if not args.dry_run:
            acquire_lock(conn, args.schema)  # held until the connection closes
        report = migrate.migrate(conn, args.schema, dry_run=args.dry_run)
    except psycopg2.Error as err:  # outside a migration's transaction: nothing written
        raise server_stop(err, conn) or RunRefused(one_line(err)) from None
    finally:
        conn.close()
    print(json.dumps(report, indent=1) if args.json else migrate.format_report(report))
    return 0
