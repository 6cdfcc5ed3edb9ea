"""The tasks the root hands to workers, one dataclass per kind (picklable for MPI).

Each is built in one place — :func:`specprod_db.load.waves.tile_job` (:class:`TileJob`),
:func:`specprod_db.load.catalogs.catalog_jobs` (:class:`CatalogJob`),
:func:`specprod_db.load.waves.targetphot` (:class:`TargetphotJob`),
:func:`specprod_db.load.bricks.brick_jobs` (:class:`BrickJob`),
:func:`specprod_db.load.commit.write_job` (:class:`WriteJob`) and
:func:`specprod_db.load.zpix.load` (:class:`HealpixJob`) — and run by one
handler of :data:`specprod_db.load.tasks.HANDLERS`.  A job's ``str`` names it in log
lines (:func:`specprod_db.mpi.describe`): ``tile 1234``, ``bricks 0001m002+16``.
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np

from specprod_db.extract import zpix
from specprod_db.load.plan import TileAction
from specprod_db.paths import Paths
from specprod_db.stage import StageFile


@dataclass
class TileJob:
    """A tile task (:func:`specprod_db.load.tasks.extract_tile`): its planned action
    (the :class:`~specprod_db.load.plan.TileAction` itself), where to read and stage."""
    action: TileAction
    paths: Paths
    stage_dir: str
    #: the fingerprints recorded for the tile, given when the plan's only reason to
    #: UPDATE it is that its files' sizes or mtimes moved
    recorded: Optional[dict[str, Optional[str]]] = None
    #: run by the load's waves: its catalogs are read by the wave's catalog tasks;
    #: False: the task reads them itself
    wave: bool = False

    @property
    def tileid(self) -> int:
        return self.action.tileid

    def __str__(self) -> str:
        return f"tile {self.action.tileid}"


@dataclass
class CatalogJob:
    """A catalog task (:func:`specprod_db.load.catalogs.read_catalog_task`): the rows of
    the TARGETIDs ``want`` (sorted) in one targeting catalog file."""
    path: str
    kind: str
    want: np.ndarray
    stage_dir: str

    def __str__(self) -> str:
        return f"catalog {self.path}"


@dataclass
class TargetphotJob:
    """A targetphot task (:func:`specprod_db.load.tasks.assemble_targetphot`): a tile's
    stage file and the wave's catalog stages it reads (file ->
    :func:`specprod_db.load.catalogs.staged`)."""
    tileid: int
    stage: StageFile
    catalogs: dict[str, dict]

    def __str__(self) -> str:
        return f"tile {self.tileid}"


@dataclass
class BrickJob:
    """A brick task (:func:`specprod_db.load.tasks.extract_brick`): a group of bricks and
    the targets in them (sorted by BRICKNAME)."""
    group: str
    targets: np.ndarray
    paths: Paths
    stage_dir: str

    def __str__(self) -> str:
        return f"bricks {self.group}"


@dataclass
class WriteJob:
    """A write task of a writer rank (:func:`specprod_db.load.writer_ranks.write_task`):
    one tile's stage file, state and photometry rows, written on the rank's connection."""
    dsn: str
    schema: str
    bulk: bool
    run_id: int
    action: TileAction
    stage: StageFile
    state: dict
    photometry: np.ndarray

    def __str__(self) -> str:
        return f"tile {self.action.tileid}"


@dataclass
class HealpixJob:
    """A HEALPix task (:func:`specprod_db.load.tasks.extract_healpix`): one HEALPix
    redrock file of a static production."""
    survey: str
    program: str
    healpix: int
    paths: Paths
    stage_dir: str

    @property
    def name(self) -> str:
        """``SURVEY-PROGRAM-HEALPIX``."""
        return zpix.healpix_name(self.survey, self.program, self.healpix)

    def __str__(self) -> str:
        return f"healpix {self.name}"
