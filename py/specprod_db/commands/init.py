"""``specprod-db init``: create a production schema (tables, keys, indexes, q3c, grants).

Idempotent: running it twice changes nothing.  ``--overwrite`` drops the schema first and
requires ``--yes`` as well, because it destroys everything loaded in it; it first takes
the schema's load lock (:func:`specprod_db.db.lock.acquire_lock`), so a running load is
never dropped from under it: init then refuses with exit 2.

An existing schema is brought up to date without ``CREATE SCHEMA``, so a role that owns
it but may not create schemas in the database can init it.  A statement the database
refuses (a role without CREATE, ...) is one line and exit 2, nothing created.
"""
import sys

import psycopg2

from specprod_db.commands.common import (add_db_arguments, add_grant_arguments,
                                         add_schema_argument, grant_roles, report_errors)
from specprod_db.db import ddl, migrate
from specprod_db.db.connect import connect, schema_exists, server_stop
from specprod_db.db.lock import acquire_lock
from specprod_db.errors import RunRefused, one_line
from specprod_db.log import get_logger


def add_arguments(parser):
    add_schema_argument(parser)
    add_db_arguments(parser)
    parser.add_argument("--specprod", default=None,
                        help="production name recorded in the version table "
                             "(default: $SPECPROD, else the schema name)")
    parser.add_argument("--overwrite", action="store_true",
                        help="drop the schema and everything in it first (needs --yes)")
    parser.add_argument("--yes", action="store_true",
                        help="confirm --overwrite without asking")
    add_grant_arguments(parser)


@report_errors
def run(args):
    import os
    log = get_logger()
    if args.overwrite and not args.yes:
        print(f"specprod-db init: --overwrite drops schema {args.schema!r} and all its data; "
              "add --yes to confirm", file=sys.stderr)
        return 2
    specprod = args.specprod or os.environ.get("SPECPROD") or args.schema
    conn = connect(args.db)
    try:
        if args.overwrite and schema_exists(conn, args.schema):
            _lock_out_loads(conn, args.schema)
        created = ddl.create_schema(conn, args.schema, overwrite=args.overwrite)
        migrate.record_versions(conn, args.schema, specprod)
        granted = ddl.grant_read(conn, args.schema, grant_roles(args))
    except psycopg2.Error as err:  # a role without CREATE ...: rolled back, exit 2
        raise server_stop(err, conn) or RunRefused(
            f"init of schema {args.schema} refused by the database: {one_line(err)}") \
            from None
    finally:
        conn.close()
    log.info("schema %s %s; read access: %s", args.schema,
             "created" if created else "already up to date", ", ".join(granted) or "none")
    return 0


def _lock_out_loads(conn, schema_name):
    """Take the schema's load lock (held until ``conn`` closes) or refuse: RunRefused
    naming the running load."""
    try:
        acquire_lock(conn, schema_name)
    except RunRefused as err:
        reason = str(err).removesuffix("; not starting")
        raise RunRefused(f"init --overwrite refused, schema {schema_name} left as it is: "
                         f"{reason}") from None
