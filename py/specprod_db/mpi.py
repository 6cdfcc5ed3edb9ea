"""Rank roles and dynamic task distribution over MPI, with one rank as the size-1 case.

Rank 0 is the *root*: it plans, hands out tasks through a :class:`Dispatcher` and
writes.  Every other rank is a *worker* and runs :func:`serve`: receive a task, run it,
send the result, until the root says stop (with the run's exit status).  Tasks go to
whichever worker is idle, so a slow tile does not idle the others.

Failures never hang the job:

* a task that raises is data, not a crash (:class:`TaskFailure`): an
  :class:`~specprod_db.errors.InputError` is bad input (one line); any other exception is
  an internal error, logged with its full traceback by the worker that raised it;
* an exception on a worker *between* tasks (a bug in the loop itself) aborts the job
  (``MPI_Abort``) after logging it: the root would otherwise wait for that worker forever;
* when the root fails, :meth:`Dispatcher.stop` collects the results of tasks still
  running (at most :data:`DRAIN_TIMEOUT` seconds, else ``MPI_Abort``) and stops every
  worker with the status;
* a rank killed by a signal makes ``mpiexec``/``srun`` end the whole job.

On one rank (or without mpi4py) the tasks run in order on rank 0.
"""
import gc
import os
import socket
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional

from specprod_db import faults
from specprod_db.errors import EXIT_INTERNAL, DatabaseLost, InputError, one_line
from specprod_db.log import get_logger

_TAG_TASK, _TAG_RESULT = 11, 12
_STOP = "stop"

#: Seconds an idle rank sleeps between polls.  MPICH's blocking calls spin at 100% CPU;
#: on a node where ranks share cores a spinning idle rank starves the busy ones (the
#: writer ran 2x slower with 4 ranks than with 1 on 2 cores, doc/benchmarks.md).
POLL_INTERVAL = 0.005

#: Up to this many ranks the root, while it waits for a batch (:meth:`Dispatcher.wait`)
#: with every worker busy, runs a queued task itself instead of sleeping: with 2 ranks
#: the one worker extracted alone while the root idled, so a 2-rank morning took longer
#: than a 1-rank one (3.6 against 2.7 s, ``make bench`` (g)).  With more workers the
#: root stays free to feed them.
ROOT_HELPS_UP_TO = 2

#: Seconds the root waits for running tasks to finish when it stops early.
DRAIN_TIMEOUT = 60.0

#: Seconds between two progress lines of one stage (also one line per 10 %).
PROGRESS_INTERVAL = 10.0


@dataclass
class TaskFailure:
    """A task that raised: what failed, where, the one-line reason, and whether it was
    bad input (``internal=False``) or a bug (``internal=True``, with its traceback)."""
    task: Any
    message: str
    where: str
    traceback: str
    internal: bool = False
    #: the run cannot go on (the database went away): the root stops with its status
    fatal: bool = False


class SerialComm:
    """The one-rank communicator used when mpi4py is absent or not wanted."""
    rank = 0
    size = 1

    def Abort(self, code: int = 1) -> None:  # pragma: no cover - only on fatal paths
        os._exit(code)


#: Environment variables by which MPI launchers (MPICH/Hydra, Open MPI, PMIx, Slurm,
#: Cray PALS, Intel MPI, MVAPICH) tell a process it is one of a job's ranks.
LAUNCHER_PREFIXES = ("PMI_", "PMIX_", "OMPI_", "PALS_", "HYDRA_", "I_MPI_", "MV2_",
                     "MPI_LOCALNRANKS", "SLURM_PROCID")
#: Variables holding the job's number of ranks (not the node's), where a launcher
#: sets one.
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")


def one_rank(environ: Mapping[str, str]) -> bool:
    """True when this process is known to be a job's only rank without asking MPI: no
    launcher variable at all (started without ``mpiexec``/``srun``: MPI would make it a
    singleton), or every size variable present says 1 (``mpiexec -n 1``).  Anything
    else (a launcher variable without a size) leaves the answer to MPI."""
    launched = [k for k in environ if k.startswith(LAUNCHER_PREFIXES)]
    if not launched:
        return True
    sizes = [environ[k] for k in SIZE_VARIABLES if k in environ]
    return bool(sizes) and all(v.strip() == "1" for v in sizes)


def world() -> Any:
    """COMM_WORLD, or a :class:`SerialComm` when mpi4py is unavailable or disabled, or
    when the process is alone (:func:`one_rank`): importing mpi4py and MPI_Init took
    0.1-0.15 s of a 1-rank load (a quarter of a load with nothing to do).

    Set ``SPECPROD_DB_NO_MPI=1`` to skip importing mpi4py (e.g. on a login node).
    """
    if os.environ.get("SPECPROD_DB_NO_MPI") or one_rank(os.environ):
        return SerialComm()
    try:
        from mpi4py import MPI
    except ImportError:
        return SerialComm()
    return MPI.COMM_WORLD


def where(comm: Any) -> str:
    return f"rank {comm.rank} of {comm.size} on {socket.gethostname()}"


def call_task(func: Callable[[Any], Any], task: Any, comm: Any) -> Any:
    """``func(task)``, or a :class:`TaskFailure` when it raises."""
    try:
        return func(task)
    except InputError as err:
        return TaskFailure(task, one_line(err), where(comm), "", internal=False)
    except DatabaseLost as err:  # not the task's fault: the root stops the run
        return TaskFailure(task, one_line(err), where(comm), "", fatal=True)
    except Exception as err:  # a bug inside a task fails the task, loudly
        tb = traceback.format_exc()
        get_logger().error("internal error in task %s (%s): %s\n%s", describe(task),
                           where(comm), one_line(err), tb)
        return TaskFailure(task, f"internal error: {one_line(err)}", where(comm), tb,
                           internal=True)


def describe(task: Any) -> str:
    """A short name of a task for messages: its ``str`` (``tile 1234``,
    ``bricks 0001m002+16``: :mod:`specprod_db.load.jobs`), at most 60 characters."""
    return str(task)[:60]


def _recv_quietly(comm: Any, source: int, tag: int, status: Any,
                  interval: float = POLL_INTERVAL) -> Any:
    while not comm.Iprobe(source=source, tag=tag, status=status):
        time.sleep(interval)
    return comm.recv(source=status.Get_source(), tag=tag, status=status)


def serve(comm: Any, handlers: Mapping[str, Callable[[Any], Any]]) -> int:
    """A worker's life: run the root's tasks until it says stop; returns the exit status.

    ``handlers`` maps a task kind to the function that runs it.  An exception outside
    a task ends the job (``MPI_Abort``) after logging it with its traceback.
    """
    from mpi4py import MPI
    status = MPI.Status()
    try:
        while True:
            message = _recv_quietly(comm, 0, _TAG_TASK, status)
            if message[0] == _STOP:
                return message[1]
            kind, task = message
            faults.hit("serve")  # failure tests only (faults.py)
            t = time.time()
            result = call_task(handlers[kind], task, comm)
            comm.send((result, time.time() - t), dest=0, tag=_TAG_RESULT)
            del result, task
            _collect_garbage()
    except Exception as err:
        abort(comm, f"internal error on worker {where(comm)}: {one_line(err)}",
              traceback.format_exc())
        return EXIT_INTERNAL  # not reached: the job is aborted


def run_roles(comm: Any, handlers: Mapping[str, Callable], root: Callable[[], int]) -> int:
    """The split of a job's ranks, written once: rank 0 runs ``root()`` (which builds its
    :class:`Dispatcher` and stops the workers with its status), every other rank serves
    tasks with ``handlers`` (:func:`serve`); returns the common exit status."""
    if comm.rank != 0:
        return serve(comm, handlers)
    return root()


def _collect_garbage() -> None:
    """A worker's memory follows one task, not the tasks it ran: after each task the
    cyclic garbage it left (libraries' reference cycles holding arrays; astropy's ECSV
    reader left ~17 MB a read) is collected now, not at the interpreter's next full
    collection, which comes rarer as a process lives longer — workers' peak RSS grew
    with the tiles of a run (``make bench`` (e)).  The objects alive after the first task
    (modules, caches) are frozen out of later collections, so each costs milliseconds."""
    gc.collect()
    if not gc.get_freeze_count():
        gc.freeze()


def abort(comm: Any, message: str, tb: str = "") -> None:
    """Say why on stderr (with the traceback) and end the whole job (every rank)."""
    print(f"specprod-db: {message}; the job is aborted (exit {EXIT_INTERNAL}); every "
          f"committed tile is whole, rerun the load", file=sys.stderr, flush=True)
    if tb:
        print(tb, file=sys.stderr, flush=True)
    comm.Abort(EXIT_INTERNAL)


class Batch:
    """Tasks submitted together: their results as they complete, and their progress."""

    def __init__(self, kind: str, n: int, progress: Optional["Progress"] = None) -> None:
        self.kind, self.n = kind, n
        self.results: list[Any] = []  # [(task, result)] in completion order
        self.progress = progress or Progress(kind, n)

    @property
    def done(self) -> bool:
        return len(self.results) == self.n

    def add(self, task: Any, result: Any) -> None:
        self.results.append((task, result))
        self.progress(task, result)


class Dispatcher:
    """The root's side of the task queue.

    ``submit(kind, tasks)`` queues tasks (largest first when ``size`` is given) and hands
    them to idle workers; ``poll()`` collects finished results and keeps every worker
    fed — the root calls it between its own pieces of work (e.g. between two tiles it
    writes), so extraction goes on while it writes; ``wait(batch)`` returns a batch's
    ``[(task, result)]`` once complete; ``map`` is submit + wait.  ``roles`` reserves
    ranks for a kind of task (e.g. the writer ranks of ``--writers``).  On one rank the
    queued tasks run on rank 0 itself, in ``wait``; so do they on 2 ranks while the
    worker is busy (:data:`ROOT_HELPS_UP_TO`).  ``stop(status)`` ends every worker's
    :func:`serve` loop.  ``busy`` holds each rank's seconds spent in tasks.
    """

    def __init__(self, comm: Any, handlers: Mapping[str, Callable[[Any], Any]],
                 roles: Optional[Mapping[str, Iterable[int]]] = None) -> None:
        self.comm = comm
        self.handlers = handlers
        #: kind -> the ranks that run it; the other kinds run on the remaining workers
        self.roles = {k: set(v) for k, v in (roles or {}).items()}
        self.queue: deque[tuple[str, Any, Batch]] = deque()
        #: worker rank -> (kind, task, batch, started)
        self.running: dict[int, tuple[str, Any, Batch, float]] = {}
        self.busy = {r: 0.0 for r in range(comm.size)}
        self.stopped = comm.size == 1
        self.root_helps = 1 < comm.size <= ROOT_HELPS_UP_TO

    def submit(self, kind: str, tasks: Iterable[Any], size: Optional[Callable[[Any], Any]] = None,
               progress: Optional["Progress"] = None) -> Batch:
        tasks = list(tasks)
        if size is not None:
            tasks.sort(key=size, reverse=True)
        batch = Batch(kind, len(tasks), progress)
        self.queue.extend((kind, t, batch) for t in tasks)
        self.poll()
        return batch

    def map(self, kind: str, tasks: Iterable[Any], size: Optional[Callable[[Any], Any]] = None,
            progress: Optional["Progress"] = None) -> list[tuple[Any, Any]]:
        return self.wait(self.submit(kind, tasks, size, progress))

    def wait(self, batch: Batch) -> list[tuple[Any, Any]]:
        while not batch.done:
            self.poll(block=True)
        return batch.results

    def poll(self, block: bool = False) -> None:
        """Hand queued tasks to idle workers and collect finished ones; with ``block``,
        wait until at least one task finishes (on one rank: run the next one)."""
        if self.comm.size == 1:
            if block and self.queue:
                self._run_here(0)
            return
        from mpi4py import MPI
        status = MPI.Status()
        self._fill()
        while self.running:
            if not self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=_TAG_RESULT, status=status):
                if not block:
                    return
                if self.root_helps:
                    i = next((i for i, (kind, _, _) in enumerate(self.queue)
                              if self._eligible(kind, 0)), None)
                    if i is not None:  # every worker busy: the root runs one itself
                        self._run_here(i)
                        block = False
                        continue
                time.sleep(POLL_INTERVAL)
                continue
            w = status.Get_source()
            result, seconds = self.comm.recv(source=w, tag=_TAG_RESULT)
            kind, task, batch, _ = self.running.pop(w)
            self.busy[w] += seconds
            batch.add(task, result)
            self._fill()
            block = False

    def _run_here(self, i: int) -> None:
        """Run the ``i``-th queued task on the root."""
        kind, task, batch = self.queue[i]
        del self.queue[i]
        t = time.time()
        result = call_task(self.handlers[kind], task, self.comm)
        self.busy[0] += time.time() - t
        batch.add(task, result)

    def _eligible(self, kind: str, worker: int) -> bool:
        if kind in self.roles:
            return worker in self.roles[kind]
        return not any(worker in ranks for ranks in self.roles.values())

    def _fill(self) -> None:
        for w in range(1, self.comm.size):
            if w in self.running or not self.queue:
                continue
            for i, (kind, task, batch) in enumerate(self.queue):
                if self._eligible(kind, w):
                    del self.queue[i]
                    self.running[w] = (kind, task, batch, time.time())
                    self.comm.send((kind, task), dest=w, tag=_TAG_TASK)
                    break

    def stop(self, status: int, drain_timeout: float = DRAIN_TIMEOUT) -> None:
        """Stop every worker with ``status`` (after the tasks they still run; queued
        tasks are dropped)."""
        if self.stopped:
            return
        self.stopped = True
        self.queue.clear()
        from mpi4py import MPI
        st = MPI.Status()
        end = time.time() + drain_timeout
        while self.running:
            if self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=_TAG_RESULT, status=st):
                self.comm.recv(source=st.Get_source(), tag=_TAG_RESULT)
                self.running.pop(st.Get_source(), None)
            elif time.time() > end:
                abort(self.comm, f"{len(self.running)} worker(s) still busy "
                                 f"{drain_timeout:.0f} s after the run stopped")
            else:
                time.sleep(POLL_INTERVAL)
        for w in range(1, self.comm.size):
            self.comm.send((_STOP, status), dest=w, tag=_TAG_TASK)

    def balance(self) -> tuple[dict[int, float], float]:
        """``(busy seconds per worker rank, max/mean)`` (rank 0 alone on one rank; with
        the workers when it ran tasks too)."""
        ranks = range(1 if self.comm.size > 1 and not self.busy[0] else 0, self.comm.size)
        busy = {r: self.busy[r] for r in ranks}
        mean = sum(busy.values()) / len(busy)
        return busy, (max(busy.values()) / mean if mean else 1.0)


class Progress:
    """Rank 0's progress of one stage: a line every :data:`PROGRESS_INTERVAL` seconds or
    10 % (done/total, rate, ETA, failures), and every failure as it happens."""

    def __init__(self, what: str, total: int) -> None:
        self.what, self.total = what, total
        self.start = self.last = time.time()
        self.done = self.failed = self.last_tenth = 0
        self.log = get_logger()

    def __call__(self, task: Any, result: Any) -> None:
        self.done += 1
        if isinstance(result, TaskFailure):
            self.failed += 1
            self.log.error("%s failed (%s): %s", describe(task), result.where,
                           result.message)
        now = time.time()
        tenth = self.done * 10 // max(self.total, 1)
        if self.done == self.total or tenth > self.last_tenth \
                or now - self.last >= PROGRESS_INTERVAL:
            self.last, self.last_tenth = now, tenth
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate else 0
            self.log.info("%s tasks: %d/%d done (%.1f/s%s)%s", self.what, self.done,
                          self.total, rate, f", ETA {eta:.0f} s" if self.done < self.total
                          else "", f", {self.failed} failed" if self.failed else "")


class Overlap:
    """How much of the root's write time had workers busy extracting (hidden time)."""

    def __init__(self) -> None:
        self.total = self.hidden = 0.0
        self.last: Optional[float] = None

    def sample(self, dispatcher: Dispatcher, end: bool = False) -> None:
        now = time.time()
        if self.last is not None:
            self.total += now - self.last
            if dispatcher.running:
                self.hidden += now - self.last
        self.last = None if end else now
