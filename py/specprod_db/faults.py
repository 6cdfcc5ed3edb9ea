"""Fault injection for the crash and failure tests: one environment variable, read here.

``SPECPROD_DB_FAULT`` holds comma-separated ``KIND:WHERE[@RANK]`` items; nothing happens
when it is unset (production runs never set it; the cost is one lookup per call).
The pipeline calls :func:`hit` at named points; ``WHERE`` is a point name, or a TILEID
for the per-tile points ``extract`` (a worker, after reading the tile's inputs, before
its stage file is complete), ``copy`` (the writer, the tile's rows copied, its
transaction still open) and ``commit`` (the writer, right after the tile's transaction
committed, before the next tile):

``extract:TILEID``
    the worker extracting that tile kills itself (SIGKILL) after reading the tile's
    inputs, before its stage file is complete (a leftover ``.tmp-PID`` file is written
    first, as a crashed writer of HDF5 would leave one);
``copy:TILEID``
    the writer kills itself (SIGKILL) at the ``copy`` point of that tile;
``kill:commit-TILEID``
    the writer kills itself right after that tile committed (between tiles);
``kill:builds``, ``kill:built-NAME``
    the root of a bulk load kills itself at the end of the load, before its first
    build, or after a step of build ``NAME`` (:mod:`specprod_db.db.builds`: a key, an
    index, ``cluster_TABLE``, ``analyze_TABLE``; a foreign key after its NOT VALID add
    and after its validation);
``pause:TILEID``
    the writer, at the ``copy`` point of the tile, creates
    ``$SPECPROD_DB_FAULT_DIR/paused-TILEID`` and waits (at most 300 s) until
    ``$SPECPROD_DB_FAULT_DIR/resume-TILEID`` exists; tests use it to restart the
    database or start a second load while a load is in flight;
``pause:POINT``
    the same at a named point (e.g. ``pause:plan``: files ``paused-plan``/``resume-plan``);
``enospc:stage-FILE[@RANK]``
    writing the stage file ``FILE`` (e.g. ``tile-1000.h5``, ``bricks-0.h5``) fails as a
    full disk does: :class:`OSError` ``ENOSPC`` while its temporary file is half written;
``raise:POINT[@RANK]``
    a plain :class:`RuntimeError` (a stand-in for a bug) is raised at ``POINT``, on
    ``RANK`` only when given.  Points: ``plan`` (rank 0, state read, planning),
    ``bricks`` (rank 0, planning brick tasks), ``write`` (rank 0, after the first tile
    committed), ``finalize`` (rank 0), ``serve`` (a worker between two tasks),
    ``task-TILEID`` (inside that tile's task: the tile fails as an internal error),
    ``brick-BRICKNAME`` (inside a brick task, matching that brick: the tiles needing the
    brick fail as internal errors, the task's other bricks are staged).
"""
import errno
import os
import signal
import time

ENV = "SPECPROD_DB_FAULT"
DIR_ENV = "SPECPROD_DB_FAULT_DIR"
PAUSE_TIMEOUT = 300

#: The short forms kept from the first crash tests: ``KIND:TILEID`` -> point.
_TILE_KINDS = {"extract": ("kill", "extract"), "copy": ("kill", "copy"),
               "pause": ("pause", "copy")}


def _items():
    for item in os.environ.get(ENV, "").split(","):
        kind, _, where = item.strip().partition(":")
        where, _, rank = where.partition("@")
        if kind in _TILE_KINDS and where.isdigit():
            kind, point = _TILE_KINDS[kind]
            where = f"{point}-{int(where)}"
        if kind:
            yield kind, where, (int(rank) if rank else None)


def _rank():
    for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def hit(point, tileid=None, leftover=None):
    """Fault point ``point`` reached (for ``tileid`` at the per-tile points).

    ``leftover``: a path to leave behind, half-written, before a kill.
    """
    if not os.environ.get(ENV):
        return
    name = point if tileid is None else f"{point}-{int(tileid)}"
    for kind, where, rank in _items():
        if where != name or (rank is not None and rank != _rank()):
            continue
        if kind == "kill":
            if leftover:
                with open(f"{leftover}.tmp-{os.getpid()}", "wb") as f:
                    f.write(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # a truncated HDF5 file
            os.kill(os.getpid(), signal.SIGKILL)
        elif kind == "raise":
            raise RuntimeError(f"injected fault at {name} ({ENV})")
        elif kind == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        elif kind == "pause":
            _pause(tileid if tileid is not None else point)


def _pause(label):
    where = os.environ.get(DIR_ENV, ".")
    label = int(label) if isinstance(label, (int,)) or str(label).isdigit() else label
    open(os.path.join(where, f"paused-{label}"), "w").close()
    resume = os.path.join(where, f"resume-{label}")
    end = time.time() + PAUSE_TIMEOUT
    while not os.path.exists(resume) and time.time() < end:
        time.sleep(0.05)
