"""mpi.Dispatcher / mpi.serve without the CLI: tasks that fail as bad input or as bugs,
a worker that dies, a root that stops early; 1, 2 and 3 ranks."""
import json
import sys
import textwrap
import time

import pytest

from specprod_db import mpi
from specprod_db.errors import InputError

SCRIPT = textwrap.dedent("""
    import json, os, signal, sys, time
    from specprod_db import mpi
    from specprod_db.errors import InputError

    def work(task):
        if task == "bad":
            raise InputError("tile 7: fiberassign file /x: does not exist")
        if task == "bug":
            return {}["missing key"]
        if task == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        if task == "slow":
            time.sleep(1)
        return task * 2

    comm = mpi.world()
    handlers = {"double": work}
    if comm.rank:
        sys.exit(mpi.serve(comm, handlers))
    dispatcher = mpi.Dispatcher(comm, handlers)
    tasks = json.loads(sys.argv[1])
    out = dispatcher.map("double", tasks)
    if sys.argv[2] == "busy":
        print("BUSY " + json.dumps(dispatcher.balance()[0]), flush=True)
    if sys.argv[2] == "stop-early":
        # tasks running (and one queued) when the root stops
        dispatcher.submit("double", ["slow"] * comm.size)
        dispatcher.stop(5)
        sys.exit(5)
    summary = sorted([t, r if not isinstance(r, mpi.TaskFailure) else
                      ("internal" if r.internal else "input", r.message)]
                     for t, r in out)
    print("RESULT " + json.dumps(summary), flush=True)
    dispatcher.stop(0)
""")


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "tasks.py"
    path.write_text(SCRIPT)
    return str(path)


def _result(stdout):
    line = next(l for l in stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_failures_are_data(ranks, script, mpirun):
    tasks = ["a", "bad", "b", "bug", "c", "d"]
    r = mpirun(ranks, [sys.executable, script, json.dumps(tasks), "normal"], timeout=120)
    got = dict((t, v) for t, v in _result(r.stdout))
    assert got["a"] == "aa" and got["d"] == "dd"
    assert got["bad"] == ["input", "tile 7: fiberassign file /x: does not exist"]
    kind, message = got["bug"]
    assert kind == "internal" and message == "internal error: KeyError: 'missing key'"
    # a bug is logged with its traceback by the rank that raised it
    assert "Traceback" in r.stdout + r.stderr and "KeyError" in r.stdout + r.stderr


@pytest.mark.parametrize("ranks", [2, 3])
def test_a_dead_worker_ends_the_job(ranks, script, mpirun):
    t = time.time()
    r = mpirun(ranks, [sys.executable, script, json.dumps(["a", "die", "b", "c"]),
                       "normal"], timeout=120, check=False)
    assert r.returncode != 0 and time.time() - t < 60


@pytest.mark.parametrize("ranks", [1, 3])
def test_stop_waits_for_running_tasks_and_gives_the_status(ranks, script, mpirun):
    r = mpirun(ranks, [sys.executable, script, json.dumps(["a"]), "stop-early"],
               timeout=120, check=False)
    assert r.returncode == 5, r.stderr


def test_largest_first_and_polling_in_process():
    comm = mpi.SerialComm()
    order = []
    d = mpi.Dispatcher(comm, {"rec": lambda t: order.append(t) or t})
    batch = d.submit("rec", [1, 5, 3], size=lambda t: t)
    d.poll()  # without block nothing runs on one rank: the root decides when
    assert order == [] and not batch.done
    assert [t for t, _ in d.wait(batch)] == [5, 3, 1] == order
    busy, balance = d.balance()
    assert list(busy) == [0] and balance == 1.0


def test_one_rank_in_process():
    comm = mpi.SerialComm()

    def work(task):
        if task < 0:
            raise InputError(f"bad {task}")
        return task + 1
    d = mpi.Dispatcher(comm, {"inc": work})
    out = d.map("inc", [1, -1, 2])
    assert [r for _, r in out][0] == 2 and [r for _, r in out][2] == 3
    failure = out[1][1]
    assert isinstance(failure, mpi.TaskFailure) and not failure.internal
    assert failure.message == "bad -1" and failure.traceback == ""
    d.stop(0)  # nothing to stop on one rank


def test_progress_lines_are_bounded(caplog):
    p = mpi.Progress("tile", 1000)
    lines = []
    p.log = type("L", (), {"info": lambda self, *a: lines.append(a),
                           "error": lambda self, *a: None})()
    for i in range(1000):
        p(i, i)
    assert len(lines) == 10  # every 10 %, not one line per task


def test_one_rank_known_without_mpi():
    """world() skips mpi4py when the process is alone: no launcher variable, or every
    size variable 1; a launcher variable without a size, or any size above 1, asks MPI."""
    assert mpi.one_rank({"HOME": "/root", "PATH": "/bin"})
    assert mpi.one_rank({"PMI_RANK": "0", "PMI_SIZE": "1", "MPI_LOCALNRANKS": "1"})
    assert mpi.one_rank({"OMPI_COMM_WORLD_SIZE": "1", "OMPI_COMM_WORLD_RANK": "0"})
    assert not mpi.one_rank({"PMI_RANK": "0", "PMI_SIZE": "2"})
    assert not mpi.one_rank({"PMI_SIZE": "1", "SLURM_PROCID": "0",
                             "SLURM_STEP_NUM_TASKS": "4"})
    assert not mpi.one_rank({"MPI_LOCALNRANKS": "1"})  # one rank on this node only
    assert not mpi.one_rank({"PMIX_RANK": "0"})


@pytest.mark.parametrize("ranks, helped", [(2, True), (3, False)])
def test_the_root_runs_tasks_while_its_only_worker_is_busy(ranks, helped, script, mpirun):
    """On 2 ranks the root, waiting with the worker busy, runs queued tasks itself (the
    worker alone did all the work); from 3 ranks on it only feeds the workers."""
    r = mpirun(ranks, [sys.executable, script, json.dumps(["slow", "slow", "slow", "slow"]),
                       "busy"], timeout=120)
    assert [v for _, v in _result(r.stdout)] == ["slowslow"] * 4
    line = next(l for l in r.stdout.splitlines() if l.startswith("BUSY "))
    busy = json.loads(line[len("BUSY "):])
    assert ("0" in busy and busy["0"] >= 0.9) == helped
    assert all(v >= 0.9 for v in busy.values())
