"""Rank roles and dynamic task distribution over MPI, with one rank as the size-1 case.

Rank 0 plans, hands out tasks and writes; ranks 1..N-1 extract.  ``run_tasks`` is called
by every rank with the same function: rank 0 sends the next task to whichever worker is
idle (so a slow tile does not idle the others) and collects results from ``ANY_SOURCE``;
a worker loops receive -> call -> send until it receives ``None``.  A task that raises is
data, not a crash: the worker sends back a :class:`TaskFailure` with the error message,
and rank 0 decides.  On one rank (or without mpi4py) the tasks run in order on rank 0.
"""
import os
import socket
import time
import traceback
from dataclasses import dataclass

from .log import get_logger

_TAG_TASK, _TAG_RESULT = 11, 12

#: Seconds an idle rank sleeps between polls.  MPICH's blocking calls spin at 100% CPU;
#: on a node where ranks share cores a spinning idle rank starves the busy ones (the
#: writer ran 2x slower with 4 ranks than with 1 on 2 cores, doc/benchmarks.md).
POLL_INTERVAL = 0.005


@dataclass
class TaskFailure:
    """A task that raised: what failed, where, and the one-line reason."""
    task: object
    message: str
    where: str
    traceback: str


class _DoneRequest:
    def Test(self):
        return True


class SerialComm:
    """The one-rank communicator used when mpi4py is absent or not wanted."""
    rank = 0
    size = 1

    def bcast(self, obj, root=0):
        return obj

    def gather(self, obj, root=0):
        return [obj]

    def allreduce(self, value, op=None):
        return value

    def Barrier(self):
        pass

    barrier = Barrier

    def Ibarrier(self):
        return _DoneRequest()

    def Abort(self, code=1):  # pragma: no cover - only on fatal paths
        os._exit(code)


def world():
    """COMM_WORLD, or a :class:`SerialComm` when mpi4py is unavailable or disabled.

    Set ``SPECPROD_DB_NO_MPI=1`` to skip importing mpi4py (e.g. on a login node).
    """
    if os.environ.get("SPECPROD_DB_NO_MPI"):
        return SerialComm()
    try:
        from mpi4py import MPI
    except ImportError:
        return SerialComm()
    return MPI.COMM_WORLD


def wait_quietly(comm, interval=POLL_INTERVAL):
    """A barrier that sleeps instead of spinning while other ranks work."""
    if comm.size == 1:
        return
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(interval)


def _recv_quietly(comm, source, tag, status, interval=POLL_INTERVAL):
    while not comm.Iprobe(source=source, tag=tag, status=status):
        time.sleep(interval)
    return comm.recv(source=status.Get_source(), tag=tag, status=status)


def _call(func, task, comm):
    try:
        return func(task)
    except Exception as err:  # a failed task is reported, not raised
        where = f"rank {comm.rank} of {comm.size} on {socket.gethostname()}"
        return TaskFailure(task, f"{type(err).__name__}: {err}" if not str(err).startswith(
            type(err).__name__) else str(err), where, traceback.format_exc())


def run_tasks(comm, tasks, func, progress=None):
    """Run ``func`` on every task; rank 0 returns ``[(task, result)]`` in completion order.

    Every rank must call this (workers pass ``tasks=None``); workers return ``None``.
    ``progress(done, total, task, result)`` is called on rank 0 after each task.
    """
    if comm.size == 1:
        out = []
        for i, task in enumerate(tasks):
            result = _call(func, task, comm)
            out.append((task, result))
            if progress:
                progress(i + 1, len(tasks), task, result)
        return out
    from mpi4py import MPI
    if comm.rank != 0:
        status = MPI.Status()
        while True:
            task = _recv_quietly(comm, 0, _TAG_TASK, status)
            if task is None:
                return None
            comm.send(_call(func, task, comm), dest=0, tag=_TAG_RESULT)
    queue = list(enumerate(tasks))
    pending = {}
    out = []
    status = MPI.Status()
    workers = list(range(1, comm.size))
    for w in workers:
        if queue:
            i, task = queue.pop(0)
            pending[w] = task
            comm.send(task, dest=w, tag=_TAG_TASK)
    while pending:
        result = _recv_quietly(comm, MPI.ANY_SOURCE, _TAG_RESULT, status)
        w = status.Get_source()
        task = pending.pop(w)
        out.append((task, result))
        if progress:
            progress(len(out), len(tasks), task, result)
        if queue:
            i, nxt = queue.pop(0)
            pending[w] = nxt
            comm.send(nxt, dest=w, tag=_TAG_TASK)
    for w in workers:
        comm.send(None, dest=w, tag=_TAG_TASK)
    return out


class Progress:
    """Rank 0's progress line: tasks done / total, rate, failures."""

    def __init__(self, what):
        self.what = what
        self.start = time.time()
        self.failed = 0
        self.log = get_logger()

    def __call__(self, done, total, task, result):
        if isinstance(result, TaskFailure):
            self.failed += 1
            self.log.error("%s %s failed (%s): %s", self.what, task, result.where,
                           result.message)
        elapsed = max(time.time() - self.start, 1e-9)
        self.log.info("%s %d/%d done (%.1f/s)%s", self.what, done, total, done / elapsed,
                      f", {self.failed} failed" if self.failed else "")
