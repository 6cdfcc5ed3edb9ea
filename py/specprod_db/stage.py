"""HDF5 stage files: what one task will load, in database column order and dtypes.

One file per task (``tile-TILEID.h5``, ``brick-BRICKNAME.h5``, ``catalog-HASH.h5``) in
the run's stage directory; one dataset per table, of exactly
``schema.table(name).dtype``.  A file is written under a temporary, PID-tagged name and
renamed when complete, so a file under its final name is always whole.  Its ``key``
attribute fingerprints the task's inputs (the plan line and input fingerprints): a rerun
reuses a stage file only when the key matches.

The stage directory also holds ``manifest.json``: the run's plan and which stage files
belong to it, and ``owner.json``: the database and schema it belongs to (:func:`claim`,
atomic).  A load cleans only a directory it claimed, and there only the names this
project writes (:func:`ours`).  The default directory's path segments are made from the
database and schema names by :func:`path_segment`, so no name leaves the stage base.
"""
import errno
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

import h5py
import numpy as np

from specprod_db import faults
from specprod_db.errors import StageError, StageWriteFailed
from specprod_db.schema import table as schema_table

FORMAT_VERSION = 1


def check_directory(path: str, need_bytes: int = 0) -> int:
    """Create ``path`` if needed; fail before anything is written if unusable.  Returns
    the free bytes there."""
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
OWNER_FILE_RE = re.escape(OWNER_FILE)

#: Characters kept as they are in a path segment made from a name; any other byte of the
#: name's UTF-8 is written ``%XX`` (``%`` itself included), so no name can become ``.``,
#: ``..``, a ``/`` or a hidden file, and two names never share a segment.
_SEGMENT_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def path_segment(name: str) -> str:
    """``name`` (a schema or database name: PostgreSQL allows almost anything when
    quoted) as one safe path segment: letters, digits, ``_`` and ``-`` as they are (so
    ``daily``, ``loa``, ``test_ab12cd34`` are unchanged), every other byte of its UTF-8
    as ``%XX``.  ``../../x`` becomes ``%2E%2E%2F%2E%2E%2Fx``.  An empty name is refused
    (:class:`StageError`)."""
    if not name:
        raise StageError("an empty name cannot name a stage directory")
    return "".join(c if c in _SEGMENT_SAFE else "".join(f"%{b:02X}" for b in c.encode())
                   for c in name)


def default_directory(database: str, schema_name: str) -> str:
    """``BASE/DATABASE/SCHEMA``: BASE is ``$SPECPROD_DB_STAGE_DIR``, else
    ``$SCRATCH/specprod-db-stage``, else ``./specprod-db-stage``; DATABASE and SCHEMA
    are :func:`path_segment` of the names, so the directory is always inside BASE."""
    base = (os.environ.get("SPECPROD_DB_STAGE_DIR")
            or (os.path.join(os.environ["SCRATCH"], "specprod-db-stage")
                if os.environ.get("SCRATCH") else None)
            or os.path.abspath("specprod-db-stage"))
    return os.path.join(base, path_segment(database), path_segment(schema_name))


#: The names this project writes in a stage directory (:func:`ours`): stage files,
#: their temporaries (``NAME.tmp-PID``), the manifest, the claim, the write probe, and
#: the ``vac`` subdirectory of VAC loads.
_STAGED = r"(?:tile-\d+|brick-[\w+-]+|catalog-[0-9a-f]+|healpix-[\w-]+|\d{5,})\.h5"
_TMP = r"\.tmp-\d+(?:-\d+)?"
_TEMPORARY = re.compile(rf"(?:{_STAGED}|\.manifest\.json|owner\.json){_TMP}|\.probe-\d+")
_OURS = re.compile(rf"{_STAGED}|manifest\.json|{OWNER_FILE_RE}|vac|{_TEMPORARY.pattern}")


def ours(name: str) -> bool:
    """True when ``name`` (a basename) is one this project writes in a stage directory."""
    return _OURS.fullmatch(name) is not None


#: How long a claim being written by another load may take to appear whole (it is
#: written aside and hard-linked into place, so only the fallback without hard links
#: can be seen empty).
_CLAIM_WAIT = 2.0


def claim(stage_dir: str, database: str, schema_name: str) -> None:
    """Record that ``stage_dir`` belongs to ``database`` and ``schema_name``, or refuse
    it (:class:`StageError`) when it belongs to another: two loads never share or clean
    each other's stage files.

    Claiming is atomic: ``owner.json`` is written aside, then hard-linked to its name
    (``O_EXCL`` creation where the file system has no hard links), which fails if it
    exists, so of two loads claiming one fresh directory at once exactly one wins; the
    other reads the winner's claim and is refused unless it is the same database and
    schema.  A directory without a claim is claimed only if everything in it is a name
    this project writes (:func:`ours`: a stage directory of a version before claims):
    never a directory holding other files.  An ``owner.json`` that is not a JSON object
    naming a database and a schema is an unreadable claim (refused).
    """
    path = os.path.join(stage_dir, OWNER_FILE)
    mine = {"database": database, "schema": schema_name}
    owner = _read_claim(stage_dir, path)
    if owner is None:
        try:
            foreign = sorted(n for n in os.listdir(stage_dir) if not ours(n))
        except OSError as err:
            raise StageError(f"stage directory {stage_dir} cannot be listed: "
                             f"{err.strerror}") from None
        if foreign:
            raise StageError(f"stage directory {stage_dir} holds files specprod-db did not "
                             f"write ({', '.join(foreign[:3])}"
                             f"{' ...' if len(foreign) > 3 else ''}) and no {OWNER_FILE}; "
                             f"give this load a new or empty --stage-dir")
        if _create_claim(stage_dir, path, mine):
            return
        owner = _read_claim(stage_dir, path)  # another load claimed it first
        if owner is None:
            raise StageError(f"stage directory {stage_dir}: {OWNER_FILE} vanished while "
                             f"claiming it; retry")
    if owner != mine:
        raise StageError(f"stage directory {stage_dir} belongs to schema "
                         f"{owner['schema']} of database {owner['database']}, not "
                         f"to schema {schema_name} of database {database}; give this load "
                         f"its own --stage-dir")


def _read_claim(stage_dir: str, path: str) -> dict[str, str] | None:
    """The claim in ``path`` (a dict with ``database`` and ``schema``), None when there is
    none; :class:`StageError` when it cannot be read or is not such an object."""
    end = time.monotonic() + _CLAIM_WAIT
    while True:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise StageError(f"stage directory {stage_dir}: unreadable {OWNER_FILE}: "
                             f"{err.strerror}") from None
        if data or time.monotonic() > end:
            break
        time.sleep(0.02)  # being written by a load without hard links (O_EXCL fallback)
    try:
        owner = json.loads(data)
    except ValueError as err:
        raise StageError(f"stage directory {stage_dir}: unreadable {OWNER_FILE}: {err}") \
            from None
    if not (isinstance(owner, dict) and isinstance(owner.get("database"), str)
            and isinstance(owner.get("schema"), str)):
        raise StageError(f"stage directory {stage_dir}: unreadable {OWNER_FILE}: not an "
                         f"object naming a database and a schema ({data[:80]!r}); remove "
                         f"it if the directory is this load's, else give this load its own "
                         f"--stage-dir")
    return {"database": owner["database"], "schema": owner["schema"]}


def _create_claim(stage_dir: str, path: str, mine: dict[str, str]) -> bool:
    """Create ``path`` holding ``mine`` unless it exists; True when this call created it."""
    data = json.dumps(mine).encode()
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
            return True
        except (FileExistsError, FileNotFoundError):  # claimed (and cleaned) by another
            return False
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV,
                                 errno.EMLINK, errno.ENOSYS):
                raise
        try:  # no hard links here: exclusive creation (readers wait while it is empty)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    except OSError as err:
        raise StageError(f"stage directory {stage_dir}: cannot write {OWNER_FILE}: "
                         f"{err.strerror}") from None
    finally:
        _remove_quietly(tmp)


def tile_file(stage_dir: str, tileid: int) -> "StageFile":
    """The stage file of a tile task."""
    return StageFile(os.path.join(stage_dir, f"tile-{int(tileid)}.h5"))


def brick_file(stage_dir: str, group: str) -> "StageFile":
    """The stage file of a brick task (``group``: its brick name)."""
    return StageFile(os.path.join(stage_dir, f"brick-{group}.h5"))


#: The memory type of :func:`read_rows` reading only the TARGETIDs of a table.
TARGETID = np.dtype([("targetid", "<i8")])

_H5_TYPES: dict[np.dtype, Any] = {}


def _h5type(dtype: np.dtype) -> Any:
    """The HDF5 type of ``dtype``, built once per dtype (h5py rebuilds it at every
    high-level call: for photometry's ~150-field compound, more than the I/O)."""
    h5type = _H5_TYPES.get(dtype)
    if h5type is None:
        h5type = _H5_TYPES[dtype] = h5py.h5t.py_create(dtype)
    return h5type


def write_rows(f: h5py.File, name: str, rows: np.ndarray) -> None:
    """Dataset ``name`` of ``f`` holding ``rows`` (a 1-d structured array), written
    through h5py's low-level calls with the type of ``_h5type``; read back by
    :func:`read_rows` (or any HDF5 reader: the same dataset ``create_dataset`` makes)."""
    h5type = _h5type(rows.dtype)
    dataset = h5py.h5d.create(f.id, name.encode(), h5type,
                              h5py.h5s.create_simple((len(rows),)))
    if len(rows):
        dataset.write(h5py.h5s.ALL, h5py.h5s.ALL, np.ascontiguousarray(rows), mtype=h5type)


def read_rows(dataset: Any, dtype: np.dtype) -> np.ndarray:
    """A staged table (an h5py dataset) as a structured array of ``dtype``: the table's
    dtype in :mod:`specprod_db.schema` (what :meth:`StageFile.write` wrote), or a subset
    of its fields (HDF5 converts compound members by name).  Read through h5py's
    low-level call with the memory type built once per dtype: ``dataset[()]`` rebuilds
    the numpy dtype of a compound type of ~150 fields at every read, which cost more
    than the read itself."""
    h5type = _h5type(dtype)
    out = np.empty(dataset.shape, dtype=dtype)
    if out.size:
        dataset.id.read(h5py.h5s.ALL, h5py.h5s.ALL, out, h5type)
    return out


class StageFile:
    """One task's stage file: its tables (schema dtypes), auxiliary arrays under
    ``aux/`` (e.g. the brick input), a small JSON ``info`` and the task ``key``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"StageFile({self.path!r})"

    def __reduce__(self) -> tuple[type, tuple[str]]:  # sent between ranks as its path only
        return (StageFile, (self.path,))

    def write(self, tables: Mapping[str, np.ndarray], key: str,
              extra: Mapping[str, np.ndarray] | None = None,
              info: Mapping[str, Any] | None = None) -> "StageFile":
        """Write ``tables`` (name -> structured array of that table's dtype), ``extra``
        arrays (``aux/NAME``) and ``info``; complete only once renamed into place."""
        tmp = f"{self.path}.tmp-{os.getpid()}"
        try:
            # HDF5 writes through a Python file: a full disk is then an OSError here,
            # whereas HDF5's own file driver can crash the process (SIGSEGV) closing it
            with open(tmp, "wb") as raw, h5py.File(raw, "w") as f:
                f.attrs["key"] = key
                f.attrs["format"] = FORMAT_VERSION
                f.attrs["info"] = json.dumps(info or {}, sort_keys=True, default=_jsonable)
                for name, rows in tables.items():
                    if rows.dtype != schema_table(name).dtype:
                        raise TypeError(f"stage {name}: dtype differs from the schema")
                    write_rows(f, name, rows)
                for name, arr in (extra or {}).items():
                    f.create_dataset(f"aux/{name}", data=arr)
                faults.hit(f"stage-{os.path.basename(self.path)}")  # tests: enospc:...
                f.attrs["complete"] = True
            os.replace(tmp, self.path)
        except OSError as err:  # the task's tiles fail with this line (not a bug)
            _remove_quietly(tmp)
            raise StageWriteFailed(f"cannot write stage file {self.path}: "
                                   f"{_os_reason(err)}") from None
        except BaseException:
            _remove_quietly(tmp)
            raise
        return self

    def is_complete(self, key: str) -> bool:
        """True when the file is whole, of this format, and made for ``key``."""
        if not os.path.exists(self.path):
            return False
        try:
            with h5py.File(self.path, "r") as f:
                return bool(f.attrs.get("complete")) and f.attrs.get("key") == key \
                    and f.attrs.get("format") == FORMAT_VERSION
        except (OSError, KeyError):
            return False

    def tables(self, names: Collection[str] | None = None) -> dict[str, np.ndarray]:
        """Table name -> structured array (every table, or those of ``names``)."""
        with h5py.File(self.path, "r") as f:
            return {name: read_rows(f[name], schema_table(name).dtype) for name in f
                    if name != "aux" and (names is None or name in names)}

    def brick_input(self) -> np.ndarray | None:
        """The brick-task input staged with a tile (None when there is none)."""
        return self.aux("brick_input")

    def aux(self, name: str) -> np.ndarray | None:
        """Auxiliary array ``aux/NAME`` (None when there is none)."""
        with h5py.File(self.path, "r") as f:
            return f[f"aux/{name}"][()] if f"aux/{name}" in f else None

    def key(self) -> str | None:
        """The task key the file was written for."""
        with h5py.File(self.path, "r") as f:
            return f.attrs.get("key")

    def targetids(self) -> np.ndarray:
        """Sorted unique TARGETIDs referenced by the file's tables."""
        with h5py.File(self.path, "r") as f:
            parts = [read_rows(f[name], TARGETID)["targetid"] for name in f
                     if name != "aux" and "targetid" in schema_table(name).names]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def info(self) -> dict[str, Any]:
        """The file's ``info`` (JSON)."""
        with h5py.File(self.path, "r") as f:
            return json.loads(f.attrs.get("info", "{}"))

    def remove(self) -> None:
        """Remove the file (nothing when it is not there)."""
        _remove_quietly(self.path)


def _os_reason(err: OSError) -> str:
    """An OSError's reason in one line; a full disk or quota says what to do."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"{os.strerror(err.errno)} (the stage directory's disk or quota is full: "
                "free space there, or give --stage-dir on a larger disk)")
    return " ".join((err.strerror or str(err)).split())


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def write_manifest(stage_dir: str, manifest: Mapping[str, Any]) -> None:
    """Write ``manifest.json`` (atomically: written aside, then renamed)."""
    tmp = os.path.join(stage_dir, f".manifest.json.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True, default=_jsonable)
    os.replace(tmp, os.path.join(stage_dir, "manifest.json"))


def _jsonable(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value))


def cleanup_temporaries(stage_dir: str) -> int:
    """Remove temporary files of crashed writers (never complete stage files): only the
    temporaries this project names (``tile-N.h5.tmp-PID``, ``.probe-PID`` ...), in a
    directory it claimed (:func:`claim`); returns how many."""
    return _remove(stage_dir, lambda n: _TEMPORARY.fullmatch(n) is not None)


def remove_stale_tiles(stage_dir: str, tileids: Iterable[int]) -> int:
    """Remove tile stage files of tiles this run does not extract (left by a crashed run
    for tiles since committed or no longer planned); returns how many."""
    keep = {os.path.basename(tile_file(stage_dir, t).path) for t in tileids}
    return _remove(stage_dir, lambda n: n.startswith("tile-") and n.endswith(".h5")
                   and n not in keep)


def remove_bricks(stage_dir: str) -> int:
    """Remove every brick stage file (after a run where no tile failed)."""
    return _remove(stage_dir, lambda n: n.startswith("brick-") and n.endswith(".h5"))


def remove_catalogs(stage_dir: str) -> int:
    """Remove every catalog stage file (:mod:`specprod_db.load.catalogs`; at the end of a
    run: a rerun's waves want other rows)."""
    return _remove(stage_dir, lambda n: n.startswith("catalog-") and n.endswith(".h5"))


def _remove(stage_dir: str, match: Callable[[str], bool]) -> int:
    """Remove the regular files of ``stage_dir`` whose names ``match`` (never a
    directory, nor what a symlink points to: the link itself)."""
    removed = 0
    for entry in os.scandir(stage_dir):
        if match(entry.name) and (entry.is_symlink() or entry.is_file(follow_symlinks=False)):
            try:
                os.remove(entry.path)
                removed += 1
            except FileNotFoundError:
                pass
    return removed
