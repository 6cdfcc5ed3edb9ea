"""Fault injection for the crash tests: one environment variable, read in one place.

``SPECPROD_DB_FAULT`` holds comma-separated ``KIND:TILEID`` items; nothing happens when it
is unset (production runs never set it).  The pipeline calls :func:`hit` at two points:

``extract:TILEID``
    the worker extracting that tile kills itself (SIGKILL) after reading the tile's
    inputs, before its stage file is complete (a leftover ``.tmp-PID`` file is written
    first, as a crashed writer of HDF5 would leave one);
``copy:TILEID``
    the writer rank kills itself (SIGKILL) after the COPY of that tile's rows, before the
    tile's transaction commits;
``pause:TILEID``
    the writer, at the same point (transaction open, rows copied), creates
    ``$SPECPROD_DB_FAULT_DIR/paused-TILEID`` and waits (at most 300 s) until
    ``$SPECPROD_DB_FAULT_DIR/resume-TILEID`` exists; tests use it to restart the database
    or start a second load while a load is in flight.
"""
import os
import signal
import time

ENV = "SPECPROD_DB_FAULT"
DIR_ENV = "SPECPROD_DB_FAULT_DIR"
PAUSE_TIMEOUT = 300


def _armed(kind, tileid):
    spec = os.environ.get(ENV, "")
    return f"{kind}:{int(tileid)}" in [s.strip() for s in spec.split(",")]


def hit(point, tileid, leftover=None):
    """Fault point ``point`` ('extract' or 'copy') reached for ``tileid``.

    ``leftover``: a path to leave behind, half-written, before an ``extract`` kill.
    """
    if not os.environ.get(ENV):
        return
    if _armed(point, tileid):
        if leftover:
            with open(f"{leftover}.tmp-{os.getpid()}", "wb") as f:
                f.write(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # a truncated HDF5 file
        os.kill(os.getpid(), signal.SIGKILL)
    if point == "copy" and _armed("pause", tileid):
        where = os.environ.get(DIR_ENV, ".")
        open(os.path.join(where, f"paused-{int(tileid)}"), "w").close()
        resume = os.path.join(where, f"resume-{int(tileid)}")
        end = time.time() + PAUSE_TIMEOUT
        while not os.path.exists(resume) and time.time() < end:
            time.sleep(0.05)
