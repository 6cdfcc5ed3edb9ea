"""The TARGETIDs ``photometry`` holds, known to the root of an initial load.

An initial (bulk) load into an empty ``photometry`` table is the only writer of that
table (the load's lock keeps other loads out), so what the table holds is exactly what
the run's committed tiles wrote.  The root keeps those TARGETIDs in memory
(:class:`PhotometryIds`) and asks it, instead of the database, which TARGETIDs still
need a Legacy Surveys brick read (:func:`specprod_db.load.bricks.brick_jobs`) and which
photometry rows a tile must insert (:func:`specprod_db.load.photometry_rows.new_photometry`).
Asking the database cost an index probe per TARGETID per tile, twice (while the table
grows without statistics the planner even chose a scan of the whole table), the largest
cost of the write stage that grew with the load.

Nothing else may remove photometry meanwhile: the set is used only when the plan has no
DELETE and no UPDATE (an empty schema holds no tile), and then the run's ``keep`` table
(:func:`specprod_db.load.tile_writer.keep_targetids`), which guards photometry from such
removals, is not filled either.  A rerun of an interrupted initial load starts with rows
in the table and asks the database throughout.
"""
from typing import Iterable, Optional

import numpy as np
from psycopg2 import sql
from psycopg2.extensions import connection

from specprod_db.db.sql import qualified, reading
from specprod_db.load.plan import DELETE, UPDATE, TileAction

#: Sorted runs kept apart before they are merged into one (each lookup searches each).
MAX_RUNS = 8


class PhotometryIds:
    """A growing set of int64 TARGETIDs: sorted unique runs, merged when there are more
    than :data:`MAX_RUNS`, so adding a tile's TARGETIDs does not copy the whole set."""

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(r) for r in self.runs)

    def add(self, targetids: np.ndarray) -> None:
        """Add TARGETIDs (any order, duplicates allowed) whose rows are committed."""
        new = np.unique(np.asarray(targetids, dtype=np.int64))
        if len(new) and self.runs:
            new = new[~self.contains(new)]
        if not len(new):
            return
        self.runs.append(new)
        if len(self.runs) > MAX_RUNS:
            self.runs = [np.sort(np.concatenate(self.runs))]

    def contains(self, targetids: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``targetids`` are in the set."""
        ids = np.asarray(targetids, dtype=np.int64)
        found = np.zeros(len(ids), dtype=bool)
        for run in self.runs:
            i = np.searchsorted(run, ids)
            inside = i < len(run)
            found[inside] |= run[i[inside]] == ids[inside]
        return found


def start(conn: connection, schema_name: str, bulk: bool,
          actions: Iterable[TileAction]) -> Optional[PhotometryIds]:
    """An empty :class:`PhotometryIds` for a bulk load into an empty ``photometry``
    table whose plan removes no photometry (no DELETE, no UPDATE: nothing is held
    yet); None otherwise (the run asks the database)."""
    if not bulk or any(a.action in (DELETE, UPDATE) for a in actions):
        return None
    with reading(conn) as cur:
        cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(
            qualified(schema_name, "photometry")))
        row = cur.fetchone()
    return None if row is None or row[0] else PhotometryIds()
