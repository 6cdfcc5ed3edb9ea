"""What a worker rank does with one task: extract, then stage to HDF5.

*Tile task*: the tile row, its qualifying exposures and frames, and — for a new tile or a
changed fiberassign file (``full``) — fiberassign, potential, targetphot (target rows and
targeting-data photometry) and the brick inputs; always its redshifts (ztile).
*Brick task*: ``tractorphot_onebrick`` for the targets of one brick that still need
Legacy Surveys photometry.

Each task writes one stage file and returns a small summary; a stage file already
complete for the same inputs (same key) is reused, so a rerun after a crash redoes only
what is missing.
"""
import hashlib
import json
import os

import numpy as np

from . import faults, ids, stage
from .extract import redshift, targetphot, tile, tractorphot
from .log import get_logger
from .paths import InputError
from .schema import table as schema_table

#: Columns of the brick-task input (the targets that may need LS photometry).
BRICK_INPUT_DTYPE = np.dtype([("TARGETID", "i8"), ("RA", "f8"), ("DEC", "f8"),
                              ("RELEASE", "i2"), ("BRICKID", "i4"), ("BRICK_OBJID", "i4"),
                              ("PHOTSYS", "S1"), ("BRICKNAME", "S8"), ("TILEID", "i4")])

_exposures_cache = {}


class TileTaskError(RuntimeError):
    """A tile cannot be extracted; the message names the tile, the file and the problem."""


def task_key(*parts):
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def exposures_for(paths):
    """The exposures file, read once per process."""
    path = paths.exposures()
    if path not in _exposures_cache:
        _exposures_cache.clear()
        _exposures_cache[path] = tile.read_exposures_file(path)
    return _exposures_cache[path]


def brick_input(targetphot_rows, targets, tileid):
    """The brick-task input of a tile's potential targets (ID columns + position)."""
    n = len(targets)
    out = np.zeros(n, dtype=BRICK_INPUT_DTYPE)
    out["TARGETID"] = targets["TARGETID"]
    out["RA"] = targets["RA"]
    out["DEC"] = targets["DEC"]
    for name in ("RELEASE", "BRICKID", "BRICK_OBJID", "PHOTSYS"):
        out[name] = targetphot_rows[name]
    # The brick of a row is its targeting BRICKNAME when it has one (as desispec groups
    # them), else the brick of its position; rows with neither (non-finite positions)
    # get '' and keep their targeting photometry (the planner skips them).
    named = np.char.strip(np.asarray(targetphot_rows["BRICKNAME"]).astype("S8"))
    computed = np.asarray(tractorphot.bricknames(out["RA"], out["DEC"])).astype("S8")
    out["BRICKNAME"] = np.where(named != b"", named, computed)
    out["TILEID"] = tileid
    return out


def extract_tile(job):
    """Worker side of a tile task. ``job`` = dict(action=TileAction dict, paths, stage_dir)."""
    action, paths, stage_dir = job["action"], job["paths"], job["stage_dir"]
    tileid = action["tileid"]
    key = task_key("tile", action["line"], action["state"], action["full"])
    path = stage.tile_file(stage_dir, tileid)
    if stage.is_complete(path, key):
        get_logger().info("tile %d: reusing complete stage file %s", tileid, path)
        return {"tileid": tileid, "file": path, "reused": True}
    line = action["line"]
    night_dir = paths.cumulative_dir(tileid, line["LASTNIGHT"])
    if not os.path.isdir(night_dir):
        raise TileTaskError(f"tile {tileid}: cumulative directory of LASTNIGHT "
                            f"{line['LASTNIGHT']} {night_dir}: does not exist")
    stats = {}
    tables = {"tile": tile.tile_rows(line, stats=stats)}
    exposures, frames = exposures_for(paths)
    tables["exposure"] = tile.exposure_rows(exposures, tileid, stats=stats)
    tables["frame"] = tile.frame_rows(frames, tables["exposure"]["expid"], stats=stats,
                                      tileid=tileid)
    extra = {}
    survey, program = line["SURVEY"], line["PROGRAM"]
    if action["full"]:
        fa_path = paths.fiberassign_file(tileid)
        fa, pot, targets, header = tile.fiberassign_rows(fa_path, tileid, stats=stats)
        tables["fiberassign"], tables["potential"] = fa, pot
        # a named catalog that does not exist is skipped and listed in
        # stats["missing_catalogs"]; none existing fails the tile (decision 11)
        tp = targetphot.targetphot_onetile(tileid, header, targets, paths, stats=stats)
        stats["targetid_mismatch"] = targetid_mismatches(tp)
        tables["target"] = targetphot.target_rows(tp, tileid, survey, program, stats=stats)
        tables["photometry"] = targetphot.photometry_from_targetphot(tp, stats=stats)
        extra["brick_input"] = brick_input(tp, targets, tileid)
    z, info = redshift.ztile_rows(paths, tileid, line["LASTNIGHT"], survey, program,
                                  stats=stats)
    tables["ztile"] = z
    faults.hit("extract", tileid, leftover=path)  # crash tests only (faults.py)
    stage.write(path, tables, key, extra)
    return {"tileid": tileid, "file": path, "reused": False,
            "rows": {k: len(v) for k, v in tables.items()},
            "missing_petals": list(info.get("missing_petals", [])),
            "stats": _plain(stats)}


def targetid_mismatches(tp):
    """Rows of Legacy Surveys targets (TARGETID RELEASE >= 1000, not mock/sky/Gaia) whose
    TARGETID does not encode their own RELEASE/BRICKID/BRICK_OBJID.  They are loaded as
    desispec reads them (the row's columns); the count feeds a warning."""
    objid, brickid, release, mock, sky, gaiadr = ids.decode_targetid(tp["TARGETID"])
    ls = (release >= 1000) & (mock == 0) & (sky == 0) & (gaiadr == 0) \
        & (tp["RELEASE"] > 0)
    bad = ls & ((release != tp["RELEASE"]) | (brickid != tp["BRICKID"])
                | (objid != tp["BRICK_OBJID"]))
    return int(np.count_nonzero(bad))


def extract_brick(job):
    """Worker side of a brick task: a group of bricks, one stage file.

    ``job`` = dict(group, targets (sorted by BRICKNAME), paths, stage_dir).  A brick whose
    tractor file is bad is reported in ``failed`` (brick -> message) and the others are
    staged: only the tiles that need the bad brick fail.
    """
    group, targets = job["group"], job["targets"]
    key = task_key("bricks", group, targets["BRICKNAME"].tolist(),
                   targets["TARGETID"].tolist())
    path = stage.brick_file(job["stage_dir"], group)
    if stage.is_complete(path, key):
        return {"group": group, "file": path, "reused": True,
                "failed": stage.read(path, names=()).get("info", {}).get("failed", {})}
    stats, parts, failed, matched = {}, [], {}, 0
    bricks, starts = np.unique(targets["BRICKNAME"], return_index=True)
    bounds = list(starts) + [len(targets)]
    for i, brick in enumerate(bricks):
        sel = targets[bounds[i]: bounds[i + 1]]
        try:
            rows, ok = tractorphot.tractorphot_onebrick(brick.decode(), sel, job["paths"],
                                                        stats=stats)
        except InputError as err:
            failed[brick.decode()] = str(err)
            continue
        parts.append(rows)
        matched += int(np.count_nonzero(ok))
    rows = np.concatenate(parts) if parts else schema_table("photometry").empty()
    stage.write(path, {"photometry": rows}, key, info={"failed": failed})
    return {"group": group, "file": path, "reused": False, "failed": failed,
            "bricks": len(bricks), "matched": matched, "inputs": len(targets),
            "stats": _plain(stats)}


def _plain(stats):
    return json.loads(json.dumps(stats, default=lambda v: v.item()
                                 if isinstance(v, np.generic) else str(v)))


def remove_stage_file(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
