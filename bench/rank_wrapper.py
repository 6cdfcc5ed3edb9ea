"""Run ``specprod-db ARGS...`` in this process and record this rank's peak memory.

Used by ``bench/run.py`` as ``mpiexec -n N python bench/rank_wrapper.py load ...``: every
rank runs the ordinary CLI entry point (nothing in the package is changed) and, at exit,
writes ``$BENCH_RSS_DIR/rank-<rank>.json`` with its peak resident set size, both from
``getrusage(RUSAGE_SELF).ru_maxrss`` and from ``VmHWM`` in ``/proc/self/status``.

``BENCH_KEEP_STAGE=1`` keeps the run's HDF5 stage files (the load removes them once
written) so the other benchmarks can reuse the exact staged rows; removing a file is
the only thing it skips.
"""
import atexit
import json
import os
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

from specprod_db.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
