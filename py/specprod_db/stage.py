"""HDF5 stage files: what one task will load, in database column order and dtypes.

One file per task (``tile-TILEID.h5``, ``brick-BRICKNAME.h5``) in the run's stage
directory; one dataset per table, of exactly ``schema.table(name).dtype``.  A file is
written under a temporary, PID-tagged name and renamed when complete, so a file under its
final name is always whole.  Its ``key`` attribute fingerprints the task's inputs (the
plan line and input fingerprints): a rerun reuses a stage file only when the key matches.

The stage directory also holds ``manifest.json``: the run's plan and which stage files
belong to it.
"""
import json
import os
import shutil

import h5py
import numpy as np

from .errors import StageError
from .schema import table as schema_table

FORMAT_VERSION = 1


def check_directory(path, need_bytes=0):
    """Create ``path`` if needed; fail before anything is written if unusable."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".probe-{os.getpid()}")
        with open(probe, "wb") as f:
            f.write(b"x" * 4096)
            f.flush()
            os.fsync(f.fileno())
        os.remove(probe)
    except OSError as err:
        raise StageError(f"stage directory {path} is not writable: {err.strerror}") from None
    free = shutil.disk_usage(path).free
    if need_bytes and free < need_bytes:
        raise StageError(f"stage directory {path} has {free / 2**20:.0f} MiB free; "
                         f"this run needs about {need_bytes / 2**20:.0f} MiB")
    return free


def tile_file(stage_dir, tileid):
    return os.path.join(stage_dir, f"tile-{int(tileid)}.h5")


def brick_file(stage_dir, brickname):
    return os.path.join(stage_dir, f"brick-{brickname}.h5")


def write(path, tables, key, extra=None, info=None):
    """Write ``tables`` (name -> structured array, or name -> array for ``extra``).

    Arrays under schema table names must have that table's dtype exactly.  ``extra``
    holds auxiliary arrays (e.g. the brick inputs) stored under ``aux/``; ``info`` is a
    small JSON-able dict kept as an attribute (read back under ``'info'``).
    """
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["key"] = key
            f.attrs["format"] = FORMAT_VERSION
            if info:
                f.attrs["info"] = json.dumps(info, sort_keys=True, default=_jsonable)
            for name, rows in tables.items():
                expected = schema_table(name).dtype
                if rows.dtype != expected:
                    raise TypeError(f"stage {name}: dtype differs from the schema")
                f.create_dataset(name, data=rows)
            for name, arr in (extra or {}).items():
                f.create_dataset(f"aux/{name}", data=arr)
            f.attrs["complete"] = True
        os.replace(tmp, path)
    except OSError as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise StageError(f"cannot write stage file {path}: {err}") from None
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def is_complete(path, key):
    """True when ``path`` is a whole stage file made for ``key``."""
    if not os.path.exists(path):
        return False
    try:
        with h5py.File(path, "r") as f:
            return bool(f.attrs.get("complete")) and f.attrs.get("key") == key \
                and f.attrs.get("format") == FORMAT_VERSION
    except (OSError, KeyError):
        return False


def read(path, names=None):
    """Tables of a stage file: name -> structured array (``aux/...`` under 'aux',
    the ``info`` attribute under 'info')."""
    out = {}
    with h5py.File(path, "r") as f:
        if "info" in f.attrs:
            out["info"] = json.loads(f.attrs["info"])
        for name in f:
            if name == "aux":
                out["aux"] = {k: f["aux"][k][()] for k in f["aux"]}
            elif names is None or name in names:
                out[name] = f[name][()]
    return out


def write_manifest(stage_dir, manifest):
    tmp = os.path.join(stage_dir, f".manifest.json.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True, default=_jsonable)
    os.replace(tmp, os.path.join(stage_dir, "manifest.json"))


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value))


def cleanup_temporaries(stage_dir):
    """Remove temporary files of crashed writers (never complete stage files)."""
    removed = 0
    for name in os.listdir(stage_dir):
        if ".tmp-" in name:
            os.remove(os.path.join(stage_dir, name))
            removed += 1
    return removed


def remove_stale_tiles(stage_dir, tileids):
    """Remove tile stage files of tiles this run does not extract (left by a crashed run
    for tiles since committed or no longer planned); returns how many."""
    keep = {os.path.basename(tile_file(stage_dir, t)) for t in tileids}
    return _remove(stage_dir, lambda n: n.startswith("tile-") and n.endswith(".h5")
                   and n not in keep)


def remove_bricks(stage_dir):
    """Remove every brick stage file (after a run where no tile failed)."""
    return _remove(stage_dir, lambda n: n.startswith("brick-") and n.endswith(".h5"))


def _remove(stage_dir, match):
    removed = 0
    for name in os.listdir(stage_dir):
        if match(name):
            try:
                os.remove(os.path.join(stage_dir, name))
                removed += 1
            except FileNotFoundError:
                pass
    return removed
