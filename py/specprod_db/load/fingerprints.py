"""What a tile was loaded from: fingerprints of its input files and exposure rows.

Design decision 2: a tile is UPDATEd when its inputs changed — its qualifying exposure
rows, the cumulative redrock files of its LASTNIGHT, its fiberassign file.  A file's
fingerprint is its name, size, mtime and SHA-256; a :class:`Fingerprint` is that of a
set of files (one fiberassign file, or a tile's ten petal files, a missing one included
as such).  They are stored in ``tile_state`` as JSON text (:meth:`Fingerprint.to_text`).

Who computes what:

* the **planner** (rank 0) never reads file contents: it compares a :func:`stat` of the
  files (names, sizes, mtimes) with the recorded fingerprint (:func:`planned`).  A file
  that ``stat`` cannot see (a symlink loop, a component that is not a directory, an
  I/O error, permission denied: any ``OSError`` but "no such file") is stamped
  *unreadable* (:attr:`FileStamp.error`) instead of stopping the planner: its tile is
  planned as changed, and the worker that needs the file fails that tile alone;
* the **worker** that reads a tile's files hashes them (:func:`hashed`) right before
  reading them (an unreadable file raises :class:`InputError` naming the tile and the
  path), and checks afterwards that they did not move meanwhile
  (:func:`check_unchanged`); that fingerprint — of what was actually read — is the one
  recorded.  A file touched with identical bytes is therefore not a change: the worker
  finds the same content and the tile's state is only refreshed;
* the exposure rows are fingerprinted by :func:`exposures_digest` (planner, to detect a
  change; worker, of the rows it loads).
"""
import hashlib
import json
import os
from dataclasses import dataclass
from stat import S_ISDIR, S_ISREG
from typing import Any, Optional, Sequence, Tuple, cast

import numpy as np

from specprod_db.errors import InputError

_BLOCK = 1 << 22


@dataclass(frozen=True)
class FileStamp:
    """One file: ``name`` (its basename, or a label when it is missing), ``size`` and
    ``mtime_ns`` (None when missing), ``sha256`` (None when not hashed); ``error``
    (stat-only stamps) the reason the file is there but cannot be stat-ed, else None.
    A worker never records one with an ``error``: a tile whose file is unreadable
    fails."""
    name: str
    size: Optional[int] = None
    mtime_ns: Optional[int] = None
    sha256: Optional[str] = None
    error: Optional[str] = None

    @property
    def missing(self) -> bool:
        return self.size is None and self.error is None


@dataclass(frozen=True)
class Fingerprint:
    """The fingerprint of an ordered set of files."""
    files: tuple[FileStamp, ...]

    def stat_key(self) -> tuple[tuple[Any, ...], ...]:
        """What ``stat`` tells: names, sizes and mtimes (and, for a file that cannot be
        stat-ed, that it is unreadable: never equal to a recorded key)."""
        return tuple((f.name, f.size, f.mtime_ns) if f.error is None
                     else (f.name, "unreadable", f.error) for f in self.files)

    @property
    def unreadable(self) -> list[FileStamp]:
        """The stamps of files that are there but could not be stat-ed."""
        return [f for f in self.files if f.error is not None]

    def content_key(self) -> tuple[tuple[str, Optional[str]], ...]:
        """What the bytes tell: names and SHA-256 (None where not hashed)."""
        return tuple((f.name, "missing" if f.missing else f.sha256) for f in self.files)

    @property
    def is_hashed(self) -> bool:
        return all(f.missing or f.sha256 for f in self.files)

    def same_content(self, other: Optional["Fingerprint"]) -> bool:
        """True when both are hashed and every file has the same name and bytes."""
        return (other is not None and self.is_hashed and other.is_hashed
                and self.content_key() == other.content_key())

    def to_text(self) -> str:
        """The JSON text recorded in ``tile_state``: ``[name, size, mtime_ns, sha256]``
        per file (``, error`` after them for an unreadable stamp, which only a plan
        holds: such a tile fails, and a failure records no fingerprint)."""
        return json.dumps([[f.name, f.size, f.mtime_ns, f.sha256]
                           + ([f.error] if f.error is not None else [])
                           for f in self.files], separators=(",", ":"))

    @classmethod
    def from_text(cls, text: Optional[str]) -> Optional["Fingerprint"]:
        """The fingerprint stored as ``text``; None for None, '' or an unreadable value
        (e.g. one recorded by an earlier format: the tile is then seen as changed)."""
        if not text:
            return None
        try:
            return cls(tuple(FileStamp(*item) for item in json.loads(text)))
        except (ValueError, TypeError):
            return None


def _reason(err: OSError) -> str:
    return err.strerror or type(err).__name__


def _unreadable(path: Optional[str], err: OSError, label: Optional[str]) -> InputError:
    prefix = f"{label}: " if label else ""
    return InputError(f"{prefix}{path}: cannot be read: {_reason(err)}")


def _stamp(name: str, path: Optional[str], content: bool,
           label: Optional[str] = None) -> FileStamp:
    try:
        st = os.stat(path) if path else None
    except FileNotFoundError:
        st = None
    except OSError as err:  # there, but not usable: a loop, ENOTDIR, EACCES, EIO ...
        if content:
            raise _unreadable(path, err, label) from None
        return FileStamp(name, error=_reason(err))
    if st is None:
        return FileStamp(name)
    if not S_ISREG(st.st_mode):  # a directory (or a device, a FIFO) in a file's place
        what = "is a directory" if S_ISDIR(st.st_mode) else "not a regular file"
        if content:
            raise InputError(f"{label + ': ' if label else ''}{path}: cannot be read: "
                             f"{what}")
        return FileStamp(name, error=what)
    digest = None
    if content:
        h = hashlib.sha256()
        try:
            with open(cast(str, path), "rb") as f:  # stat-ed: a path
                for block in iter(lambda: f.read(_BLOCK), b""):
                    h.update(block)
        except OSError as err:
            raise _unreadable(path, err, label) from None
        digest = h.hexdigest()
    return FileStamp(name, st.st_size, st.st_mtime_ns, digest)


Files = Sequence[Tuple[str, Optional[str]]]


def stat(files: Files) -> Fingerprint:
    """The fingerprint without contents of ``files``: ``[(name, path or None)]``.  Never
    raises for a file: one that cannot be stat-ed (any ``OSError`` but "no such file") is
    stamped unreadable (:attr:`FileStamp.error`), one that is absent missing."""
    return Fingerprint(tuple(_stamp(n, p, False) for n, p in files))


def hashed(files: Files, label: Optional[str] = None) -> Fingerprint:
    """The full fingerprint (contents hashed) of ``files``: ``[(name, path or None)]``.
    A file that is there but cannot be stat-ed or read (a directory, a symlink loop,
    EACCES, EIO ...) raises :class:`InputError` "``label``: PATH: cannot be read:
    REASON" (``label`` e.g. ``"tile 1000"``)."""
    return Fingerprint(tuple(_stamp(n, p, True, label) for n, p in files))


def planned(recorded_text: Optional[str], current: Fingerprint) -> str:
    """The planner's value for a file set: the recorded text when ``stat`` shows the same
    files (names, sizes, mtimes), else the current stat-only fingerprint's text (which
    differs from anything recorded, so the tile is planned as changed)."""
    recorded = Fingerprint.from_text(recorded_text)
    if recorded is not None and recorded.stat_key() == current.stat_key():
        return cast(str, recorded_text)  # a fingerprint was read from it
    return current.to_text()


def check_unchanged(before: Fingerprint, files: Files, tileid: int) -> None:
    """:class:`InputError` when a file moved while the worker read it (hashed as
    ``before``): what was loaded would not be what is recorded."""
    now = stat(files)
    for old, new in zip(before.files, now.files):
        if (old.name, old.size, old.mtime_ns) != (new.name, new.size, new.mtime_ns):
            path = dict(files).get(new.name) or new.name
            raise InputError(f"tile {tileid}: {path} changed while it was being read; "
                             f"the next run loads it")


def exposures_digest(exposures: np.ndarray, frames: np.ndarray, tileid: int) -> str:
    """SHA-256 of the qualifying exposure rows of a tile (EFFTIME_SPEC > 0) and their
    frames, in EXPID (then CAMERA) order."""
    sel = (exposures["TILEID"] == tileid) & (exposures["EFFTIME_SPEC"] > 0)
    e = np.sort(exposures[sel], order="EXPID")
    f = frames[np.isin(frames["EXPID"], e["EXPID"])]
    f = f[np.lexsort((f["CAMERA"], f["EXPID"]))]
    return hashlib.sha256(e.tobytes() + f.tobytes()).hexdigest()
