"""Logging through desiutil's logger, on stderr; a worker rank's lines name the rank.

stdout is a command's result (a plan, a load report, ``--json``), so log lines go to
stderr: desiutil's logger writes to stdout, and :func:`to_stderr` points every handler
desiutil made at the process's stderr instead (in every process that imports this
module: MPI worker ranks too).  ``-q`` / ``-v`` set the level of every logger obtained
later, :func:`set_level`.

The root (rank 0) plans, writes and reports: its lines need no tag.  A worker's lines
(a tile it could not read, a bug's traceback) say which rank and so which node logged
them, as ``[rank r/n]``.
"""
import logging
import os
import sys

from desiutil.log import get_logger as _desi_logger

_rank_prefix = ""

#: desiutil names its root loggers ``desiutil.log.dlm<delimiter>[timestamp]``.
_DESIUTIL_ROOTS = "desiutil.log.dlm"


class _Stderr:
    """``sys.stderr`` as it is when a line is written (tests and callers may replace
    it), for handlers that would otherwise keep the stream they were made with."""

    def write(self, text):
        return sys.stderr.write(text)

    def flush(self):
        sys.stderr.flush()


_STDERR = _Stderr()


def to_stderr() -> None:
    """Point every stream handler of desiutil's loggers at stderr (desiutil makes them
    on stdout).  Idempotent; called on import and by :func:`get_logger`, so a logger
    desiutil configures later (another delimiter or timestamps) is moved too."""
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if not (name.startswith(_DESIUTIL_ROOTS) and isinstance(logger, logging.Logger)):
            continue
        for handler in logger.handlers:
            if type(handler) is logging.StreamHandler and handler.stream is not _STDERR:
                handler.setStream(_STDERR)


def set_rank(rank: int, size: int) -> None:
    """Tag subsequent log lines of a worker rank with ``[rank r/n]``."""
    global _rank_prefix
    _rank_prefix = f"[rank {rank}/{size}] " if rank > 0 else ""


def set_level(level: "str | None") -> "str | None":
    """Make ``level`` (DEBUG, INFO, WARNING ...; None: desiutil's default, INFO) the level
    of the loggers :func:`get_logger` returns from now on, in this process and its
    children (``DESI_LOGLEVEL``, which desiutil reads); returns the previous value."""
    before = os.environ.get("DESI_LOGLEVEL")
    if level is None:
        os.environ.pop("DESI_LOGLEVEL", None)
    else:
        os.environ["DESI_LOGLEVEL"] = level
    return before


class _RankAdapter(logging.LoggerAdapter):
    def process(self, msg, kwargs):
        return f"{_rank_prefix}{msg}", kwargs


def get_logger(level=None) -> logging.LoggerAdapter:
    """desiutil's logger (``DESI_LOGLEVEL`` honoured), on stderr, behind a rank-prefixing
    adapter."""
    logger = _desi_logger(level) if level else _desi_logger()
    to_stderr()
    return _RankAdapter(logger, {})


to_stderr()
