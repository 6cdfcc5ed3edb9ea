"""Logging through desiutil's logger; a worker rank's lines name the rank.

The root (rank 0) plans, writes and reports: its lines need no tag.  A worker's lines
(a tile it could not read, a bug's traceback) say which rank and so which node logged
them, as ``[rank r/n]``.
"""
import logging

from desiutil.log import get_logger as _desi_logger

_rank_prefix = ""


def set_rank(rank, size):
    """Tag subsequent log lines of a worker rank with ``[rank r/n]``."""
    global _rank_prefix
    _rank_prefix = f"[rank {rank}/{size}] " if rank > 0 else ""


class _RankAdapter(logging.LoggerAdapter):
    def process(self, msg, kwargs):
        return f"{_rank_prefix}{msg}", kwargs


def get_logger(level=None):
    """desiutil's logger (``DESI_LOGLEVEL`` honoured) behind a rank-prefixing adapter."""
    return _RankAdapter(_desi_logger(level) if level else _desi_logger(), {})
