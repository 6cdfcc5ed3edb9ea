"""The MPI fixtures: the venv's mpiexec runs ranks, and a hung run is killed on time."""
import re
import sys
import time

import pytest


def test_mpirun_runs_ranks(mpirun):
    r = mpirun(2, [sys.executable, "-c",
                   "from mpi4py import MPI; c = MPI.COMM_WORLD; "
                   "print(f'<rank {c.rank} of {c.size}>', flush=True)"], timeout=120)
    # the ranks' lines may interleave (print writes the text and the newline apart)
    assert sorted(re.findall(r"<(rank \d of \d)>", r.stdout)) == ["rank 0 of 2",
                                                                 "rank 1 of 2"]


def test_mpirun_timeout_kills_the_run(mpirun):
    t0 = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="timed out after 3 s"):
        mpirun(2, [sys.executable, "-c", "import time; time.sleep(600)"], timeout=3)
    assert time.monotonic() - t0 < 60
