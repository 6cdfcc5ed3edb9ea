"""Targeting catalogs read once per wave of tiles, not once per tile.

Neighbouring tiles of a wave (the same sky, several passes and programs) name the same
targeting catalogs: the healpix files of a primary-target directory, secondary
catalogs, ToO ledgers.  Instead of each tile task opening them
(:func:`specprod_db.extract.targetphot.targetphot_onetile`), a wave goes:

1. **tile tasks** stage everything but the targeting rows; a full extraction records in
   its stage file the tile's catalog plan
   (:func:`~specprod_db.extract.targetphot.catalog_plan`: its catalogs in desispec's
   order, and for each primary directory the healpix files of all its targets with
   finite RA/Dec) and its targets (TARGETID, RA, DEC);
2. **catalog tasks** (:func:`catalog_jobs`, :func:`read_catalog_task`): one per distinct
   file the wave's plans name, largest file first; each opens its file once, reads its
   TARGETID column, then only the rows of the TARGETIDs any of those tiles wants (the
   union) and the targetphot columns present, and stages them
   (``catalog-HASH.h5``, key: the file's path, size, mtime and the wanted set, so a rerun
   of the same wave reuses it);
3. **targetphot tasks** (:func:`specprod_db.load.tasks.assemble_targetphot`), one per tile:
   the tile's rows merged from the catalog stages by
   :func:`~specprod_db.extract.targetphot.assemble` — the same code
   ``targetphot_onetile`` runs on the files themselves: plan order, files read only while
   targets remain unfound, first occurrence wins — so the rows are those of desispec's
   ``gather_targetphot``.  A primary directory's files are those of the targets not found
   before, a subset of the planned ones; a catalog task that failed fails only the tiles
   whose assembly reaches that file (as the tile would have failed reading it).

The run counts, per wave and in total (``counts["catalogs"]``): ``files_opened`` (catalog
tasks that opened their file; reused stages do not), ``tile_reads`` (the files the tiles
would have opened one by one, ``files_read`` of their stats) and ``reads_saved`` (the
difference).
"""
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional

import h5py
import numpy as np

from specprod_db import stage
from specprod_db.errors import InputError
from specprod_db.extract import targetphot
from specprod_db.load.jobs import CatalogJob

#: A catalog stage holding no row (no wanted TARGETID in the file).
_EMPTY = np.zeros(0, dtype=[("TARGETID", "i8")])


@dataclass
class CatalogResult:
    """A catalog task's outcome: its stage file (the wanted rows) and their number."""
    path: str
    stage: stage.StageFile
    rows: int = 0
    reused: bool = False


def catalog_jobs(plans: Iterable[tuple[list[dict], np.ndarray]],
                 stage_dir: str) -> tuple[list[CatalogJob], int]:
    """One catalog task per distinct file of the tiles' plans.

    ``plans``: ``[(plan, want)]`` of the wave's tiles (``want``: the tile's TARGETIDs).
    Returns the jobs (:class:`~specprod_db.load.jobs.CatalogJob`, ``want``: the sorted
    union of the TARGETIDs of the tiles that may read the file) and how many (tile,
    file) pairs they cover.
    """
    wanted: dict[tuple[str, str], list[np.ndarray]] = {}
    pairs = 0
    for plan, want in plans:
        for fname, kind in targetphot.plan_files(plan):
            wanted.setdefault((fname, kind), []).append(want)
            pairs += 1
    jobs = [CatalogJob(fname, kind, np.unique(np.concatenate(ws)), stage_dir)
            for (fname, kind), ws in wanted.items()]
    return jobs, pairs


def job_size(job: CatalogJob) -> int:
    """The expected cost of a catalog task: its file's size (0 if it went away)."""
    try:
        return os.path.getsize(job.path)
    except OSError:
        return 0


def catalog_stage(stage_dir: str, path: str) -> stage.StageFile:
    """The stage file of catalog file ``path`` (named by a hash of the path)."""
    digest = hashlib.sha256(path.encode()).hexdigest()[:16]
    return stage.StageFile(os.path.join(stage_dir, f"catalog-{digest}.h5"))


def read_catalog_task(job: CatalogJob) -> CatalogResult:
    """Worker side of a catalog task: the wanted rows of one catalog file, staged.

    Errors are :class:`InputError` without a tile (the tiles that reach the file fail
    with it, :func:`stage_reader`)."""
    path, kind, want = job.path, job.kind, job.want
    try:
        st = os.stat(path)
    except OSError as err:
        raise InputError(f"cannot read targeting catalog {path}: {err.strerror}") from None
    key = hashlib.sha256(json.dumps(
        ["catalog", path, kind, st.st_size, st.st_mtime_ns,
         hashlib.sha256(np.ascontiguousarray(want, dtype="<i8").tobytes()).hexdigest()]
    ).encode()).hexdigest()
    out = catalog_stage(job.stage_dir, path)
    if out.is_complete(key):
        return CatalogResult(path, out, rows=out.info().get("rows", 0), reused=True)
    piece = targetphot.read_catalog(path, kind, want)
    rows = _EMPTY if piece is None else targetphot.as_model(piece)
    out.write({}, key, extra={"rows": rows}, info={"path": path, "rows": len(rows)})
    return CatalogResult(path, out, rows=len(rows))


def staged(job: CatalogJob, result: Any) -> dict[str, Any]:
    """What a tile's assembly needs to know of a catalog task: ``{"stage": path}``, or
    ``{"error": message, "internal": bool}`` for a task that failed."""
    if hasattr(result, "stage"):
        return {"stage": result.stage.path}
    return {"error": result.message, "internal": result.internal}


def stage_reader(catalogs: Mapping[str, Mapping[str, Any]],
                 label: str) -> Callable[[str, str, np.ndarray], Optional[np.ndarray]]:
    """``read(file, kind, want)`` for :func:`targetphot.assemble` from the wave's
    catalog stages (``catalogs``: file -> :func:`staged`): the staged rows of ``file``
    whose TARGETID is in ``want``, in file order, or None.  A file whose task failed
    fails the tile here, named by ``label``."""
    def read(fname: str, kind: str, want: np.ndarray) -> Optional[np.ndarray]:
        where = catalogs[fname]
        if "error" in where:
            message = f"{label}: {where['error']}"
            raise RuntimeError(message) if where.get("internal") else InputError(message)
        with h5py.File(where["stage"], "r") as f:
            rows = f["aux/rows"]
            hit = np.flatnonzero(np.isin(rows.fields("TARGETID")[()], want))
            if hit.size == 0:
                return None
            return rows[hit[0]: hit[-1] + 1][hit - hit[0]]
    return read


def read_in_process(plan: list[dict], want: np.ndarray,
                    stage_dir: str) -> dict[str, dict[str, Any]]:
    """The catalog stages of one tile, read here (a tile task run alone, not in a wave):
    file -> :func:`staged`."""
    jobs, _ = catalog_jobs([(plan, want)], stage_dir)
    out = {}
    for job in jobs:
        try:
            out[job.path] = staged(job, read_catalog_task(job))
        except InputError as err:
            out[job.path] = {"error": str(err), "internal": False}
    return out


def remove(results: Iterable[Any]) -> None:
    """Remove the stage files of a wave's catalog tasks (after its tiles assembled)."""
    for result in results:
        if hasattr(result, "stage"):
            result.stage.remove()
