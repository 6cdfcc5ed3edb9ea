"""The rows a key or a foreign key would refuse, named with their tiles.

When the server refuses a key, unique index or foreign key of
:mod:`specprod_db.db.builds` (or before it is built, if asked),
:func:`duplicates` / :func:`orphans` (:func:`violations` of either kind) find the rows
that stop it — two rows with one key, or rows whose reference is missing — with their
tiles; :func:`describe_violation` makes the one line naming them, raised as
:class:`KeyViolation`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from psycopg2 import sql

from specprod_db.db.builds import FOREIGN_KEY, KEY_KINDS, Build
from specprod_db.db.sql import qualified
from specprod_db.errors import InputError
from specprod_db.schema import Table
from specprod_db.schema import table as schema_table

# --- rows a key or a foreign key refuses --------------------------------------------

class KeyViolation(InputError):
    """Rows that a key, unique index or foreign key being built refuses: two rows with
    one key, or rows whose reference is missing.  The message names each build, its
    table, key values and tiles; ``found`` is ``{build name: [row group, ...]}`` as
    :func:`duplicates` and :func:`orphans` return them."""

    def __init__(self, message: str, found: Mapping[str, list[dict[str, Any]]]):
        super().__init__(message)
        self.found = dict(found)


def _value(v: Any) -> Any:
    if isinstance(v, Decimal) and v == v.to_integral_value():
        return int(v)
    return v


def _tile_list(t: Table, alias: str = "") -> sql.Composable:
    if "tileid" not in t.names:
        return sql.SQL("NULL::integer[]")
    col = sql.SQL("{}.tileid").format(sql.Identifier(alias)) if alias \
        else sql.Identifier("tileid")
    return sql.SQL("array_agg(DISTINCT {} ORDER BY {})").format(col, col)


def duplicates(conn: Any, schema_name: str, b: Build,
               limit: int = 10) -> list[dict[str, Any]]:
    """The values of key ``b`` (primary key, unique constraint or unique index) held by
    more than one row of its table, at most ``limit`` of them in key order: ``{"key":
    {column: value}, "rows": n, "tiles": [tileid, ...] or None, "total": number of
    duplicated values}``."""
    if b.kind not in KEY_KINDS:
        raise ValueError(f"{b.name} is a {b.kind}, not a key")
    t = schema_table(b.table)
    cols = sql.SQL(", ").join(map(sql.Identifier, b.columns))
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT {}, count(*), {}, count(*) OVER () FROM {} "
                            "GROUP BY {} HAVING count(*) > 1 ORDER BY {} LIMIT %s").format(
            cols, _tile_list(t), qualified(schema_name, b.table), cols, cols), (limit,))
        rows = cur.fetchall()
    conn.rollback()
    n = len(b.columns)
    return [{"key": dict(zip(b.columns, map(_value, r[:n]))), "rows": r[n],
             "tiles": r[n + 1], "total": r[n + 2]} for r in rows]


def orphans(conn: Any, schema_name: str, b: Build,
            limit: int = 10) -> list[dict[str, Any]]:
    """The values of foreign key ``b``'s column that no row of the referenced table
    holds, at most ``limit`` of them: ``{"key": {column: value}, "rows": n, "tiles":
    [tileid, ...] or None, "total": number of missing values}``."""
    if b.kind != FOREIGN_KEY or b.references is None:
        raise ValueError(f"{b.name} is a {b.kind}, not a foreign key")
    t = schema_table(b.table)
    (col,) = b.columns
    rtable, rcol = b.references
    c = sql.SQL("c.{}").format(sql.Identifier(col))
    with conn.cursor() as cur:
        cur.execute(sql.SQL(
            "SELECT {c}, count(*), {tiles}, count(*) OVER () FROM {child} c "
            "WHERE {c} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {parent} p "
            "WHERE p.{rcol} = {c}) GROUP BY {c} ORDER BY {c} LIMIT %s").format(
            c=c, tiles=_tile_list(t, "c"), child=qualified(schema_name, b.table),
            parent=qualified(schema_name, rtable), rcol=sql.Identifier(rcol)), (limit,))
        rows = cur.fetchall()
    conn.rollback()
    return [{"key": {col: _value(r[0])}, "rows": r[1], "tiles": r[2], "total": r[3]}
            for r in rows]


def violations(conn: Any, schema_name: str, b: Build,
               limit: int = 10) -> list[dict[str, Any]]:
    """:func:`duplicates` of a key, :func:`orphans` of a foreign key, [] for an index."""
    if b.kind in KEY_KINDS:
        return duplicates(conn, schema_name, b, limit)
    if b.kind == FOREIGN_KEY:
        return orphans(conn, schema_name, b, limit)
    return []


def describe_violation(b: Build, found: Sequence[Mapping[str, Any]]) -> str:
    """One line naming the table, the build, the key values and their tiles."""
    def group(g: Mapping[str, Any]) -> str:
        key = ", ".join(f"{k}={v}" for k, v in g["key"].items())
        tiles = g["tiles"]
        where = "" if tiles is None else \
            f", tile{'s' if len(tiles) > 1 else ''} {', '.join(map(str, tiles))}"
        rows = g["rows"]
        return f"{key} ({rows} row{'s' if rows != 1 else ''}{where})"
    total = found[0]["total"] if found else 0
    shown = "; ".join(group(g) for g in found)
    more = f"; and {total - len(found)} more" if total > len(found) else ""
    if b.kind == FOREIGN_KEY:
        assert b.references is not None
        rtable, rcol = b.references
        return (f"{b.table}: {total} value{'s' if total != 1 else ''} of {b.columns[0]} "
                f"reference{'' if total != 1 else 's'} no {rtable} row (foreign key "
                f"{b.name}, {b.columns[0]} -> {rtable}.{rcol}): {shown}{more}")
    return (f"{b.table}: {total} value{'s' if total != 1 else ''} of its {b.kind} "
            f"{b.name} ({', '.join(b.columns)}) {'are' if total != 1 else 'is'} held by "
            f"more than one row: {shown}{more}")
