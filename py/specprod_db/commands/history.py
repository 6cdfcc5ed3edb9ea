"""``specprod-db history``: what each load run did to each tile, and why (``tile_history``).

Exit 0; 2 when the schema or its ``tile_history`` table does not exist, or ``--since``
is not a time.
"""
import json

import psycopg2

from specprod_db.commands.common import (add_db_arguments, add_schema_argument,
                                         report_errors, tile_list)
from specprod_db.db.connect import connect
from specprod_db.errors import RunRefused, one_line
from specprod_db.ops import history


def add_arguments(parser):
    add_schema_argument(parser)
    add_db_arguments(parser)
    parser.add_argument("--since", default=None, metavar="TIME",
                        help="only rows since TIME: anything PostgreSQL reads as a "
                             "timestamptz (2024-05-01, '2024-05-01 06:00+00', today, "
                             "yesterday)")
    parser.add_argument("--tile", "--tiles", dest="tiles", type=tile_list, default=None,
                        metavar="ID[,ID..]", help="only these TILEIDs (repeatable)",
                        action="extend")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="only the newest N rows")
    parser.add_argument("--json", action="store_true",
                        help="a JSON object {schema, since, tiles, rows: [...]} "
                             "(doc/daily.md)")


@report_errors
def run(args):
    conn = connect(args.db)
    try:
        history.require_table(conn, args.schema)
        try:
            rows = history.read(conn, args.schema, args.since, args.tiles, args.limit)
        except psycopg2.DataError as err:
            raise RunRefused(f"--since {args.since!r}: {one_line(err)}") from None
    finally:
        conn.close()
    if args.json:
        print(json.dumps({"schema": args.schema, "since": args.since, "tiles": args.tiles,
                          "rows": history.as_json(rows)}, indent=1))
    else:
        print(history.format_rows(rows))
    return 0
