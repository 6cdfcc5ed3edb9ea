"""``specprod-db maintain --schema S [--cluster auto|always|never] [--json]``.

VACUUM ANALYZE every table of the schema; CLUSTER the q3c tables on their q3c index
when it pays (``auto``: measured order and bloat, thresholds in
:mod:`specprod_db.ops.maintain`), always, or never.  Locks and when to run it:
doc/maintenance.md (``--cluster never`` is safe beside readers and loads).

Exit 0 when everything decided was done; 1 when a CLUSTER was skipped because its lock
could not be had within ``--lock-timeout``; 2 when nothing ran (no schema, no database,
a load running while CLUSTER may be needed).
"""
import json

from specprod_db.commands.common import add_db_arguments, add_schema_argument, report_errors


def add_arguments(parser):
    from specprod_db.ops.maintain import (CLUSTER_MODES, LOCK_TIMEOUT, MAX_DEAD_FRACTION,
        MIN_CORRELATION, MIN_PAGES)
    add_schema_argument(parser)
    add_db_arguments(parser)
    parser.add_argument("--cluster", choices=CLUSTER_MODES, default="auto",
                        help="CLUSTER the q3c tables (tile, exposure, photometry, "
                             "fiberassign) on their q3c index: 'auto' (default) when a "
                             f"table of more than {MIN_PAGES} pages has |correlation| < "
                             f"{MIN_CORRELATION} or dead rows > {MAX_DEAD_FRACTION * 100:g}%%; "
                             "CLUSTER blocks the table's readers while it runs, 'never' "
                             "does not")
    parser.add_argument("--lock-timeout", type=float, default=LOCK_TIMEOUT, metavar="S",
                        help="seconds CLUSTER waits for its lock before skipping the "
                             f"table (default {LOCK_TIMEOUT})")
    parser.add_argument("--json", action="store_true", help="the report as one JSON object")


@report_errors
def run(args):
    import psycopg2
    from specprod_db.db.connect import connect, server_stop
    from specprod_db.ops import maintain
    from specprod_db.errors import RunRefused, one_line
    conn = connect(args.db, application_name="specprod-db maintain")
    try:
        report = maintain.maintain(conn, args.schema, cluster=args.cluster,
                                   lock_timeout=args.lock_timeout)
    except psycopg2.Error as err:  # the database stopping the work is exit 3
        raise server_stop(err, conn) or RunRefused(one_line(err)) from None
    finally:
        conn.close()
    print(json.dumps(report, indent=1) if args.json else maintain.format_text(report))
    return 0 if report["ok"] else 1
