"""Sets of TARGETIDs handed to SQL as temporary tables filled by COPY.

Never an ``= ANY(%s)`` array literal: its size is unbounded (a whole production's
TARGETIDs in an initial load), it is parsed as one statement, and the planner cannot
estimate it.  A temporary table of one ``bigint`` primary-key column is filled by COPY
in chunks, ANALYZEd, and joined.
"""
import io
import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from psycopg2 import sql
from psycopg2.extensions import cursor

from specprod_db.db.sql import index_probes

#: Rows per COPY into a temporary table.
COPY_CHUNK = 1_000_000


def create(cur: cursor, ids: Iterable[int] | np.ndarray | None = None,
           name: str | None = None, on_commit: str = "DROP",
           select: sql.Composable | None = None,
           params: Sequence[Any] | Mapping[str, Any] | None = None) -> sql.Identifier:
    """A temporary table ``(targetid bigint PRIMARY KEY)``; returns its identifier.

    Filled with ``ids`` (array-like of int; duplicates removed) and/or the rows of the
    query ``select`` (``sql.Composable`` returning one bigint column, with ``params``).
    ``on_commit``: ``DROP`` (the table lives for the transaction) or ``PRESERVE ROWS``
    (for the session).
    """
    ident = sql.Identifier(name or f"ids_{secrets.token_hex(4)}")
    cur.execute(sql.SQL("CREATE TEMPORARY TABLE {} (targetid bigint PRIMARY KEY) "
                        "ON COMMIT {}").format(ident, sql.SQL(on_commit)))
    ids = np.unique(np.asarray([] if ids is None else ids, dtype=np.int64))
    for start in range(0, len(ids), COPY_CHUNK):
        buf = io.StringIO("\n".join(map(str, ids[start:start + COPY_CHUNK].tolist())) + "\n")
        cur.copy_expert(sql.SQL("COPY {} (targetid) FROM STDIN").format(ident)
                        .as_string(cur.connection), buf)
    if select is not None:
        cur.execute(sql.SQL("INSERT INTO {} {} ON CONFLICT DO NOTHING").format(
            ident, select), params)
    cur.execute(sql.SQL("ANALYZE {}").format(ident))
    return ident


def extend(cur: cursor, ident: sql.Identifier, ids: Iterable[int] | np.ndarray) -> None:
    """Add ``ids`` to the existing temporary table ``ident`` (duplicates ignored)."""
    new = create(cur, ids)
    cur.execute(sql.SQL("INSERT INTO {} SELECT targetid FROM {} ON CONFLICT DO NOTHING")
                .format(ident, new))
    cur.execute(sql.SQL("DROP TABLE {}").format(new))


def fetch(cur: cursor, select: sql.Composable,
          params: Sequence[Any] | Mapping[str, Any] | None = None) -> np.ndarray:
    """The int64 array of the one-column query ``select``."""
    cur.execute(select, params)
    return np.fromiter((r[0] for r in cur), dtype=np.int64)


def present(cur: cursor, table: sql.Composable, ids: Iterable[int] | np.ndarray,
            column: str = "targetid") -> np.ndarray:
    """Those of ``ids`` (sorted unique) that ``table`` holds in its indexed ``column``.

    One index probe per id, whatever the planner would choose
    (:func:`~specprod_db.db.sql.index_probes`): a table that grows during a load without
    fresh statistics (an initial load ANALYZEs at its end) made it hash-join a scan of
    the whole table, on every tile."""
    tmp = create(cur, ids)
    with index_probes(cur):
        found = fetch(cur, sql.SQL("SELECT t.{c} FROM {} i JOIN {} t ON t.{c} = i.targetid "
                                   "ORDER BY 1").format(tmp, table, c=sql.Identifier(column)))
    cur.execute(sql.SQL("DROP TABLE {}").format(tmp))
    return found
