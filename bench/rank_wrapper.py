"""Run ``specprod-db ARGS...`` in this process and record this rank's peak memory.

Used by ``bench/run.py`` as ``mpiexec -n N python bench/rank_wrapper.py load ...``: every
rank runs the ordinary CLI entry point (nothing in the package is changed) and, at exit,
writes ``$BENCH_RSS_DIR/rank-<rank>.json`` with its peak resident set size, both from
``getrusage(RUSAGE_SELF).ru_maxrss`` and from ``VmHWM`` in ``/proc/self/status``.

``BENCH_KEEP_STAGE=1`` keeps the run's HDF5 stage files (the load removes them once
written) so the other benchmarks can reuse the exact staged rows; removing a file is
the only thing it skips.

``BENCH_PROFILE_DIR=DIR`` profiles the rank with cProfile (``DIR/rank-<rank>.prof``) and
times every SQL statement the rank sends (``DIR/sql-rank-<rank>.json``: per statement
text, numbers and the schema name replaced, its calls and seconds). The statement timer
is a ``cursor_factory`` added to ``psycopg2.connect`` when the caller gives none.
``BENCH_SQL_ONLY=1`` with it times the statements only (the ``.prof`` is then empty):
cProfile's overhead slows the writer's encoding thread too.
"""
import atexit
import json
import os
import re
import resource
import sys
import time

_T0 = time.time()


def _rank():
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID"):
        if os.environ.get(var):
            return int(os.environ[var])
    return 0


def _vm(key):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])  # kB
    except OSError:
        pass
    return None


def _report():
    out = os.environ.get("BENCH_RSS_DIR")
    if not out:
        return
    rec = {"rank": _rank(), "pid": os.getpid(),
           "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
           "vmhwm_kib": _vm("VmHWM"), "wall_s": time.time() - _T0}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"rank-{rec['rank']}.json"), "w") as f:
        json.dump(rec, f)


atexit.register(_report)

if os.environ.get("BENCH_KEEP_STAGE"):
    from specprod_db import stage
    stage.StageFile.remove = lambda self: None
    stage.remove_bricks = lambda stage_dir: 0

_PROFILE_DIR = os.environ.get("BENCH_PROFILE_DIR")
_SQL = {}


def _statement_key(cur, query):
    if not isinstance(query, (str, bytes)):
        try:
            query = query.as_string(cur.connection)
        except Exception:  # noqa: BLE001 - a label is enough
            query = repr(query)
    if isinstance(query, bytes):
        query = query.decode("utf-8", "replace")
    q = re.sub(r"\s+", " ", query).strip()
    q = re.sub(r'"?bench_[0-9a-f]{8}"?', "S", q)
    q = re.sub(r"'[^']*'", "'?'", q)
    q = re.sub(r"\b\d+\b", "N", q)
    q = re.sub(r"(N, ?)+N", "N..", q)
    return q[:160]


def _sql_record(cur, query, seconds):
    key = _statement_key(cur, query)
    c = _SQL.setdefault(key, [0, 0.0])
    c[0] += 1
    c[1] += seconds


if _PROFILE_DIR:
    import cProfile

    import psycopg2
    import psycopg2.extensions

    class _TimedCursor(psycopg2.extensions.cursor):
        def execute(self, query, vars=None):
            t = time.perf_counter()
            try:
                return super().execute(query, vars)
            finally:
                _sql_record(self, query, time.perf_counter() - t)

        def executemany(self, query, vars_list):
            t = time.perf_counter()
            try:
                return super().executemany(query, vars_list)
            finally:
                _sql_record(self, query, time.perf_counter() - t)

        def copy_expert(self, query, file, size=8192):
            t = time.perf_counter()
            try:
                return super().copy_expert(query, file, size)
            finally:
                _sql_record(self, query, time.perf_counter() - t)

    _connect = psycopg2.connect

    def _timed_connect(*args, **kwargs):
        kwargs.setdefault("cursor_factory", _TimedCursor)
        return _connect(*args, **kwargs)

    psycopg2.connect = _timed_connect
    _PROFILER = cProfile.Profile()

    def _dump_profile():
        _PROFILER.disable()
        os.makedirs(_PROFILE_DIR, exist_ok=True)
        _PROFILER.dump_stats(os.path.join(_PROFILE_DIR, f"rank-{_rank()}.prof"))
        with open(os.path.join(_PROFILE_DIR, f"sql-rank-{_rank()}.json"), "w") as f:
            json.dump({k: {"calls": v[0], "seconds": round(v[1], 4)}
                       for k, v in sorted(_SQL.items(), key=lambda kv: -kv[1][1])}, f,
                      indent=0)

    atexit.register(_dump_profile)

from specprod_db.cli import main  # noqa: E402

if __name__ == "__main__":
    if _PROFILE_DIR and not os.environ.get("BENCH_SQL_ONLY"):
        _PROFILER.enable()
    sys.exit(main(sys.argv[1:]))
