"""The single writer: one transaction per tile, binary COPY, shared-table upserts.

Per tile (``write_tile``), in one transaction: remove the tile's old rows (UPDATE), COPY
the new ones, insert the photometry its targets lack (Legacy Surveys rows first, then
targeting-data rows; first writer wins, as in the old tool), remove photometry that no
table references any more, recompute the primary-spectrum flags of every TARGETID
whose ztile rows changed (on every tile), upsert its ``tile_state`` row and add its
``tile_history`` row.  A tile is either fully loaded or not at all, photometry and
history included: a crash or a bad value leaves no photometry row that nothing
references, and the history never says a tile was loaded when it was not.

HEALPix files of a static production (:func:`write_healpix`): one transaction per file,
its ``zpix`` rows replaced and their primary flags recomputed; their TARGETIDs must
already have photometry (the tiles are written first).

``tile_history`` (:func:`record_history`): one row per tile and run that wrote,
deleted, refreshed or failed it, or refused to delete it (a SKIP of a tile the
database holds); plain SKIPs and UNCHANGED tiles are not recorded.  Each row carries
the plan's action and reason, the outcome, the rows written (``counts``) and, after a
load or delete, the rows the tile holds per table (``tile_rows``) that
``specprod-db verify`` checks.

Which tables hold a tile's rows, which of them an UPDATE keeps, and the order of
deletes (children first) and inserts (parents first) come from :mod:`specprod_db.schema`
(``tile_input`` and the foreign keys); TARGETID sets go to SQL as temporary tables
(:mod:`specprod_db.db.tempids`).
"""
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, cast

import numpy as np
import psycopg2
from psycopg2 import sql
from psycopg2.extensions import connection, cursor

from specprod_db import faults, schema
from specprod_db.db import tempids
from specprod_db.db.pgcopy import Encoder, StreamReader, prefetch
from specprod_db.db.sql import fetch_one, qualified, transaction
from specprod_db.errors import InputError
from specprod_db.load import refusals
from specprod_db.load.finalize import flag_staged, update_primary
from specprod_db.load.photometry_ids import PhotometryIds
from specprod_db.load.photometry_rows import first_per_targetid, new_photometry
from specprod_db.load.plan import TileAction
from specprod_db.schema import table as schema_table

#: psycopg2 reads the COPY source in blocks of this size.
COPY_READ_SIZE = 1 << 20

#: Rows of the first block encoded for a COPY (then 2x each block, up to
#: ``pgcopy.CHUNK_ROWS``): the server waits for the first block only.
COPY_FIRST_ROWS = 500

#: Status of a tile in ``tile_state`` after a failure: bad input / a bug.
FAILED, INTERNAL_ERROR = "failed", "internal_error"

#: Outcomes in ``tile_history`` besides FAILED and INTERNAL_ERROR.
LOADED, REFRESHED, DELETED, SKIPPED = "loaded", "refreshed", "deleted", "skipped"

#: Name of the session's temporary table of TARGETIDs the run's tiles reference.
KEEP_TABLE = "run_targetids"


def copy_rows(cur: cursor, schema_name: str, table_name: str, rows: np.ndarray,
              target: Optional[sql.Composable] = None) -> int:
    """Binary COPY of ``rows`` (structured array of the table's dtype) into a table."""
    return copy_many(cur, schema_name, table_name, [rows], target)


def copy_many(cur: cursor, schema_name: str, table_name: str, parts: Sequence[np.ndarray],
              target: Optional[sql.Composable] = None,
              poll: Optional[Callable[[], None]] = None) -> int:
    """One binary COPY of the rows of every array of ``parts`` (structured arrays of the
    table's dtype), in that order, into a table; ``poll`` is called after each block
    sent (on this thread).  Returns the rows copied."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return 0
    table = schema_table(table_name)
    dest = target if target is not None else qualified(schema_name, table_name)
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
        dest, sql.SQL(", ").join(map(sql.Identifier, table.names)))
    encoder = Encoder(table)

    def blocks() -> Iterator[Any]:
        for i, rows in enumerate(parts):
            yield from encoder.iter_blocks(rows, header=i == 0, trailer=i == len(parts) - 1,
                                           first_rows=COPY_FIRST_ROWS if i == 0 else None)

    def polled(source: Iterable[Any]) -> Iterator[Any]:
        for block in source:
            yield block
            if poll is not None:
                poll()

    # a binary COPY reads blocks (read), never lines: StreamReader has no readline
    source = cast(Any, StreamReader(polled(prefetch(blocks()))))
    cur.copy_expert(statement.as_string(cur.connection), source, size=COPY_READ_SIZE)
    return sum(len(p) for p in parts)


def staging_table(cur: cursor, schema_name: str, table_name: str,
                  rows: np.ndarray) -> sql.Identifier:
    """A temporary table like ``table_name`` (no keys, no indexes, dropped at commit)
    holding ``rows`` (binary COPY), emptied first if the transaction made it before."""
    tmp = sql.Identifier(f"_stage_{table_name}")
    cur.execute(sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {}) ON COMMIT DROP").format(
        tmp, qualified(schema_name, table_name)))
    cur.execute(sql.SQL("TRUNCATE {}").format(tmp))
    copy_rows(cur, schema_name, table_name, rows, target=tmp)
    return tmp


def insert_flagged_ztile(conn: connection, cur: cursor, schema_name: str, rows: np.ndarray,
                         touched: sql.Composable) -> tuple[int, int]:
    """Insert a daily tile's ``ztile`` rows with their final primary flags, and update
    those of the other rows of the TARGETIDs in ``touched``
    (:func:`~specprod_db.load.finalize.flag_staged`): the rows are flagged in a
    temporary table, then inserted once.  Returns (rows inserted, flag rows changed)."""
    tmp = staging_table(cur, schema_name, "ztile", rows)
    changed = flag_staged(conn, schema_name, touched, tmp)
    cols = sql.SQL(", ").join(map(sql.Identifier, schema_table("ztile").names))
    cur.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ORDER BY id").format(
        qualified(schema_name, "ztile"), cols, cols, tmp))
    return cur.rowcount, changed


def copy_upsert(cur: cursor, schema_name: str, table_name: str, rows: np.ndarray,
                conflict: Sequence[str], update: bool = False) -> int:
    """COPY into a temporary table, then INSERT ... ON CONFLICT (DO NOTHING / UPDATE).

    Returns the number of rows inserted or updated.
    """
    if len(rows) == 0:
        return 0
    table = schema_table(table_name)
    tmp = staging_table(cur, schema_name, table_name, rows)
    cols = sql.SQL(", ").join(map(sql.Identifier, table.names))
    action: sql.Composable
    if update:
        action = sql.SQL("DO UPDATE SET {}").format(sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c))
            for c in table.names if c not in conflict))
    else:
        action = sql.SQL("DO NOTHING")
    keys = sql.SQL(", ").join(map(sql.Identifier, conflict))
    cur.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ORDER BY {} "
                        "ON CONFLICT ({}) {}").format(
        qualified(schema_name, table_name), cols, cols, tmp, keys, keys, action))
    return cur.rowcount


def staged_tile_rows(stage: Any) -> dict[str, np.ndarray]:
    """A tile's stage file (:class:`~specprod_db.stage.StageFile`) as ``write_tile``'s
    ``tables``: its per-tile tables, not its photometry (the wave's rows,
    :class:`~specprod_db.load.photometry_rows.WavePhotometry`, are written instead)."""
    return stage.tables([t.name for t in schema.tile_tables()])


def _tile_condition(schema_name: str, table: Any, owned: Any) -> sql.Composable:
    """WHERE clause selecting a tile's rows of ``table`` (parameter ``%(t)s``): its
    ``tileid``, and rows whose parent row (a foreign key to another of the ``owned``
    tables) belongs to the tile."""
    conds: list[sql.Composable] = [sql.SQL("tileid = %(t)s")] \
        if "tileid" in table.names else []
    for col, ref in table.foreign_keys.items():
        parent, pcol = ref.split(".")
        if col != "tileid" and parent in owned and "tileid" in schema_table(parent).names:
            conds.append(sql.SQL("{} IN (SELECT {} FROM {} WHERE tileid = %(t)s)").format(
                sql.Identifier(col), sql.Identifier(pcol), qualified(schema_name, parent)))
    return sql.SQL(" OR ").join(conds)


def _referenced_targetids(schema_name: str, tables: Iterable[Any]) -> sql.Composable:
    """SELECT of the TARGETIDs a tile's rows of ``tables`` reference (``%(t)s``)."""
    return sql.SQL(" UNION ").join(
        sql.SQL("SELECT targetid FROM {} WHERE tileid = %(t)s").format(
            qualified(schema_name, t.name)) for t in tables if "targetid" in t.names)


def delete_tile_rows(cur: cursor, schema_name: str, tileid: int, full: bool = True,
                     tile_row: bool = False) -> dict[str, int]:
    """Remove a tile's rows children-first; returns {table: rows deleted}.

    The tile row itself only with ``tile_row`` (an UPDATE upserts it instead).
    """
    tables = schema.tile_tables(full)
    owned = {t.name for t in tables}
    counts = {}
    for table in reversed(tables):
        if table.name == "tile" and not tile_row:
            continue
        cur.execute(sql.SQL("DELETE FROM {} WHERE {}").format(
            qualified(schema_name, table.name), _tile_condition(schema_name, table, owned)),
            {"t": int(tileid)})
        counts[table.name] = cur.rowcount
    return counts


def photometry_references(cur: cursor, schema_name: str) -> list[tuple[str, str]]:
    """``[(table, column)]`` of every foreign key to ``photometry(targetid)`` in the
    database: the schema's own (:func:`schema.referencing`) and any other, e.g. a
    value-added catalog's (``specprod-db vac``)."""
    cur.execute("""SELECT c.relname, a.attname
                   FROM pg_constraint k
                   JOIN pg_class c ON c.oid = k.conrelid
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                   JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1]
                   WHERE k.contype = 'f' AND array_length(k.conkey, 1) = 1
                     AND k.confrelid = %s::regclass AND n.nspname = %s""",
                (f'"{schema_name}".photometry', schema_name))
    found = set(cur.fetchall())
    declared = {(t.name, col) for t, col in schema.referencing("photometry")}
    return sorted(declared | found)


def delete_orphan_photometry(cur: cursor, schema_name: str, candidates: sql.Composable,
                             keep: Optional[sql.Composable] = None) -> int:
    """Delete the photometry rows of the TARGETIDs in the temporary table ``candidates``
    that no table references any more (nor the temporary table ``keep``, if given)."""
    refs = [sql.SQL("NOT EXISTS (SELECT 1 FROM {} r WHERE r.{} = p.targetid)").format(
        qualified(schema_name, table), sql.Identifier(col))
        for table, col in photometry_references(cur, schema_name)]
    if keep is not None:
        refs.append(sql.SQL("NOT EXISTS (SELECT 1 FROM {} k WHERE k.targetid = p.targetid)")
                    .format(keep))
    cur.execute(sql.SQL("DELETE FROM {} p USING {} c WHERE p.targetid = c.targetid AND {}")
                .format(qualified(schema_name, "photometry"), candidates,
                        sql.SQL(" AND ").join(refs)))
    return cur.rowcount


def keep_targetids(conn: connection) -> sql.Composable:
    """The session's temporary table of the TARGETIDs this run's tiles reference
    (empty; :func:`keep_more` adds each wave's).

    Their photometry must survive a DELETE or full UPDATE of another tile earlier in the
    write order: the brick tasks were planned while it was present.
    """
    with transaction(conn) as cur:
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(KEEP_TABLE)))
        return tempids.create(cur, name=KEEP_TABLE, on_commit="PRESERVE ROWS")


def keep_more(conn: connection, keep: sql.Composable, targetids: np.ndarray) -> None:
    """Add ``targetids`` to the run's :func:`keep_targetids` table."""
    with transaction(conn) as cur:
        # keep_targetids' Identifier, or the writer ranks' shared table (Composed)
        tempids.extend(cur, cast(sql.Identifier, keep), targetids)


def upsert_state(cur: cursor, schema_name: str, tileid: int, status: str, run_id: int,
                 state: Optional[Mapping[str, Any]] = None,
                 line: Optional[Mapping[str, Any]] = None,
                 error: Optional[str] = None) -> None:
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
    if status in (FAILED, INTERNAL_ERROR):
        # keep what was loaded before; record only the failure
        keep: tuple[str, ...] = ("status", "run_id", "error", "loaded_at")
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


def record_history(cur: cursor, schema_name: str, run_id: int, tileid: int, action: str,
                   reason: Optional[str], outcome: str, error: Optional[str] = None,
                   counts: Optional[Mapping[str, Any]] = None,
                   tile_rows: Optional[Mapping[str, int]] = None) -> None:
    """Add a ``tile_history`` row, in the caller's (the tile's) transaction."""
    cur.execute(sql.SQL("INSERT INTO {} (run_id, tileid, action, reason, outcome, error, at, "
                        "counts, tile_rows) VALUES (%s, %s, %s, %s, %s, %s, now(), %s, %s)")
                .format(qualified(schema_name, "tile_history")),
                (run_id, int(tileid), action, reason or None, outcome, error,
                 None if counts is None else json.dumps(counts, sort_keys=True),
                 None if tile_rows is None else json.dumps(tile_rows, sort_keys=True)))


def recorded_tile_rows(cur: cursor, schema_name: str,
                       tileid: int) -> Optional[dict[str, int]]:
    """``{table: rows}`` the tile held after its last recorded load or delete, or None."""
    cur.execute(sql.SQL("SELECT tile_rows FROM {} WHERE tileid = %s AND tile_rows IS NOT "
                        "NULL ORDER BY id DESC LIMIT 1").format(
        qualified(schema_name, "tile_history")), (int(tileid),))
    row = cur.fetchone()
    return json.loads(row[0]) if row else None


def _tile_rows(cur: cursor, schema_name: str, tileid: int, counts: Mapping[str, int],
               full: bool) -> dict[str, int]:
    """The rows the tile holds per table after :func:`write_tile`: those it copied; for
    an UPDATE that kept the fiberassign file, the kept tables' counts as last recorded
    (counted when nothing was recorded, e.g. a tile loaded by an older version)."""
    rows = {t.name: counts[t.name] for t in schema.tile_tables(full)}
    kept = [t for t in schema.tile_tables() if t.name not in rows]
    if kept:
        before = recorded_tile_rows(cur, schema_name, tileid) or {}
        owned = {t.name for t in schema.tile_tables()}
        for t in kept:
            if t.name not in before:
                cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
                    qualified(schema_name, t.name), _tile_condition(schema_name, t, owned)),
                    {"t": int(tileid)})
                before[t.name] = fetch_one(cur)[0]
            rows[t.name] = before[t.name]
    return rows


def record_loaded(cur: cursor, schema_name: str, action: TileAction, state: Mapping[str, Any],
                  run_id: int, counts: Mapping[str, int]) -> None:
    """The end of a loaded tile's transaction, its rows written (``counts``): its
    ``tile_state`` row (``loaded``, the fingerprints ``state``), the ``copy`` crash
    point, its ``tile_history`` row with the rows it holds per table."""
    upsert_state(cur, schema_name, action.tileid, "loaded", run_id, state, action.line)
    faults.hit("copy", action.tileid)  # crash tests only (faults.py)
    record_history(cur, schema_name, run_id, action.tileid, action.action, action.reason,
                   LOADED, counts=counts,
                   tile_rows=_tile_rows(cur, schema_name, action.tileid, counts, action.full))


@dataclass(frozen=True)
class WriteMode:
    """What :func:`write_tile` must do besides copying a tile's rows: a daily load
    recomputes the primary flags of the tile's TARGETIDs in its transaction
    (``flags_now``); a bulk load computes every flag once at the end; a writer rank of
    ``--writers`` adds the TARGETIDs to the run's ``touched`` table for the root to
    recompute (:mod:`specprod_db.load.writer_ranks`).  ``keep``: the run's table of
    TARGETIDs other tiles reference (:func:`keep_targetids`, or the shared one of the
    writer ranks), whose photometry is never removed as orphaned."""
    flags_now: bool = True
    keep: Optional[sql.Composable] = None
    touched: Optional[sql.Composable] = None
    alone: bool = False
    known: Optional[PhotometryIds] = None

    @classmethod
    def on_root(cls, bulk: bool, keep: Optional[sql.Composable] = None,
                known: Optional[PhotometryIds] = None) -> "WriteMode":
        """The root writing: flags now (daily) or at the end (``bulk``); ``alone`` on
        the tables (no writer rank at the same time), so new photometry is COPYed
        directly (:func:`~specprod_db.load.photometry_rows.new_photometry`), those
        ``known`` to be there left out (and the tile's added to it once committed)."""
        return cls(flags_now=not bulk, keep=keep, alone=True, known=known)

    @classmethod
    def on_writer_rank(cls, keep: sql.Composable, touched: sql.Composable) -> "WriteMode":
        """A writer rank: flags later, by the root, of the TARGETIDs put in ``touched``;
        photometry by upsert, as other writer ranks insert the same TARGETIDs."""
        return cls(flags_now=False, keep=keep, touched=touched)


def write_tile(conn: connection, schema_name: str, action: TileAction,
               tables: dict[str, np.ndarray], state: dict[str, Any], run_id: int,
               photometry: Sequence[np.ndarray] = (), mode: WriteMode = WriteMode()
               ) -> dict[str, int]:
    """Load one tile (INSERT or UPDATE) from its staged tables, in one transaction.

    Parameters
    ----------
    action : TileAction
    tables : dict
        Table name -> rows (the tile's stage file).
    state : dict
        The fingerprints of what was read, recorded in ``tile_state``.
    photometry : sequence of arrays
        Photometry rows the tile's targets need, in order of precedence (Legacy Surveys
        rows, then targeting-data rows); inserted where the TARGETID has none yet.
    mode : WriteMode
        The primary flags now or later, the ``keep`` and ``touched`` tables (default: a
        daily load's writer, flags now, no ``keep`` table).

    Returns ``counts`` (table -> rows); raises after rolling back on any error.  Rows
    that break a key are refused as :class:`~specprod_db.load.refusals.RowsRefused` (a
    ``psycopg2.IntegrityError``) naming TARGETID, petal and file: found before anything
    is written where numpy sees it (:func:`refusals.check`), else the database's refusal
    decoded (:func:`refusals.explain`).
    """
    refusals.check(action.tileid, tables, state, action.full)
    try:
        return _write_tile(conn, schema_name, action, tables, state, run_id, photometry,
                           mode)
    except psycopg2.IntegrityError as err:
        better = refusals.refused(err, action.tileid, tables, state)
        if better is err:
            raise
        raise better from err


def _write_tile(conn: connection, schema_name: str, action: TileAction,
                tables: dict[str, np.ndarray], state: dict[str, Any], run_id: int,
                photometry: Sequence[np.ndarray], mode: WriteMode) -> dict[str, int]:
    counts = {}
    tileid, full = action.tileid, action.full
    t = {"t": int(tileid)}
    rows = first_per_targetid(photometry if full else ())
    with transaction(conn) as cur:
        cur.execute(sql.SQL("SELECT 1 FROM {} WHERE tileid = %(t)s").format(
            qualified(schema_name, "tile")), t)
        present = cur.fetchone() is not None
        touched = None
        if mode.flags_now or mode.touched is not None:  # the TARGETIDs to flag
            touched = tempids.create(cur, tables["ztile"]["targetid"], select=(
                _referenced_targetids(schema_name, [schema_table("ztile")]) if present
                else None), params=t)
        old = None
        if present:
            if full:
                old = tempids.create(cur, select=_referenced_targetids(
                    schema_name, schema.tile_tables(full)), params=t)
            delete_tile_rows(cur, schema_name, tileid, full=full)
        counts["tile"] = copy_upsert(cur, schema_name, "tile", tables["tile"], ("tileid",),
                                     update=True) if present else \
            copy_rows(cur, schema_name, "tile", tables["tile"])
        if full and mode.alone:
            counts["photometry"] = copy_rows(cur, schema_name, "photometry", new_photometry(
                cur, schema_name, rows, mode.known))
        elif full:
            counts["photometry"] = copy_upsert(cur, schema_name, "photometry", rows,
                                               ("targetid",))
        for table in schema.tile_tables(full):
            rows_of = tables.get(table.name, table.empty())
            if table.name == "ztile" and mode.flags_now and touched is not None:
                counts["ztile"], counts["primary"] = insert_flagged_ztile(
                    conn, cur, schema_name, rows_of, touched)
            elif table.name != "tile":
                counts[table.name] = copy_rows(cur, schema_name, table.name, rows_of)
        if old is not None:
            counts["photometry_deleted"] = delete_orphan_photometry(cur, schema_name, old,
                                                                    mode.keep)
        if mode.touched is not None and touched is not None:  # later, by the root
            cur.execute(sql.SQL("INSERT INTO {} SELECT targetid FROM {} ON CONFLICT DO "
                                "NOTHING").format(mode.touched, touched))
        record_loaded(cur, schema_name, action, state, run_id, counts)
    if mode.known is not None:  # committed: photometry holds these now
        mode.known.add(rows["targetid"])
    faults.hit("commit", tileid)  # crash tests only: between two tiles
    return counts


def write_healpix(conn: connection, schema_name: str, survey: str, program: str,
                  healpix: int, rows: np.ndarray, primary: bool = True) -> dict[str, int]:
    """Load one HEALPix file's ``zpix`` rows (a static production), in one transaction:
    the rows of that (survey, program, healpix) are replaced, so a rerun after an
    interruption, or a second load, gives the same table; then the primary flags of its
    TARGETIDs over their zpix rows (unless ``primary`` is false: an initial load flags
    every zpix row once at the end).

    Every TARGETID must have its ``photometry`` row (the foreign key): in a static
    production each was observed on a tile, and the tiles are written first.  A file
    with TARGETIDs no loaded tile provides is refused whole (:class:`InputError` naming
    the count and a few TARGETIDs; nothing written): it loads on the run after its tiles
    (decision 13).  Returns ``counts`` (``zpix``, ``zpix_deleted``, ``primary``).
    """
    counts = {}
    where = {"s": survey, "p": program, "h": int(healpix)}
    with transaction(conn) as cur:
        touched = tempids.create(cur, rows["targetid"])
        lacking = tempids.fetch(cur, sql.SQL(
            "SELECT t.targetid FROM {} t WHERE NOT EXISTS (SELECT 1 FROM {} p WHERE "
            "p.targetid = t.targetid) ORDER BY t.targetid").format(
                touched, qualified(schema_name, "photometry")))
        if len(lacking):
            raise InputError(
                f"healpix {survey}-{program}-{int(healpix)}: {len(lacking)} TARGETID(s) "
                f"have no photometry (observed on no loaded tile), e.g. "
                f"{', '.join(map(str, lacking[:5].tolist()))}; the file is loaded by a "
                f"run after the tiles that observed them")
        cur.execute(sql.SQL("INSERT INTO {} SELECT targetid FROM {} WHERE survey = %(s)s "
                            "AND program = %(p)s AND healpix = %(h)s ON CONFLICT DO NOTHING")
                    .format(touched, qualified(schema_name, "zpix")), where)
        cur.execute(sql.SQL("DELETE FROM {} WHERE survey = %(s)s AND program = %(p)s AND "
                            "healpix = %(h)s").format(qualified(schema_name, "zpix")), where)
        counts["zpix_deleted"] = cur.rowcount
        counts["zpix"] = copy_rows(cur, schema_name, "zpix", rows)
        if primary:
            counts["primary"] = update_primary(conn, schema_name, table=touched,
                                               redshifts="zpix")
    return counts


def loaded_healpix(conn: connection, schema_name: str) -> set[tuple[str, str, int]]:
    """The set of ``(survey, program, healpix)`` that ``zpix`` holds rows of (each was
    written whole, in one transaction)."""
    with transaction(conn) as cur:
        cur.execute(sql.SQL("SELECT DISTINCT survey, program, healpix FROM {}").format(
            qualified(schema_name, "zpix")))
        return {(s, p, int(h)) for s, p, h in cur.fetchall()}


def delete_tile(conn: connection, schema_name: str, action: TileAction, run_id: int,
                keep: Optional[sql.Composable] = None) -> dict[str, int]:
    """DELETE a tile: its rows, then photometry nobody else references (nor ``keep``,
    see :func:`write_tile`), and the flags of its TARGETIDs' other rows; one
    transaction."""
    t = {"t": int(action.tileid)}
    with transaction(conn) as cur:
        touched = tempids.create(cur, select=_referenced_targetids(
            schema_name, [schema_table("ztile")]), params=t)
        old = tempids.create(cur, select=_referenced_targetids(
            schema_name, schema.tile_tables()), params=t)
        counts = delete_tile_rows(cur, schema_name, action.tileid, full=True, tile_row=True)
        counts["photometry"] = delete_orphan_photometry(cur, schema_name, old, keep)
        upsert_state(cur, schema_name, action.tileid, "deleted", run_id, {},
                     error=action.reason)
        counts["primary"] = update_primary(conn, schema_name, table=touched)
        record_history(cur, schema_name, run_id, action.tileid, action.action, action.reason,
                       DELETED, counts=counts,
                       tile_rows={t.name: 0 for t in schema.tile_tables()})
    return counts


def refresh_state(conn: connection, schema_name: str, action: TileAction, run_id: int,
                  state: Optional[Mapping[str, Any]] = None) -> None:
    """Record the tile's current line and fingerprints; nothing is reloaded.  Without
    ``state`` a REFRESH (only UPDATED moved); with it, an UPDATE whose files were touched
    with the same contents (history: the UPDATE, outcome ``refreshed``)."""
    with transaction(conn) as cur:
        upsert_state(cur, schema_name, action.tileid, "loaded", run_id,
                     state if state is not None else action.state, action.line)
        record_history(cur, schema_name, run_id, action.tileid, action.action,
                       action.reason, REFRESHED)


def record_failure(conn: connection, schema_name: str, tileid: int, message: str,
                   run_id: int, internal: bool = False,
                   action: Optional[TileAction] = None) -> None:
    """Record a tile's failure (``failed``: bad input; ``internal_error``: a bug), and in
    its history the planned ``action`` (a TileAction; FAIL when not given)."""
    status = INTERNAL_ERROR if internal else FAILED
    with transaction(conn, fresh=True) as cur:
        upsert_state(cur, schema_name, tileid, status, run_id, error=message)
        record_history(cur, schema_name, run_id, tileid,
                       action.action if action is not None else "FAIL",
                       action.reason if action is not None else None, status, error=message)


def record_skip(conn: connection, schema_name: str, action: TileAction, run_id: int,
                state: Optional[dict[str, Any]] = None) -> None:
    """History of a SKIP of a tile the database holds (``state``: its ``tile_state`` as
    the planner read it, holding rows: loaded, or failed with its older rows kept,
    :func:`specprod_db.load.plan.holds_rows`): a delete refused (``--no-delete``) or
    suspended (damaged tiles file).  Any other action, or a SKIP of a tile holding no
    rows (EFFTIME_SPEC <= 0, never loaded), records nothing and costs nothing."""
    from specprod_db.load.plan import holds_rows
    if action.action != "SKIP" or not holds_rows(state):
        return
    with transaction(conn) as cur:
        record_history(cur, schema_name, run_id, action.tileid, action.action, action.reason,
                       SKIPPED)
