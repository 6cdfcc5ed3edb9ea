"""The bulk phase's writer: a run of a wave's new tiles in one transaction, one COPY per
table.

In a bulk load (``--initial``, or the rerun of one) the data tables have no keys but
``tile_pkey`` and ``photometry_pkey`` until the end of the load, so what a tile's write
costs is the COPYs themselves: one per table, eleven per full-size tile.  Written one
tile per transaction, 99 full-size tiles took 1,089 COPYs and 13.8 s, where the server
copies the same rows back in 6.7 s (``bench/copy_ceiling.written``); most of the
difference is per statement, and it grew with the tables (doc/initial.rst has the
figures).  So the root, writing alone, gathers the wave's tiles that are plain INSERTs
of a full extraction, consecutive in plan order (:func:`eligible`), into batches of at
most :data:`BATCH_BYTES` of staged rows, and writes each batch in one transaction
(:func:`write_batch`):

1. the tiles' ``tile`` rows (one COPY);
2. the photometry the batch's targets lack, one row per TARGETID from the wave's rows
   (:class:`~specprod_db.load.photometry_rows.WavePhotometry`), the first tile in plan
   order that needs a TARGETID counting it, as when written tile by tile (one COPY);
3. every other table of the tile, all the batch's rows in one COPY each;
4. each tile's ``tile_state`` and ``tile_history`` rows, as
   :func:`~specprod_db.load.tile_writer.write_tile` writes them.

What a tile is stays what it was: whole or absent, photometry and history with it —
the batch is whole or absent.  Each tile's rows are checked by
:func:`specprod_db.load.refusals.check` before the batch (a tile refused fails alone,
named, as before); when the database refuses the batch (a value the checks do not see)
or already holds one of its tiles, the batch is rolled back and its tiles are written
one per transaction by the caller (:mod:`specprod_db.load.commit`), which names the tile
the database refuses.  A load killed during a batch loses that batch's writes only;
its stage files are kept, and the rerun writes them.
"""
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np
from psycopg2 import sql
from psycopg2.extensions import connection

from specprod_db import faults, schema
from specprod_db.db.sql import qualified, transaction
from specprod_db.load import refusals, tile_writer
from specprod_db.load.photometry_ids import PhotometryIds
from specprod_db.load.photometry_rows import WavePhotometry, first_of, new_photometry
from specprod_db.load.plan import INSERT, TileAction

#: Staged rows (bytes of the tiles' arrays, photometry not counted) above which a batch
#: is written and the next one started: ~16 full-size tiles (8 MiB each), so 99 tiles
#: take ~80 COPYs instead of 1,089.  The root holds a batch's arrays while it is written.
BATCH_BYTES = 128 << 20

#: Tiles read from their stage files ahead of the batch being written (:func:`read_ahead`):
#: about the next batch, so its reads overlap this one's COPYs.
READ_AHEAD = 16


class BatchRefused(Exception):
    """The database already holds a tile of the batch: it is written tile by tile."""


@dataclass
class BatchTile:
    """One tile of a batch: its action, staged tables, fingerprints and TARGETIDs."""
    action: TileAction
    tables: dict[str, np.ndarray]
    state: dict[str, Any]
    targetids: Optional[np.ndarray]

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.tables.values())


def eligible(action: TileAction, result: Any, bulk: bool) -> bool:
    """Whether a tile goes into a batch: a bulk load's (``bulk``) INSERT of a full
    extraction, staged (``result``: its :class:`~specprod_db.load.tasks.TileResult`).
    UPDATEs, DELETEs, REFRESHes and the daily path are written tile by tile."""
    return (bulk and action.action == INSERT and action.full and result is not None
            and not result.refresh and result.stage is not None)


def read_ahead(actions: Sequence[TileAction], results: Mapping[int, Any],
               ahead: int = READ_AHEAD) -> Iterator[tuple[TileAction, Any]]:
    """``(action, BatchTile)`` of each of ``actions`` in order, or ``(action,
    RowsRefused)`` for a tile its checks refuse (:func:`specprod_db.load.refusals.check`);
    read from the stage files (``results``: tileid -> TileResult) and checked by a thread,
    up to ``ahead`` tiles ahead of the caller, so the reads overlap the batch being
    written (the COPYs wait on the server, the GIL released)."""
    def read(a: TileAction) -> Any:
        result = results[a.tileid]
        item = BatchTile(a, tile_writer.staged_tile_rows(result.stage), result.state,
                         result.targetids)
        try:
            refusals.check(a.tileid, item.tables, item.state, a.full)
        except refusals.RowsRefused as err:
            return err
        return item

    with ThreadPoolExecutor(1, thread_name_prefix="stage-reader") as pool:
        pending: deque[tuple[TileAction, Future[Any]]] = deque()
        todo = iter(actions)
        for a in todo:
            pending.append((a, pool.submit(read, a)))
            if len(pending) >= ahead:
                break
        while pending:
            a, future = pending.popleft()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(read, nxt)))
            yield a, future.result()


def lacking_photometry(items: Sequence[BatchTile], known: Optional[PhotometryIds]
                       ) -> tuple[np.ndarray, np.ndarray]:
    """The batch's TARGETIDs photometry lacks (those ``known`` left out), sorted, and
    for each the tile (index in ``items``) first to need it
    (:func:`~specprod_db.load.photometry_rows.first_of`: the first tile holding one
    counts it, as tile by tile)."""
    needs = [item.targetids if item.targetids is not None else np.zeros(0, np.int64)
             for item in items]
    if known is not None:
        needs = [n[~known.contains(n)] if len(n) else n for n in needs]
    ids, owner, _ = first_of(needs)
    return ids, owner


def write_batch(conn: connection, schema_name: str, items: Sequence[BatchTile], run_id: int,
                photometry: WavePhotometry, known: Optional[PhotometryIds] = None,
                poll: Optional[Callable[[], None]] = None) -> list[dict[str, int]]:
    """Write ``items`` (tiles checked by :func:`~specprod_db.load.refusals.check`, INSERTs
    of full extractions) in one transaction; returns each tile's ``counts`` as
    :func:`~specprod_db.load.tile_writer.write_tile` does.  ``known``: photometry's
    TARGETIDs when the root knows them (else the database is asked), extended once the
    batch committed.  ``poll`` is called between the blocks of each COPY (the dispatcher
    hands out the next wave's tasks meanwhile).  Raises :class:`BatchRefused` when the
    database already holds one of the tiles, and the database's error when it refuses a
    row; either way after rolling back."""
    tileids = [int(item.action.tileid) for item in items]
    ids, owner = lacking_photometry(items, known)
    rows = photometry.rows_for(ids)
    with transaction(conn) as cur:
        cur.execute(sql.SQL("SELECT tileid FROM {} WHERE tileid = ANY(%s)").format(
            qualified(schema_name, "tile")), (tileids,))
        held = sorted(r[0] for r in cur.fetchall())
        if held:
            raise BatchRefused(f"tile(s) {', '.join(map(str, held))} already loaded")
        rows = new_photometry(cur, schema_name, rows, known)
        counts: list[dict[str, int]] = [{} for _ in items]
        for table in [schema.table("tile"), schema.table("photometry"),
                      *(t for t in schema.tile_tables(True) if t.name != "tile")]:
            if table.name == "photometry":
                parts = [rows]
                written = owner[np.searchsorted(ids, rows["targetid"])]
                per_tile = np.bincount(written, minlength=len(items)).tolist()
            else:
                parts = [item.tables.get(table.name, table.empty()) for item in items]
                per_tile = [len(p) for p in parts]
            tile_writer.copy_many(cur, schema_name, table.name, parts, poll=poll)
            for c, n in zip(counts, per_tile):
                c[table.name] = n
        for item, c in zip(items, counts):
            tile_writer.record_loaded(cur, schema_name, item.action, item.state, run_id, c)
    if known is not None:  # committed: photometry holds these now
        known.add(rows["targetid"])
    for tileid in tileids:
        faults.hit("commit", tileid)  # crash tests only: after the tile committed
    return counts
