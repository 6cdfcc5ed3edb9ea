"""The extraction of a wave of tiles: tile, catalog, targetphot and brick tasks.

A load goes in waves of ``--wave-tiles`` tiles (:func:`split`).  A :class:`Wave` holds
what its tasks returned — the tiles' results, the bricks' results, which tiles need
which brick, the stage files committed — and nothing else: the root keeps one wave's
results, and a wave goes out of scope once written (:mod:`specprod_db.load.commit`).

1. :func:`submit_tiles` / :func:`collect_tiles` — every INSERT/UPDATE tile extracted and
   staged by a worker (:func:`specprod_db.load.tasks.extract_tile`);
2. :func:`targetphot` — each targeting catalog file the wave's tiles name read once
   (catalog tasks), then each tile's target rows assembled from those reads
   (:mod:`specprod_db.load.catalogs`);
3. :func:`submit_bricks` / :func:`collect_bricks` — the Legacy Surveys photometry the
   database lacks, by brick (:mod:`specprod_db.load.bricks`).
"""
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from specprod_db import faults, mpi
from specprod_db.extract import redshift
from specprod_db.extract import targetphot as extract_targetphot
from specprod_db.load import bricks, catalogs, fingerprints, tile_writer
from specprod_db.load.jobs import TargetphotJob, TileJob
from specprod_db.load.plan import UPDATE, TileAction
from specprod_db.load.prepare import Options, Plan, Session
from specprod_db.load.tally import Tally
from specprod_db.log import get_logger

#: The kinds of task a wave submits, with their progress lines.
KINDS = ("tile", "catalog", "targetphot", "brick", "write")


@dataclass
class Wave:
    """One wave's tiles and what their tasks returned."""
    actions: list[TileAction]
    results: dict[int, Any] = field(default_factory=dict)   # tileid -> TileResult
    brick_results: list = field(default_factory=list)       # BrickResult
    tiles_of_brick: dict[str, list[int]] = field(default_factory=dict)
    written: list = field(default_factory=list)             # StageFiles committed

    def staged(self, tally: Tally) -> list:
        """The results of the wave's tiles that did not fail."""
        return [self.results[a.tileid] for a in self.actions
                if a.tileid in self.results and not tally.failed(a.tileid)]


def split(actions: list[TileAction], wave_tiles: int) -> list[Wave]:
    """``actions`` in waves of ``wave_tiles`` (at least 1)."""
    n = max(1, wave_tiles)
    return [Wave(actions[i:i + n]) for i in range(0, len(actions), n)]


def start_progress(tally: Tally, tiles: int) -> None:
    tally.progress = {kind: mpi.Progress(kind, 0) for kind in KINDS}
    tally.progress["tile"].total = tiles


def tile_job(action: TileAction, opts: Options, session: Session, plan: Plan,
             wave: bool = False) -> TileJob:
    """The task of one tile (:func:`specprod_db.load.tasks.extract_tile`); ``wave``: run
    by the load's waves (its catalogs read by the wave's catalog tasks)."""
    job = TileJob(action, opts.paths, session.stage_dir, wave=wave)
    old = plan.state.get(action.tileid) or {}
    # an UPDATE planned only because files' sizes/mtimes moved: the worker compares
    # their contents with the recorded ones and refreshes the state if they are equal
    if action.action == UPDATE and old.get("status") == "loaded" and all(
            old.get(k) == action.state.get(k) for k in ("tile_hash", "exposures_hash")):
        job.recorded = {k: old.get(k) for k in ("redrock_fingerprint",
                                                "fiberassign_fingerprint")}
    return job


def submit_tiles(dispatcher: mpi.Dispatcher, wave: Wave, opts: Options, session: Session,
                 plan: Plan, tally: Tally) -> mpi.Batch:
    """Queue a wave's tile tasks, largest fiberassign file first; their catalogs are read
    by the wave's catalog tasks (:func:`targetphot`)."""
    jobs = [tile_job(a, opts, session, plan, wave=True) for a in wave.actions]
    return dispatcher.submit("tile", jobs, size=tile_size, progress=tally.progress["tile"])


def collect_tiles(dispatcher: mpi.Dispatcher, batch: mpi.Batch, wave: Wave, session: Session,
                  plan: Plan, tally: Tally) -> None:
    """The results of tile tasks (or of targetphot tasks); a tile's warnings are counted
    once its rows are complete (targeting rows assembled)."""
    log = get_logger()
    for job, result in dispatcher.wait(batch):
        tileid = job.tileid  # a TileJob or a TargetphotJob
        if isinstance(result, mpi.TaskFailure):
            tally.fail(tileid, result.message, result.internal)
            continue
        wave.results[tileid] = result
        if result.stage is not None:
            session.staged["tiles"][str(tileid)] = result.stage.path
        if result.catalogs is not None:
            continue
        tally.tile_stats(tileid, result.stats)
        if result.missing_petals:
            log.warning("tile %d: no redrock file for petal(s) %s", tileid,
                        ", ".join(map(str, result.missing_petals)))
        lost = redshift.lost_petals((plan.state.get(tileid) or {}).get(
            "redrock_fingerprint"), result.missing_petals)
        if lost:  # a re-reduced tile with fewer petals: it loads what is there now
            tally.warn("petals_lost", len(lost), "tile %d: petal(s) %s loaded before have "
                       "no redrock or zbest file now; their ztile rows go with this "
                       "UPDATE", tileid, ", ".join(map(str, lost)))
    batch.results.clear()


def targetphot(dispatcher: mpi.Dispatcher, wave: Wave, session: Session, plan: Plan,
               tally: Tally) -> None:
    """The wave's targeting rows (:mod:`specprod_db.load.catalogs`): each catalog file its
    tiles name read once (catalog tasks, largest first), then each tile's rows assembled
    from them by a worker (targetphot tasks)."""
    pending = [r for r in wave.staged(tally) if r.catalogs is not None]
    if not pending:
        return
    jobs, _ = catalogs.catalog_jobs([(r.catalogs, r.want) for r in pending],
                                    session.stage_dir)
    tally.progress["catalog"].total += len(jobs)
    read = dispatcher.map("catalog", jobs, size=catalogs.job_size,
                          progress=tally.progress["catalog"])
    found = {job.path: catalogs.staged(job, result) for job, result in read}
    tally.progress["targetphot"].total += len(pending)
    batch = dispatcher.submit("targetphot", [
        TargetphotJob(r.tileid, r.stage,
                      {f: found[f] for f, _ in extract_targetphot.plan_files(r.catalogs)})
        for r in pending], size=lambda job: len(job.catalogs),
        progress=tally.progress["targetphot"])
    collect_tiles(dispatcher, batch, wave, session, plan, tally)
    catalogs.remove(result for _, result in read)
    opened = sum(not getattr(result, "reused", False) for _, result in read)
    reads = sum(wave.results[r.tileid].stats.get("files_read", 0) for r in pending
                if not tally.failed(r.tileid))
    c = tally.counts.setdefault("catalogs", {"files_opened": 0, "tile_reads": 0,
                                             "reads_saved": 0})
    c["files_opened"] += opened
    c["tile_reads"] += reads
    c["reads_saved"] += reads - opened
    get_logger().info("targeting catalogs of %d tiles: %d files opened (%d staged before) "
                      "instead of %d reads tile by tile", len(pending), opened,
                      len(read) - opened, reads)


def submit_bricks(dispatcher: mpi.Dispatcher, wave: Wave, opts: Options, session: Session,
                  tally: Tally) -> mpi.Batch:
    """The wave's TARGETIDs join the run's ``keep`` table (unless the root knows
    photometry's TARGETIDs: then nothing can remove photometry, ``session.known``),
    then its brick tasks (for targets the database still lacks photometry for) are
    queued, largest first."""
    faults.hit("bricks")  # failure tests only (faults.py)
    staged = wave.staged(tally)
    if session.known is None:
        tile_writer.keep_more(session.conn, session.keep, np.concatenate(
            [r.targetids for r in staged if r.targetids is not None]
            + [np.zeros(0, np.int64)]))
    jobs, wave.tiles_of_brick = bricks.brick_jobs(
        session.conn, opts.schema, opts.paths, session.stage_dir, staged, session.known)
    tally.progress["brick"].total += len(jobs)
    return dispatcher.submit("brick", jobs, size=lambda job: len(job.targets),
                             progress=tally.progress["brick"])


def collect_bricks(dispatcher: mpi.Dispatcher, batch: mpi.Batch, wave: Wave,
                   session: Session, tally: Tally) -> None:
    """Brick results; a failed brick fails the tiles that need it, blamed on it (a brick
    task reports its bricks one by one, :func:`specprod_db.load.tasks.extract_brick`);
    only a whole task that failed fails every tile needing one of its bricks."""
    for job, result in dispatcher.wait(batch):
        if isinstance(result, mpi.TaskFailure):
            failed = {b.decode(): f"brick task {job.group}: {result.message}"
                      for b in np.unique(job.targets["BRICKNAME"])}
            internal = set(failed) if result.internal else set()
        else:
            failed, internal = result.failed, set(result.internal)
            wave.brick_results.append(result)
            session.staged["bricks"].append(result.stage.path)
        for brick, message in failed.items():
            blame = message if message.startswith(f"brick {brick}: ") \
                else f"brick {brick}: {message}"
            for tileid in wave.tiles_of_brick.get(brick, ()):
                tally.fail(tileid, f"tile {tileid}: {blame}", brick in internal)
    batch.results.clear()


def tile_size(job: TileJob) -> int:
    """The expected cost of a tile task: its fiberassign file's size for a full
    extraction (0 otherwise), from the planner's stat."""
    if not job.action.full:
        return 0
    fp = fingerprints.Fingerprint.from_text(job.action.state.get(
        "fiberassign_fingerprint"))
    return sum(f.size or 0 for f in fp.files) if fp else 0
