"""Which photometry rows a tile writes: one per TARGETID, in order of precedence.

A TARGETID takes its photometry row from the first source that has it: the Legacy
Surveys row of the wave's brick tasks, else the targeting-data row of the first tile in
plan order (first writer wins, as in the old tool).  The rows are wide (photometry, ~800
bytes), so only the TARGETIDs are ever sorted, and each row kept is gathered once, from
the array that holds it (:func:`first_rows`, :func:`first_of`, :func:`gather`):

* :class:`WavePhotometry`: the rows of a wave's TARGETIDs, from its stage files, each
  tile taking the rows its targets need;
* :func:`first_per_targetid`: one row per TARGETID of a tile's arrays, sorted (one
  upsert per tile, rows locked in the same order by every writer);
* :func:`new_photometry`: those of a tile's rows that ``photometry`` lacks, for the
  writer alone on the table (:mod:`specprod_db.load.tile_writer`).
"""
from typing import Any, Optional, Sequence

import numpy as np
from psycopg2.extensions import cursor

from specprod_db.db import tempids
from specprod_db.db.sql import qualified
from specprod_db.load.photometry_ids import PhotometryIds
from specprod_db.schema import table as schema_table


def first_rows(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For ``arrays`` (rows with a ``targetid`` field, in order of precedence): the
    sorted unique TARGETIDs and, for each, which array (``part``) and which row of it
    (``row``) holds its first row (:func:`first_of` of their TARGETIDs)."""
    return first_of([a["targetid"] for a in arrays])


def first_of(ids_arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For ``ids_arrays`` (arrays of TARGETIDs, in order of precedence): the sorted
    unique TARGETIDs and, for each, which array (``part``) and which position in it
    (``row``) holds it first.  Only the TARGETIDs are sorted (stable, so the first
    array wins a tie)."""
    ids = np.concatenate(ids_arrays).astype(np.int64, copy=False) if len(ids_arrays) \
        else np.zeros(0, np.int64)
    order = np.argsort(ids, kind="stable")
    first = np.ones(len(order), dtype=bool)
    first[1:] = ids[order[1:]] != ids[order[:-1]]
    pick = order[first]
    starts = np.cumsum([0] + [len(a) for a in ids_arrays])
    part = np.searchsorted(starts, pick, side="right") - 1
    return ids[pick], part, pick - starts[part]


def gather(arrays: Sequence[np.ndarray], part: np.ndarray, row: np.ndarray) -> np.ndarray:
    """``arrays[part[k]][row[k]]`` for every k, in that order: each row copied once, one
    fancy index per array that holds any of them (``arrays`` non-empty, one dtype)."""
    out = np.empty(len(part), dtype=arrays[0].dtype)
    by_part = np.argsort(part, kind="stable")
    bounds = np.flatnonzero(np.diff(part[by_part])) + 1
    for chunk in np.split(by_part, bounds) if len(by_part) else ():
        out[chunk] = arrays[part[chunk[0]]][row[chunk]]
    return out


def first_per_targetid(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """One row per TARGETID from ``arrays`` (photometry rows in order of precedence: a
    TARGETID takes its row from the first array that has it), sorted by TARGETID: one
    upsert per tile instead of one per array, and rows locked in the same order by every
    writer.  Only the rows kept are gathered: sorting the wide rows whole cost more than
    the rest of a tile's write."""
    arrays = [a for a in arrays if len(a)]
    if not arrays:
        return schema_table("photometry").empty()
    if len(arrays) == 1 and np.all(arrays[0]["targetid"][1:] > arrays[0]["targetid"][:-1]):
        return arrays[0]  # already one row per TARGETID, sorted (WavePhotometry.rows_for)
    _, part, row = first_rows(arrays)
    return arrays[0][row] if len(arrays) == 1 else gather(arrays, part, row)


def new_photometry(cur: cursor, schema_name: str, rows: np.ndarray,
                   known: Optional[PhotometryIds] = None) -> np.ndarray:
    """Those of ``rows`` (one per TARGETID, sorted) whose TARGETID has no
    ``photometry`` row yet: what a writer alone on the table (the root; the load's lock
    keeps other loads out) COPYs directly, instead of the temporary table and ``INSERT
    ... ON CONFLICT DO NOTHING`` of :func:`specprod_db.load.tile_writer.copy_upsert`
    that concurrent writer ranks need — the rows are wide, and writing them twice cost
    as much as the rest of the tile.  ``known``: the TARGETIDs photometry holds, when
    the root knows them (:mod:`specprod_db.load.photometry_ids`); else the database is
    asked."""
    if not len(rows):
        return rows
    if known is not None:
        lacking = ~known.contains(rows["targetid"])
        return rows if lacking.all() else rows[lacking]  # wide rows: no copy when all lack
    have = tempids.present(cur, qualified(schema_name, "photometry"), rows["targetid"])
    return rows[~np.isin(rows["targetid"], have)] if len(have) else rows


class WavePhotometry:
    """The photometry rows of a wave's TARGETIDs, one per TARGETID, sorted: the Legacy
    Surveys row from the wave's brick tasks, else the targeting-data row of the first
    tile in plan order that has the TARGETID.  Each tile takes the rows its targets need,
    so every tile of the wave inserts the same row for a TARGETID, whichever commits
    first (``--writers``), and a tile failing does not change the others' rows.

    The rows stay in the stage files' arrays as read; only the TARGETIDs are sorted, and
    which array and row holds each TARGETID's row is kept (:func:`first_rows`), so a
    tile's rows are gathered once, straight from those arrays (:meth:`rows_for`).
    Concatenating the wide rows, resolving them into one sorted table and gathering each
    tile's rows from it copied every row three times: 0.06 s a full-size tile, a fifth of
    the write stage of a 1-rank initial load (cProfile, 99 tiles)."""

    def __init__(self, brick_results: Sequence[Any], tile_results: Sequence[Any]) -> None:
        empty = schema_table("photometry").empty()
        parts = [r.stage.tables(("photometry",))["photometry"] for r in brick_results]
        parts += [r.stage.tables(("photometry",)).get("photometry", empty)
                  for r in tile_results if r.stage is not None]
        self.parts = [p for p in parts if len(p)]  # in order of precedence
        self.ids, self.part, self.row = first_rows(self.parts)

    def rows_for(self, targetids: Optional[np.ndarray]) -> np.ndarray:
        """The rows of ``targetids`` (sorted unique int64) that the wave has, sorted by
        TARGETID; each row copied once, from the array that holds it."""
        if targetids is None or not len(self.ids):
            return schema_table("photometry").empty()
        i = np.searchsorted(self.ids, targetids)
        inside = i < len(self.ids)
        i = i[inside]
        i = i[self.ids[i] == targetids[inside]]
        if not len(i):
            return schema_table("photometry").empty()
        return gather(self.parts, self.part[i], self.row[i])
