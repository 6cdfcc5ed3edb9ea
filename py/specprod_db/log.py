"""Logging through desiutil's logger, with the MPI rank in every line when there is one."""
import logging

from desiutil.log import get_logger as _desi_logger

_rank_prefix = ""


def set_rank(rank, size):
    """Tag subsequent log lines with ``[rank r/n]`` when running on several ranks."""
    global _rank_prefix
    _rank_prefix = f"[rank {rank}/{size}] " if size > 1 else ""


class _RankAdapter(logging.LoggerAdapter):
    def process(self, msg, kwargs):
        return f"{_rank_prefix}{msg}", kwargs


def get_logger(level=None):
    """desiutil's logger (``DESI_LOGLEVEL`` honoured) behind a rank-prefixing adapter."""
    return _RankAdapter(_desi_logger(level) if level else _desi_logger(), {})
