"""Brick tasks: which targets still need Legacy Surveys photometry, grouped by brick.

After the tile tasks, rank 0 gathers the brick inputs of every tile whose fiberassign
data is new (``TileResult.brick_input``), keeps one row per TARGETID (a row with the
Legacy Surveys ID columns wins, decision 10), drops the TARGETIDs the database already
holds, and groups the rest by brick into tasks of about ``TARGETS_PER_TASK`` targets
(at most ``MAX_BRICKS_PER_TASK`` bricks).
"""
from typing import Any, Optional, Sequence

import numpy as np
from psycopg2.extensions import connection

from specprod_db.db import tempids
from specprod_db.db.sql import qualified, reading
from specprod_db.load.jobs import BrickJob
from specprod_db.load.photometry_ids import PhotometryIds
from specprod_db.paths import Paths

#: A brick task takes bricks (in name order) until it holds this many targets, or
#: :data:`MAX_BRICKS_PER_TASK` bricks: fewer stage files and messages than one per brick,
#: still many tasks to balance over the ranks.  A brick of full-size tiles holds ~50
#: targets of a day (~16 bricks a task); one of the held-out DESI tree's 330-fibre tiles
#: ~4, where 16 bricks a task made 19 stage files for a 4-tile morning, at ~15 ms each
#: to write (HDF5 builds the ~75-member compound type of photometry for every file),
#: more than the matching.
TARGETS_PER_TASK = 800
MAX_BRICKS_PER_TASK = 128


def brick_jobs(conn: connection, schema_name: str, paths: Paths, stage_dir: str,
               results: Sequence[Any], known: Optional[PhotometryIds] = None
               ) -> tuple[list[BrickJob], dict[str, list[int]]]:
    """Brick tasks for this run's new fiberassign data, and brick -> TILEIDs needing it.

    ``results``: the TileResults of the run.  A failed brick fails the tiles that need
    it (the second return value).  ``known``: the TARGETIDs photometry holds, when the
    root knows them (:mod:`specprod_db.load.photometry_ids`); else the database is asked.
    """
    pieces = [r.brick_input for r in results if r.brick_input is not None]
    if not pieces:
        return [], {}
    allrows = np.concatenate(pieces)
    tiles_of: dict[str, list[int]] = {}
    # one row per TARGETID: a row with the Legacy Surveys ID columns (the ID path of
    # decision 10) wins over one without, then the first tile in plan order
    has_id = ((allrows["RELEASE"] > 0) & (allrows["BRICKID"] > 0)
              & (allrows["BRICK_OBJID"] > 0) & (np.char.strip(allrows["PHOTSYS"]) != b""))
    order = np.lexsort((~has_id, allrows["TARGETID"]))
    allrows = allrows[order]
    first = np.ones(len(allrows), dtype=bool)
    first[1:] = allrows["TARGETID"][1:] != allrows["TARGETID"][:-1]
    unique = allrows[first]
    if known is not None:
        held = known.contains(unique["TARGETID"])
    else:
        with reading(conn) as cur:
            held = np.isin(unique["TARGETID"], tempids.present(
                cur, qualified(schema_name, "photometry"), unique["TARGETID"]))
    need = unique[~held & (unique["BRICKNAME"] != b"")]
    # which tiles depend on which brick (a failed brick fails those tiles)
    need_all = allrows[np.isin(allrows["TARGETID"], need["TARGETID"])]
    pairs = np.unique(need_all[["BRICKNAME", "TILEID"]])
    for brick, tileid in zip(pairs["BRICKNAME"].tolist(), pairs["TILEID"].tolist()):
        tiles_of.setdefault(brick.decode(), []).append(tileid)
    need = need[np.argsort(need["BRICKNAME"], kind="stable")]
    bricks, starts = np.unique(need["BRICKNAME"], return_index=True)
    bounds = list(starts) + [len(need)]
    jobs = []
    g = 0
    while g < len(bricks):
        last = g + 1
        while last < len(bricks) and last - g < MAX_BRICKS_PER_TASK \
                and bounds[last] - bounds[g] < TARGETS_PER_TASK:
            last += 1
        name = f"{bricks[g].decode()}+{last - g}"
        jobs.append(BrickJob(name, need[bounds[g]: bounds[last]], paths, stage_dir))
        g = last
    return jobs, tiles_of
