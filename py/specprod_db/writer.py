"""The single writer: one transaction per tile, binary COPY, shared-table upserts.

Per tile (``write_tile``), in one transaction: remove the tile's old rows (UPDATE), COPY
the new ones, insert the photometry its targets still lack (first writer wins, as in the
old tool), recompute the primary-spectrum flags of every TARGETID whose ztile rows
changed (on every tile), and upsert its ``tile_state`` row.  A tile is either fully loaded or not at
all.  Deletes follow the foreign keys children-first (there are no cascades).
"""
import json
from contextlib import contextmanager
from datetime import datetime, timezone

import numpy as np
from psycopg2 import sql

from . import faults
from .db import qualified
from .finalize import update_primary
from .pgcopy import Encoder, StreamReader, prefetch
from .schema import table as schema_table

#: psycopg2 reads the COPY source in blocks of this size.
COPY_READ_SIZE = 1 << 20

#: Tables a tile owns, children first (the delete order).
_TILE_CHILDREN_FULL = ("ztile", "fiberassign", "potential", "target")
_TILE_CHILDREN_PARTIAL = ("ztile",)

#: Where a tile's rows are staged -> loaded, parents first (the insert order).
INSERT_ORDER = ("tile", "exposure", "frame", "target", "fiberassign", "potential", "ztile")


@contextmanager
def transaction(conn):
    """A cursor in a transaction committed on success, rolled back on any error."""
    try:
        with conn.cursor() as cur:
            yield cur
        conn.commit()
    except BaseException:
        conn.rollback()
        raise


def copy_rows(cur, schema_name, table_name, rows, target=None):
    """Binary COPY of ``rows`` (structured array of the table's dtype) into a table."""
    if len(rows) == 0:
        return 0
    table = schema_table(table_name)
    dest = target if target is not None else qualified(schema_name, table_name)
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
        dest, sql.SQL(", ").join(map(sql.Identifier, table.names)))
    cur.copy_expert(statement.as_string(cur.connection),
                    StreamReader(prefetch(Encoder(table).iter_bytes(rows))),
                    size=COPY_READ_SIZE)
    return len(rows)


def copy_upsert(cur, schema_name, table_name, rows, conflict, update=False):
    """COPY into a temporary table, then INSERT ... ON CONFLICT (DO NOTHING / UPDATE).

    Returns the number of rows inserted or updated.
    """
    if len(rows) == 0:
        return 0
    table = schema_table(table_name)
    tmp = sql.Identifier(f"_stage_{table_name}")
    cur.execute(sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {}) ON COMMIT DROP").format(
        tmp, qualified(schema_name, table_name)))
    cur.execute(sql.SQL("TRUNCATE {}").format(tmp))
    copy_rows(cur, schema_name, table_name, rows, target=tmp)
    cols = sql.SQL(", ").join(map(sql.Identifier, table.names))
    if update:
        action = sql.SQL("DO UPDATE SET {}").format(sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c))
            for c in table.names if c not in conflict))
    else:
        action = sql.SQL("DO NOTHING")
    cur.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT ({}) {}").format(
        qualified(schema_name, table_name), cols, cols, tmp,
        sql.SQL(", ").join(map(sql.Identifier, conflict)), action))
    return cur.rowcount


def _ids(values):
    return [int(v) for v in np.unique(np.asarray(values, dtype=np.int64))]


def tile_targetids(cur, schema_name, tileid, tables=("target", "fiberassign", "potential",
                                                      "ztile")):
    """TARGETIDs referenced by the tile's rows in ``tables``."""
    parts = [sql.SQL("SELECT targetid FROM {} WHERE tileid = %(t)s").format(
        qualified(schema_name, t)) for t in tables]
    cur.execute(sql.SQL(" UNION ").join(parts), {"t": int(tileid)})
    return [r[0] for r in cur.fetchall()]


def delete_tile_rows(cur, schema_name, tileid, full=True, tile_row=False):
    """Remove a tile's rows children-first; returns {table: rows deleted}."""
    counts = {}
    t = {"t": int(tileid)}
    for name in (_TILE_CHILDREN_FULL if full else _TILE_CHILDREN_PARTIAL):
        cur.execute(sql.SQL("DELETE FROM {} WHERE tileid = %(t)s").format(
            qualified(schema_name, name)), t)
        counts[name] = cur.rowcount
    cur.execute(sql.SQL("DELETE FROM {} WHERE tileid = %(t)s OR expid IN "
                        "(SELECT expid FROM {} WHERE tileid = %(t)s)").format(
        qualified(schema_name, "frame"), qualified(schema_name, "exposure")), t)
    counts["frame"] = cur.rowcount
    cur.execute(sql.SQL("DELETE FROM {} WHERE tileid = %(t)s").format(
        qualified(schema_name, "exposure")), t)
    counts["exposure"] = cur.rowcount
    if tile_row:
        cur.execute(sql.SQL("DELETE FROM {} WHERE tileid = %(t)s").format(
            qualified(schema_name, "tile")), t)
        counts["tile"] = cur.rowcount
    return counts


def delete_orphan_photometry(cur, schema_name, targetids):
    """Delete photometry rows among ``targetids`` that no table references any more."""
    if not len(targetids):
        return 0
    refs = sql.SQL(" AND ").join(
        sql.SQL("NOT EXISTS (SELECT 1 FROM {} r WHERE r.targetid = p.targetid)").format(
            qualified(schema_name, t))
        for t in ("target", "fiberassign", "potential", "ztile", "zpix"))
    cur.execute(sql.SQL("DELETE FROM {} p WHERE p.targetid = ANY(%s) AND {}").format(
        qualified(schema_name, "photometry"), refs), (_ids(targetids),))
    return cur.rowcount


def upsert_state(cur, schema_name, tileid, status, run_id, state=None, line=None, error=None):
    state = state or {}
    values = {
        "tileid": int(tileid), "status": status, "run_id": run_id,
        "updated": state.get("updated"), "lastnight": state.get("lastnight"),
        "tile_hash": state.get("tile_hash"), "exposures_hash": state.get("exposures_hash"),
        "redrock_fingerprint": state.get("redrock_fingerprint"),
        "fiberassign_fingerprint": state.get("fiberassign_fingerprint"),
        "line": json.dumps(line, sort_keys=True, default=str) if line else None,
        "loaded_at": datetime.now(timezone.utc), "error": error,
    }
    if status == "failed":
        # keep what was loaded before; record only the failure
        keep = ("status", "run_id", "error", "loaded_at")
    else:
        keep = tuple(values)
    cols = list(values)
    cur.execute(sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT (tileid) DO UPDATE SET {}")
                .format(qualified(schema_name, "tile_state"),
                        sql.SQL(", ").join(map(sql.Identifier, cols)),
                        sql.SQL(", ").join(sql.Placeholder(c) for c in cols),
                        sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(
                            sql.Identifier(c)) for c in keep if c != "tileid")),
                values)


def write_tile(conn, schema_name, action, staged, run_id, keep=frozenset(), primary=True):
    """Load one tile (INSERT or UPDATE) from its staged tables, in one transaction.

    ``keep``: TARGETIDs other tiles of this run will reference; their photometry is not
    removed as orphaned (it was found present when the run planned its brick tasks).
    ``primary``: recompute the primary flags of the touched TARGETIDs here (an initial
    load recomputes all of them once at the end instead).

    Returns ``(counts, touched_targetids)``; raises after rolling back on any error.
    """
    counts = {}
    touched = set()
    tileid = action.tileid
    with transaction(conn) as cur:
        cur.execute(sql.SQL("SELECT 1 FROM {} WHERE tileid = %s").format(
            qualified(schema_name, "tile")), (tileid,))
        old_targets = []
        if cur.fetchone() is not None:
            touched.update(tile_targetids(cur, schema_name, tileid, ("ztile",)))
            if action.full:
                old_targets = tile_targetids(cur, schema_name, tileid)
            delete_tile_rows(cur, schema_name, tileid, full=action.full)
        counts["tile"] = copy_upsert(cur, schema_name, "tile", staged["tile"],
                                     ("tileid",), update=True)
        if action.full and "photometry" in staged:
            counts["photometry"] = copy_upsert(cur, schema_name, "photometry",
                                               staged["photometry"], ("targetid",))
        for name in INSERT_ORDER[1:]:
            if name in ("target", "fiberassign", "potential") and not action.full:
                continue
            counts[name] = copy_rows(cur, schema_name, name, staged.get(
                name, schema_table(name).empty()))
        touched.update(int(t) for t in np.unique(staged["ztile"]["targetid"]))
        if old_targets:
            counts["photometry_deleted"] = delete_orphan_photometry(
                cur, schema_name, sorted(set(old_targets) - set(keep)))
        upsert_state(cur, schema_name, tileid, "loaded", run_id, action.state,
                     action.line)
        faults.hit("copy", tileid)  # crash tests only (faults.py)
        if primary:
            counts["primary"] = update_primary(conn, schema_name, sorted(touched))
    return counts, touched


def delete_tile(conn, schema_name, action, run_id, keep=frozenset()):
    """DELETE a tile: its rows, then photometry nobody else references (nor ``keep``,
    see :func:`write_tile`); one transaction."""
    with transaction(conn) as cur:
        targets = tile_targetids(cur, schema_name, action.tileid)
        touched = set(tile_targetids(cur, schema_name, action.tileid, ("ztile",)))
        counts = delete_tile_rows(cur, schema_name, action.tileid, full=True,
                                  tile_row=True)
        counts["photometry"] = delete_orphan_photometry(
            cur, schema_name, sorted(set(targets) - set(keep)))
        upsert_state(cur, schema_name, action.tileid, "deleted", run_id, {},
                     error=action.reason)
        counts["primary"] = update_primary(conn, schema_name, sorted(touched))
    return counts, touched


def refresh_state(conn, schema_name, action, run_id):
    with transaction(conn) as cur:
        upsert_state(cur, schema_name, action.tileid, "loaded", run_id, action.state,
                     action.line)


def record_failure(conn, schema_name, tileid, message, run_id):
    conn.rollback()
    with transaction(conn) as cur:
        upsert_state(cur, schema_name, tileid, "failed", run_id, error=message)


def write_photometry(conn, schema_name, rows):
    """Insert Legacy Surveys photometry rows (first writer wins); one transaction."""
    with transaction(conn) as cur:
        return copy_upsert(cur, schema_name, "photometry", rows, ("targetid",))
