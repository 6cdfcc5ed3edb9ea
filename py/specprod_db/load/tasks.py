"""What a worker rank does with one task: extract, then stage to HDF5.

*Tile task* (:func:`extract_tile`): the tile row, its qualifying exposures and frames,
and — for a new tile or a changed fiberassign file (``full``) — fiberassign, potential
and the tile's targeting-catalog plan (the catalogs themselves are read once per wave,
:mod:`specprod_db.load.catalogs`; a tile task run alone reads them itself); always its
redshifts (ztile) and their afterburners (``ztile_emline``, ``ztile_qso_mgii``,
``ztile_qso_qn``).  The files read are hashed by the worker, right before reading them,
and checked unchanged after (:mod:`specprod_db.load.fingerprints`): the fingerprints recorded
for the tile are those of what was loaded.  An UPDATE planned only because files were
touched (same bytes) comes back as a refresh, with nothing extracted.
*Catalog task* (:func:`specprod_db.load.catalogs.read_catalog_task`): one targeting catalog
file, the rows a wave's tiles want.
*Targetphot task* (:func:`assemble_targetphot`): a tile's target rows, targeting-data
photometry and brick inputs, from the wave's catalog stages, added to its stage file.
*Brick task* (:func:`extract_brick`): ``tractorphot_onebrick`` for the targets of a
group of bricks that still need Legacy Surveys photometry.
*HEALPix task* (:func:`extract_healpix`, static productions): one HEALPix redrock file
-> its ``zpix`` rows (:mod:`specprod_db.extract.zpix`).

Each task writes one stage file and returns a small typed result (:class:`TileResult`,
:class:`BrickResult`); a stage file already complete for the same inputs (same key) is
reused, so a rerun after a crash redoes only what is missing (a tile's stage file still
without its targeting rows comes back with its plan, and the run assembles it).  A brick
group in which a brick failed is never reused: the next run reads its tractor files
again.
"""
import hashlib
import json
import os
import traceback
from dataclasses import dataclass, field
from functools import partial
from stat import S_ISDIR
from typing import Any, Callable, Optional, cast

import numpy as np

from specprod_db import faults, ids, stage
from specprod_db.errors import InputError, one_line
from specprod_db.extract import afterburner, redshift, targetphot, tile, tractorphot, zpix
from specprod_db.load import catalogs, fingerprints, refusals, writer_ranks
from specprod_db.load.jobs import BrickJob, HealpixJob, TargetphotJob, TileJob
from specprod_db.log import get_logger
from specprod_db.paths import Paths
from specprod_db.schema import table as schema_table
from specprod_db.stage import StageFile

#: Columns of the brick-task input (the targets that may need LS photometry).
BRICK_INPUT_DTYPE = np.dtype([("TARGETID", "i8"), ("RA", "f8"), ("DEC", "f8"),
                              ("RELEASE", "i2"), ("BRICKID", "i4"), ("BRICK_OBJID", "i4"),
                              ("PHOTSYS", "S1"), ("BRICKNAME", "S8"), ("TILEID", "i4")])

#: The tile's targets (fiberassign TARGETS, no sky) staged for its targetphot task.
TARGETS_DTYPE = np.dtype([("TARGETID", "i8"), ("RA", "f8"), ("DEC", "f8")])

_exposures_cache: dict[str, tuple[Any, Any]] = {}


@dataclass
class TileResult:
    """A tile task's outcome.

    ``stage`` holds the rows to load (None for a ``refresh``: inputs touched with the
    same bytes, nothing to reload); ``state`` the fingerprints of what was read (to be
    recorded in ``tile_state``); ``brick_input`` the targets that may need Legacy
    Surveys photometry (full extractions only); ``targetids`` every TARGETID the
    staged rows reference.
    """
    tileid: int
    stage: Optional[StageFile] = None
    state: dict[str, Any] = field(default_factory=dict)
    reused: bool = False
    refresh: bool = False
    rows: dict[str, int] = field(default_factory=dict)
    missing_petals: list[int] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    brick_input: Optional[np.ndarray] = None
    targetids: Optional[np.ndarray] = None
    #: targeting rows still to assemble (catalogs.py): the tile's catalog plan and the
    #: TARGETIDs of its targets; None once assembled
    catalogs: Optional[list[dict]] = None
    want: Optional[np.ndarray] = None


@dataclass
class BrickResult:
    """A brick task's outcome: its stage file (photometry rows), the bricks that failed
    (brick -> message; ``internal``: those of them that failed by a bug, not bad input),
    and counts."""
    group: str
    stage: StageFile
    failed: dict[str, str] = field(default_factory=dict)
    internal: list[str] = field(default_factory=list)
    reused: bool = False
    bricks: int = 0
    matched: int = 0
    inputs: int = 0
    stats: dict[str, Any] = field(default_factory=dict)


def task_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def exposures_for(paths: Paths) -> tuple[Any, Any]:
    """The exposures file, read once per process."""
    path = paths.exposures()
    if path not in _exposures_cache:
        _exposures_cache.clear()
        _exposures_cache[path] = tile.read_exposures_file(path)
    return _exposures_cache[path]


def brick_input(targetphot_rows: np.ndarray, targets: np.ndarray, tileid: int) -> np.ndarray:
    """The brick-task input of a tile's potential targets (ID columns + position)."""
    n = len(targets)
    out = np.zeros(n, dtype=BRICK_INPUT_DTYPE)
    out["TARGETID"] = targets["TARGETID"]
    out["RA"] = targets["RA"]
    out["DEC"] = targets["DEC"]
    for name in ("RELEASE", "BRICKID", "BRICK_OBJID", "PHOTSYS"):
        out[name] = targetphot_rows[name]
    # the brick of a row is its targeting BRICKNAME when it has one (as desispec groups
    # them), else the brick of its position; rows with neither (non-finite positions)
    # get '' and keep their targeting photometry (the planner skips them)
    out["BRICKNAME"] = tractorphot.brick_names(np.rec.fromarrays(  # type: ignore[call-overload]
        [targetphot_rows["BRICKNAME"], out["RA"], out["DEC"]],
        names=("BRICKNAME", "RA", "DEC")))
    out["TILEID"] = tileid
    return out


def extract_tile(job: TileJob) -> TileResult:
    """Worker side of a tile task (:class:`~specprod_db.load.jobs.TileJob`)."""
    action, paths = job.action, job.paths
    tileid, line, full = action.tileid, action.line, action.full
    faults.hit("task", tileid)  # failure tests only (faults.py)
    key = task_key("tile", line, action.state, full)
    out = stage.tile_file(job.stage_dir, tileid)
    if out.is_complete(key):
        get_logger().info("tile %d: reusing complete stage file %s", tileid, out.path)
        return _alone(job, _tile_result(tileid, out, out.info(), reused=True))
    night_dir = paths.cumulative_dir(tileid, line["LASTNIGHT"])
    problem = _not_a_directory(night_dir)
    if problem:
        raise InputError(f"tile {tileid}: cumulative directory of LASTNIGHT "
                         f"{line['LASTNIGHT']} {night_dir}: {problem}")
    files = {"redrock_fingerprint": redshift.redrock_files(paths, tileid, line["LASTNIGHT"])}
    if full:
        files["fiberassign_fingerprint"] = tile.fiberassign_files(paths, tileid)
    # an unreadable file (any OSError: a directory in its place, a symlink loop, EACCES,
    # EIO) fails this tile here, naming it and the path
    read = {k: fingerprints.hashed(v, label=f"tile {tileid}") for k, v in files.items()}
    state = dict(action.state, **{k: fp.to_text() for k, fp in read.items()})
    recorded = job.recorded
    if recorded and all(fp.same_content(fingerprints.Fingerprint.from_text(recorded.get(k)))
                        for k, fp in read.items()):
        return TileResult(tileid, state=state, refresh=True)

    stats: dict[str, Any] = {}
    tables = {"tile": tile.tile_rows(line, stats=stats)}
    exposures, frames = exposures_for(paths)
    state["exposures_hash"] = fingerprints.exposures_digest(exposures, frames, tileid)
    tables["exposure"] = tile.exposure_rows(exposures, tileid, stats=stats)
    tables["frame"] = tile.frame_rows(frames, tables["exposure"]["expid"], stats=stats,
                                      tileid=tileid, path=paths.exposures())
    extra = {}
    survey, program = line["SURVEY"], line["PROGRAM"]
    if full:
        fa, pot, targets, header = tile.fiberassign_rows(paths.fiberassign_file(tileid),
                                                         tileid, stats=stats)
        tables["fiberassign"], tables["potential"] = fa, pot
        # the catalogs are read once per wave (catalogs.py): here only the tile's plan; a
        # named catalog that does not exist is skipped and listed in
        # stats["missing_catalogs"]; none existing fails the tile (decision 11)
        extra["targets"] = _target_positions(targets)
        plan = targetphot.catalog_plan(tileid, header, targets, paths, stats) \
            if len(targets) else []
    z, zinfo = redshift.ztile_rows(paths, tileid, line["LASTNIGHT"], survey, program,
                                   stats=stats)
    tables["ztile"] = z
    state["row_sources"] = refusals.sources(paths, tileid, zinfo["files"])  # for messages
    ab, _ = afterburner.afterburner_rows(paths, tileid, line["LASTNIGHT"],
                                          zinfo["files"], z, stats=stats,
                                          redshift_targetids=zinfo["targetids"])
    tables.update(ab)  # ztile_emline, ztile_qso_mgii, ztile_qso_qn
    for k, fp in read.items():
        fingerprints.check_unchanged(fp, files[k], tileid)
    faults.hit("extract", tileid, leftover=out.path)  # crash tests only (faults.py)
    info = {"state": state, "rows": {k: len(v) for k, v in tables.items()},
            "missing_petals": list(zinfo.get("missing_petals", [])), "stats": _plain(stats)}
    if full:
        info["targetphot"] = {"catalogs": plan, "survey": survey, "program": program}
    out.write(tables, key, extra, info)
    return _alone(job, _tile_result(tileid, out, info,
                                    targetids=None if full else _targetids(tables)))


def _not_a_directory(path: str) -> Optional[str]:
    """Why ``path`` is not a usable directory ("does not exist", "is not a directory",
    "cannot be read: REASON"), or None when it is one."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "does not exist"
    except OSError as err:
        return f"cannot be read: {err.strerror or type(err).__name__}"
    return None if S_ISDIR(st.st_mode) else "is not a directory"


def _alone(job: TileJob, result: TileResult) -> TileResult:
    """A tile task run alone (``job.wave`` False: not by the load's waves) reads its
    own catalogs (:func:`catalogs.read_in_process`) and assembles its targeting rows."""
    if result.catalogs is None or job.wave:
        return result
    # a tile result with its catalog plan has its stage file and wanted TARGETIDs
    found = catalogs.read_in_process(result.catalogs, cast(np.ndarray, result.want),
                                     job.stage_dir)
    try:
        assembled = assemble_targetphot(TargetphotJob(result.tileid,
                                                      cast(StageFile, result.stage), found))
    finally:
        for where in found.values():
            if "stage" in where:
                StageFile(where["stage"]).remove()
    assembled.reused = result.reused
    return assembled


def _target_positions(targets: np.ndarray) -> np.ndarray:
    out = np.zeros(len(targets), dtype=TARGETS_DTYPE)
    for name in TARGETS_DTYPE.names or ():
        out[name] = targets[name]
    return out


def _tile_result(tileid: int, out: StageFile, info: dict[str, Any], reused: bool = False,
                 brick_input: Optional[np.ndarray] = None,
                 targetids: Optional[np.ndarray] = None) -> TileResult:
    """The TileResult of a stage file; one whose targeting rows are still to be
    assembled (``info["targetphot"]``) carries its catalog plan and wanted TARGETIDs."""
    pending = info.get("targetphot")
    if reused and not pending:
        brick_input, targetids = out.brick_input(), out.targetids()
    result = TileResult(tileid, out, info["state"], reused=reused, rows=info["rows"],
                        missing_petals=info["missing_petals"], stats=info["stats"],
                        brick_input=brick_input, targetids=targetids)
    if pending:
        result.catalogs = pending["catalogs"]
        result.want = np.unique(cast(np.ndarray, out.aux("targets"))["TARGETID"])
    return result


def assemble_targetphot(job: TargetphotJob) -> TileResult:
    """Worker side of a targetphot task: a tile's targeting rows from the wave's catalog
    stages (:mod:`specprod_db.load.catalogs`).

    ``job``: the tile's stage file, written by its tile task with its catalog plan, and
    the catalog stages (file -> :func:`catalogs.staged`).  The target and photometry
    rows and the brick input join the tile's stage file (rewritten whole, same key),
    whose ``info`` then says the tile is complete.
    """
    tileid, out = job.tileid, job.stage
    # written by the tile task with its key, plan and targets
    info, key = out.info(), cast(str, out.key())
    pending = info.pop("targetphot")
    targets = cast(np.ndarray, out.aux("targets"))
    tables = out.tables()
    stats: dict[str, Any] = {}
    read = catalogs.stage_reader(job.catalogs, f"tile {tileid}")
    tp = targetphot.assemble(tileid, pending["catalogs"], targets, read, stats)
    stats["targetid_mismatch"] = targetid_mismatches(tp)
    tables["target"] = targetphot.target_rows(tp, tileid, pending["survey"],
                                              pending["program"], stats=stats)
    tables["photometry"] = targetphot.photometry_from_targetphot(tp, stats=stats)
    extra = {"brick_input": brick_input(tp, targets, tileid)}
    info["rows"] = {k: len(v) for k, v in tables.items()}
    info["stats"] = _add_stats(info["stats"], _plain(stats))
    out.write(tables, key, extra, info)
    return _tile_result(tileid, out, info, brick_input=extra["brick_input"],
                        targetids=_targetids(tables))


def _add_stats(into: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """Stats of two steps of a tile as one: counts added, lists joined."""
    for k, v in more.items():
        if k not in into:
            into[k] = v
        elif isinstance(v, dict):
            into[k] = _add_stats(dict(into[k]), v)
        else:
            into[k] = into[k] + v
    return into


def _targetids(tables: dict[str, np.ndarray]) -> np.ndarray:
    parts = [t["targetid"] for t in tables.values() if "targetid" in (t.dtype.names or ())]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def targetid_mismatches(tp: np.ndarray) -> int:
    """Rows of Legacy Surveys targets (TARGETID RELEASE >= 1000, not mock/sky/Gaia) whose
    TARGETID does not encode their own RELEASE/BRICKID/BRICK_OBJID.  They are loaded as
    desispec reads them (the row's columns); the count feeds a warning."""
    objid, brickid, release, mock, sky, gaiadr = ids.decode_targetid(tp["TARGETID"])
    ls = (release >= 1000) & (mock == 0) & (sky == 0) & (gaiadr == 0) \
        & (tp["RELEASE"] > 0)
    bad = ls & ((release != tp["RELEASE"]) | (brickid != tp["BRICKID"])
                | (objid != tp["BRICK_OBJID"]))
    return int(np.count_nonzero(bad))


def extract_brick(job: BrickJob) -> BrickResult:
    """Worker side of a brick task (:class:`~specprod_db.load.jobs.BrickJob`): a group of
    bricks, one stage file.

    Each brick
    is matched on its own: a brick whose tractor file is bad (missing where needed,
    unreadable, damaged: :class:`InputError`) is reported in ``failed`` (brick ->
    message naming brick and file) and the task goes on with its other bricks, which
    are staged: only the tiles that need the bad brick fail, blamed on it.  An
    unexpected exception in one brick is reported the same way, that brick listed in
    ``internal`` (logged with its traceback).  The key covers the tractor files' sizes
    and mtimes (a file that cannot be stat-ed stamped unreadable), and a group with a
    failed brick is written with its failures but never reused, so a repaired file is
    read by the next run.
    """
    group, targets, paths = job.group, job.targets, job.paths
    bricks, starts = np.unique(targets["BRICKNAME"], return_index=True)
    names = [b.decode() for b in bricks]
    tractor = fingerprints.stat([(f"{region}/{b}", paths.tractor_file(region, b))
                                 for b in names for region in ("north", "south")])
    key = task_key("bricks", group, targets["BRICKNAME"].tolist(),
                   targets["TARGETID"].tolist(), tractor.to_text())
    out = stage.brick_file(job.stage_dir, group)
    if out.is_complete(key):
        info = out.info()
        if not info.get("failed"):
            return BrickResult(group, out, reused=True, bricks=len(bricks),
                               inputs=len(targets))
    stats: dict[str, Any] = {}
    failed: dict[str, str] = {}
    internal: list[str] = []

    def one_brick(brick: str, step: Callable[[], Any]) -> Any:
        """``step()``, or None when it fails: the brick then in ``failed``."""
        try:
            return step()
        except InputError as err:
            failed[brick] = one_line(err)
        except Exception as err:  # a bug, in this brick only: its tiles fail, loudly
            get_logger().error("internal error in brick %s (task bricks %s): %s\n%s", brick,
                               group, one_line(err), traceback.format_exc())
            failed[brick] = f"internal error: {one_line(err)}"
            internal.append(brick)
        return None

    def gather(brick: str, sel: np.ndarray) -> Any:
        faults.hit(f"brick-{brick}")  # failure tests only (faults.py)
        return tractorphot.gather_onebrick(brick, sel, paths, stats=stats)

    gathered: list[tuple[str, dict, int]] = []  # (brick, columns, targets matched)
    bounds = list(starts) + [len(targets)]
    for i, brick in enumerate(names):
        sel = targets[bounds[i]: bounds[i + 1]]
        got = one_brick(brick, partial(gather, brick, sel))
        if got is not None and got[0] is not None:
            gathered.append((brick, got[0], int(np.count_nonzero(got[1]))))
    # the bricks' rows built together; if that fails (or their types differ), brick by
    # brick, so that only a brick whose values cannot be stored fails
    built: dict[str, Any] = {}
    try:
        rows = tractorphot.build_photometry([c for _, c, _ in gathered], stats=built)
    except Exception:  # noqa: BLE001 - found again, and blamed, brick by brick
        rows = None
    if rows is not None:
        _add_stats(stats, built)
        matched = sum(n for _, _, n in gathered)
    else:
        parts, matched = [], 0
        for brick, cols, n in gathered:
            part = one_brick(brick, partial(tractorphot.build_photometry, [cols], stats))
            if part is not None:
                parts.append(part)
                matched += n
        rows = np.concatenate(parts) if parts else schema_table("photometry").empty()
    out.write({"photometry": rows}, key, info={"failed": failed, "internal": internal})
    return BrickResult(group, out, failed=failed, internal=internal, bricks=len(bricks),
                       matched=matched, inputs=len(targets), stats=_plain(stats))


@dataclass
class HealpixResult:
    """A HEALPix task's outcome: its stage file (``zpix`` rows) and counts."""
    name: str
    stage: StageFile
    rows: int = 0
    reused: bool = False
    stats: dict[str, Any] = field(default_factory=dict)


def healpix_stage(stage_dir: str, name: str) -> StageFile:
    """The stage file of HEALPix file ``name`` (``SURVEY-PROGRAM-HEALPIX``)."""
    return StageFile(os.path.join(stage_dir, f"healpix-{name}.h5"))


def extract_healpix(job: HealpixJob) -> HealpixResult:
    """Worker side of a HEALPix task (:class:`~specprod_db.load.jobs.HealpixJob`): one
    HEALPix redrock file, one stage file.

    The key covers the file's name, size and mtime (a static production does not change;
    a file that moves while it is read fails the task, and the next run reads it again).
    """
    survey, program, pixel = job.survey, job.program, int(job.healpix)
    paths = job.paths
    name = zpix.healpix_name(survey, program, pixel)
    faults.hit("healpix")  # failure tests only (faults.py)
    files = zpix.files_of(paths, survey, program, pixel)
    before = fingerprints.stat(files)
    if before.files[0].missing:
        raise InputError(f"healpix {name}: {files[0][1]}: does not exist")
    for f in before.unreadable:  # a symlink loop, a directory in its place, EACCES ...
        raise InputError(f"healpix {name}: {dict(files).get(f.name) or f.name}: cannot be "
                         f"read: {f.error}")
    key = task_key("healpix", name, before.to_text())
    out = healpix_stage(job.stage_dir, name)
    if out.is_complete(key):
        info = out.info()
        return HealpixResult(name, out, rows=info.get("rows", 0), reused=True,
                             stats=info.get("stats", {}))
    stats: dict[str, Any] = {}
    rows, info = zpix.zpix_rows(files[0][1], survey, program, pixel, stats=stats)
    if fingerprints.stat(files).stat_key() != before.stat_key():
        raise InputError(f"healpix {name}: {files[0][1]} changed while it was being read; "
                         f"the next run loads it")
    out.write({"zpix": rows}, key, info={"rows": len(rows), "stats": _plain(stats),
                                         "file": info["file"]})
    return HealpixResult(name, out, rows=len(rows), stats=_plain(stats))


def _plain(stats: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(stats, default=lambda v: v.item()
                                 if isinstance(v, np.generic) else str(v)))


#: The task kinds a worker serves (:func:`specprod_db.mpi.serve`); ``write`` only on the
#: writer ranks of ``--writers`` (:mod:`specprod_db.load.writer_ranks`).
HANDLERS: dict[str, Callable[[Any], Any]] = {
    "tile": extract_tile, "catalog": catalogs.read_catalog_task,
    "targetphot": assemble_targetphot, "brick": extract_brick,
    "healpix": extract_healpix, "write": writer_ranks.write_task}
