"""``tile_history``: what each run did to each tile and why (read side).

The rows are written by :mod:`specprod_db.load.tile_writer` inside each tile's own transaction
(:func:`specprod_db.load.tile_writer.record_history`), so the history never disagrees with the
data.  This module reads them for ``specprod-db history`` and ``specprod-db status``.
"""
import json

from psycopg2 import sql

from specprod_db.db.sql import qualified, reading
from specprod_db.errors import RunRefused

#: Columns of a history row, in output order (``--json`` keys).
COLUMNS = ("id", "run_id", "tileid", "action", "reason", "outcome", "error", "at", "counts",
           "tile_rows")


def require_table(conn, schema_name):
    """RunRefused unless the schema exists and has ``tile_history`` (an older ``init``)."""
    with reading(conn) as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL, EXISTS (SELECT 1 FROM pg_namespace "
                    "WHERE nspname = %s)",
                    (sql.SQL("{}.tile_history").format(sql.Identifier(schema_name))
                     .as_string(conn), schema_name))
        table, namespace = cur.fetchone()
    if not namespace:
        raise RunRefused(f"schema {schema_name} does not exist")
    if not table:
        raise RunRefused(f"schema {schema_name} has no tile_history table (created by an "
                         f"older version); run 'specprod-db init --schema {schema_name}' "
                         "to add it")


def read(conn, schema_name, since=None, tiles=None, limit=None):
    """History rows (dicts with :data:`COLUMNS`), oldest first.

    ``since`` is anything PostgreSQL reads as a ``timestamptz`` ('2024-05-01',
    '2024-05-01 06:00+00', 'today', 'yesterday'), ``tiles`` a list of TILEIDs, ``limit``
    keeps the newest N rows.
    """
    where, args = [sql.SQL("TRUE")], {}
    if since:
        where.append(sql.SQL("at >= %(since)s::timestamptz"))
        args["since"] = since
    if tiles:
        where.append(sql.SQL("tileid = ANY(%(tiles)s)"))
        args["tiles"] = [int(t) for t in tiles]
    statement = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY id DESC{}").format(
        sql.SQL(", ").join(map(sql.Identifier, COLUMNS)),
        qualified(schema_name, "tile_history"), sql.SQL(" AND ").join(where),
        sql.SQL(" LIMIT {}").format(sql.Literal(int(limit))) if limit else sql.SQL(""))
    with reading(conn) as cur:
        cur.execute(statement, args)
        rows = [dict(zip(COLUMNS, r)) for r in cur.fetchall()]
    for r in rows:
        for key in ("counts", "tile_rows"):
            r[key] = json.loads(r[key]) if r[key] else None
    return rows[::-1]


def as_json(rows):
    """Rows with ``at`` as ISO 8601 text (JSON-ready)."""
    return [dict(r, at=r["at"].isoformat()) for r in rows]


def format_rows(rows):
    """One line per row: time, run, tile, action, outcome, reason; then the error and the
    rows written, indented."""
    if not rows:
        return "no history rows"
    lines = [f"{'at':<24} {'run':>5} {'tileid':>7}  {'action':<8} {'outcome':<14} reason"]
    for r in rows:
        lines.append(f"{r['at']:%Y-%m-%d %H:%M:%S%z} {r['run_id']:>5} {r['tileid']:>7}  "
                     f"{r['action']:<8} {r['outcome']:<14} {r['reason'] or ''}".rstrip())
        if r["error"] and r["error"] != r["reason"]:
            lines.append(f"{'':>40}error: {r['error']}")
        if r["counts"]:
            lines.append(f"{'':>40}rows: " + ", ".join(
                f"{k} {v}" for k, v in sorted(r["counts"].items())))
    return "\n".join(lines)
