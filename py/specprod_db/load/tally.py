"""What a load run counts as it goes: failures, rows, warnings, timers, progress.

A :class:`Tally` is filled by every stage of the run (:mod:`specprod_db.load.waves`,
:mod:`specprod_db.load.commit`, :mod:`specprod_db.load.zpix`) and read by
:mod:`specprod_db.load.runrecord` for ``load_run.counts`` and the report.  Failures of
every kind are one :class:`Failure` type: of a tile (by TILEID) or of a HEALPix file (by
name).
"""
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from specprod_db import mpi
from specprod_db.extract import redshift
from specprod_db.log import get_logger


@dataclass
class Failure:
    """Why a tile or a HEALPix file failed: bad input (``internal=False``) or a bug."""
    message: str
    internal: bool = False


@dataclass
class Tally:
    """The run's failures, counts (``load_run.counts``), warnings, timers and progress."""
    failures: dict[int, Failure] = field(default_factory=dict)
    healpix_failures: dict[str, Failure] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=lambda: {"tables": {}, "warnings": {}})
    timers: dict[str, float] = field(default_factory=dict)
    progress: dict[str, mpi.Progress] = field(default_factory=dict)
    overlap: mpi.Overlap = field(default_factory=mpi.Overlap)
    t0: float = field(default_factory=time.time)

    def fail(self, tileid: int, message: str, internal: bool = False) -> None:
        """Record that a tile failed (the first reason wins)."""
        self.failures.setdefault(tileid, Failure(message, internal))

    def fail_healpix(self, name: str, message: str) -> None:
        """Record that a HEALPix redrock file failed (it loads on the next run)."""
        self.healpix_failures[name] = Failure(message)

    def failed(self, tileid: int) -> bool:
        return tileid in self.failures

    def any_failed(self) -> bool:
        return bool(self.failures or self.healpix_failures)

    def count(self, kind: str, n: int) -> None:
        """Count ``n`` warnings of ``kind`` (logged elsewhere)."""
        w = self.counts["warnings"]
        w[kind] = w.get(kind, 0) + n

    def warn(self, kind: str, n: int, message: str, *args: Any) -> None:
        """Log a warning and count ``n`` of ``kind``."""
        self.count(kind, n)
        get_logger().warning(message, *args)

    def add_rows(self, counts: Mapping[str, int]) -> None:
        """Add a committed tile's (or file's) rows per table."""
        tc = self.counts["tables"]
        for k, v in counts.items():
            tc[k] = tc.get(k, 0) + v

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        t = time.time()
        try:
            yield
        finally:
            self.timers[name] = self.timers.get(name, 0.0) + time.time() - t

    def tile_stats(self, tileid: int, stats: dict[str, Any]) -> None:
        """Warnings that count values loaded despite being odd (the run still succeeds)."""
        mismatch = redshift.desiname_mismatch(stats)
        if mismatch:  # the computed DESINAME is loaded, never the file's
            self.warn("desiname_mismatch", mismatch[0], "tile %d: %s", tileid, mismatch[1])
        fin = stats.get("finitized") or {}
        if fin:
            self.warn("finitized", sum(fin.values()),
                      "tile %d: %d non-finite value(s) (NaN/Inf) stored as -9999 in %d "
                      "column(s): %s", tileid, sum(fin.values()), len(fin),
                      ", ".join(f"{k} {v}" for k, v in sorted(fin.items())))
        bad = stats.get("targetid_mismatch", 0)
        if bad:
            self.warn("targetid_mismatch", bad,
                      "tile %d: %d targeting row(s) whose TARGETID does not encode their own "
                      "RELEASE/BRICKID/BRICK_OBJID; loaded with the rows' columns, as "
                      "desispec reads them", tileid, bad)
        nan = stats.get("nan_efftime_expids") or []
        if nan:
            self.warn("nan_efftime_exposures", len(nan),
                      "tile %d: %d exposure(s) with EFFTIME_SPEC NaN not loaded (only "
                      "EFFTIME_SPEC > 0 qualifies): EXPID %s", tileid, len(nan),
                      ", ".join(map(str, nan)))
        missing = stats.get("missing_catalogs") or []
        if missing:  # each was logged by the worker, naming tile, keyword and path
            self.count("missing_catalogs", len(missing))
        bits = stats.get("missing_target_bits", 0)
        if bits:  # rows loaded with 0 for a bit column their catalog lacks (logged there)
            self.count("missing_target_bits", bits)
