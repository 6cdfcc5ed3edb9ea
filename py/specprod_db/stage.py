"""HDF5 stage files: what one task will load, in database column order and dtypes.

One file per task (``tile-TILEID.h5``, ``brick-BRICKNAME.h5``, ``catalog-HASH.h5``) in
the run's stage directory; one dataset per table, of exactly
``schema.table(name).dtype``.  A file is written under a temporary, PID-tagged name and
renamed when complete, so a file under its final name is always whole.  Its ``key``
attribute fingerprints the task's inputs (the plan line and input fingerprints): a rerun
reuses a stage file only when the key matches.

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


#: The file recording which database and schema a stage directory belongs to.
OWNER_FILE = "owner.json"


def default_directory(database, schema_name):
    """``BASE/DATABASE/SCHEMA``: BASE is ``$SPECPROD_DB_STAGE_DIR``, else
    ``$SCRATCH/specprod-db-stage``, else ``./specprod-db-stage``."""
    base = (os.environ.get("SPECPROD_DB_STAGE_DIR")
            or (os.path.join(os.environ["SCRATCH"], "specprod-db-stage")
                if os.environ.get("SCRATCH") else None)
            or os.path.abspath("specprod-db-stage"))
    return os.path.join(base, database, schema_name)


def claim(stage_dir, database, schema_name):
    """Record that ``stage_dir`` belongs to ``database`` and ``schema_name``, or refuse
    it (:class:`StageError`) when it belongs to another: two loads never share or clean
    each other's stage files."""
    path = os.path.join(stage_dir, OWNER_FILE)
    mine = {"database": database, "schema": schema_name}
    try:
        with open(path) as f:
            owner = json.load(f)
    except FileNotFoundError:
        owner = None
    except (OSError, ValueError) as err:
        raise StageError(f"stage directory {stage_dir}: unreadable {OWNER_FILE}: {err}") \
            from None
    if owner is None:
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(mine, f)
        os.replace(tmp, path)
    elif owner != mine:
        raise StageError(f"stage directory {stage_dir} belongs to schema "
                         f"{owner.get('schema')} of database {owner.get('database')}, not "
                         f"to schema {schema_name} of database {database}; give this load "
                         f"its own --stage-dir")


def tile_file(stage_dir, tileid):
    return StageFile(os.path.join(stage_dir, f"tile-{int(tileid)}.h5"))


def brick_file(stage_dir, group):
    return StageFile(os.path.join(stage_dir, f"brick-{group}.h5"))


class StageFile:
    """One task's stage file: its tables (schema dtypes), auxiliary arrays under
    ``aux/`` (e.g. the brick input), a small JSON ``info`` and the task ``key``."""

    def __init__(self, path):
        self.path = path

    def __repr__(self):
        return f"StageFile({self.path!r})"

    def __reduce__(self):  # sent between ranks as its path only
        return (StageFile, (self.path,))

    def write(self, tables, key, extra=None, info=None):
        """Write ``tables`` (name -> structured array of that table's dtype), ``extra``
        arrays (``aux/NAME``) and ``info``; complete only once renamed into place."""
        tmp = f"{self.path}.tmp-{os.getpid()}"
        try:
            with h5py.File(tmp, "w") as f:
                f.attrs["key"] = key
                f.attrs["format"] = FORMAT_VERSION
                f.attrs["info"] = json.dumps(info or {}, sort_keys=True, default=_jsonable)
                for name, rows in tables.items():
                    if rows.dtype != schema_table(name).dtype:
                        raise TypeError(f"stage {name}: dtype differs from the schema")
                    f.create_dataset(name, data=rows)
                for name, arr in (extra or {}).items():
                    f.create_dataset(f"aux/{name}", data=arr)
                f.attrs["complete"] = True
            os.replace(tmp, self.path)
        except OSError as err:
            _remove_quietly(tmp)
            raise StageError(f"cannot write stage file {self.path}: {err}") from None
        except BaseException:
            _remove_quietly(tmp)
            raise
        return self

    def is_complete(self, key):
        """True when the file is whole, of this format, and made for ``key``."""
        if not os.path.exists(self.path):
            return False
        try:
            with h5py.File(self.path, "r") as f:
                return bool(f.attrs.get("complete")) and f.attrs.get("key") == key \
                    and f.attrs.get("format") == FORMAT_VERSION
        except (OSError, KeyError):
            return False

    def tables(self, names=None):
        """Table name -> structured array (every table, or those of ``names``)."""
        with h5py.File(self.path, "r") as f:
            return {name: f[name][()] for name in f
                    if name != "aux" and (names is None or name in names)}

    def brick_input(self):
        """The brick-task input staged with a tile (None when there is none)."""
        return self.aux("brick_input")

    def aux(self, name):
        """Auxiliary array ``aux/NAME`` (None when there is none)."""
        with h5py.File(self.path, "r") as f:
            return f[f"aux/{name}"][()] if f"aux/{name}" in f else None

    def key(self):
        """The task key the file was written for."""
        with h5py.File(self.path, "r") as f:
            return f.attrs.get("key")

    def targetids(self):
        """Sorted unique TARGETIDs referenced by the file's tables."""
        with h5py.File(self.path, "r") as f:
            parts = [f[name]["targetid"] for name in f
                     if name != "aux" and "targetid" in f[name].dtype.names]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def info(self):
        with h5py.File(self.path, "r") as f:
            return json.loads(f.attrs.get("info", "{}"))

    def remove(self):
        _remove_quietly(self.path)


def _remove_quietly(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


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
    keep = {os.path.basename(tile_file(stage_dir, t).path) for t in tileids}
    return _remove(stage_dir, lambda n: n.startswith("tile-") and n.endswith(".h5")
                   and n not in keep)


def remove_bricks(stage_dir):
    """Remove every brick stage file (after a run where no tile failed)."""
    return _remove(stage_dir, lambda n: n.startswith("brick-") and n.endswith(".h5"))


def remove_catalogs(stage_dir):
    """Remove every catalog stage file (:mod:`specprod_db.catalogs`; at the end of a
    run: a rerun's waves want other rows)."""
    return _remove(stage_dir, lambda n: n.startswith("catalog-") and n.endswith(".h5"))


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
