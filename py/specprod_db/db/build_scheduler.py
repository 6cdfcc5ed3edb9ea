"""The scheduler that makes the missing builds of a schema on several connections.

:func:`build_missing` builds what a schema lacks of :mod:`specprod_db.db.builds`, in
dependency order, on several connections at once (:func:`plan` orders the steps,
:func:`session_settings` sets up each session); every step is its own transaction, so a
run killed at any point leaves each build done, absent, or (a foreign key) added ``NOT
VALID`` and not yet validated, and the same call again builds what is left.  The
scheduler never starts a step whose locks conflict with a running step's, so no session
waits for another one of the same run.

Rows a key refuses are named (:mod:`specprod_db.db.violations`) and raised as
:class:`~specprod_db.db.violations.KeyViolation`.  ``bench/bulk_mechanism.py`` measured
that looking for duplicates and orphans before each key doubled the builds' wall time
(16.2 s against 7.2 s; 40 mock tiles, 1.7 M rows, a busy 2-core machine), hence
:data:`CHECK_ON_FAILURE` by default: the same report, made only once the server refused
a key.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import psycopg2
from psycopg2 import sql

from specprod_db.db.builds import (CLUSTER, DONE, FIRST, FK_NOT_VALID, FOREIGN_KEY,
                                   KEY_KINDS, Q3C, Build, Step, catalog_state, finishing,
                                   present, schema_builds)
from specprod_db.db.connect import connect, server_stop
from specprod_db.db.violations import KeyViolation, describe_violation, violations
from specprod_db.schema import TABLES

# --- building -----------------------------------------------------------------------

#: SQLSTATEs of a key or foreign key refused by the rows (unique_violation,
#: foreign_key_violation).
_REFUSED = {"23505", "23503"}

#: Duplicate / orphan checks of :func:`build_missing`: a query before each key's build,
#: or only once the server refused it (free when nothing is wrong).
CHECK_BEFORE = "before"
CHECK_ON_FAILURE = "on failure"


def session_settings(parallel_workers: int = 2, maintenance_work_mem: str = "1GB",
                     extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The settings of a build session: parallel workers per index build, memory per
    build, and ``client_connection_check_interval`` so that the server ends a build
    whose client was killed instead of finishing it for nothing while holding its
    locks."""
    out = {"max_parallel_maintenance_workers": str(parallel_workers),
           "maintenance_work_mem": maintenance_work_mem,
           "client_connection_check_interval": "1s"}
    out.update(extra or {})
    return out


def _run_step(conn: Any, schema_name: str, step: Step, check: str) -> float:
    """Run ``step`` in its own transaction; its seconds.  Raises :class:`KeyViolation`
    naming the rows the build refuses, or the :class:`~specprod_db.errors.DatabaseLost`
    of a server that stopped the work."""
    b = step.build
    checked = step.label != "add not valid" and b.kind in KEY_KINDS + (FOREIGN_KEY,)
    t0 = time.perf_counter()
    try:
        if check == CHECK_BEFORE and checked:
            found = violations(conn, schema_name, b)
            if found:
                raise KeyViolation(describe_violation(b, found), {b.name: found})
        with conn.cursor() as cur:
            cur.execute(step.statement)
        conn.commit()
    except psycopg2.Error as err:
        lost = server_stop(err, conn, doing=f"building {step.name}")
        if lost is not None:
            raise lost from None
        conn.rollback()
        if err.pgcode in _REFUSED and checked:
            found = violations(conn, schema_name, b)
            if found:
                raise KeyViolation(describe_violation(b, found), {b.name: found}) from None
        raise
    return time.perf_counter() - t0


def _sizes(conn: Any, schema_name: str) -> dict[str, int]:
    """A rough size of each table (live rows times columns), from the statistics: no
    lock taken (``pg_relation_size`` would wait for a table someone holds locked), and
    ``relpages`` is 0 after a COPY until the table is analysed."""
    with conn.cursor() as cur:
        cur.execute("""SELECT relname, n_live_tup FROM pg_stat_user_tables
                       WHERE schemaname = %s""", (schema_name,))
        rows = cur.fetchall()
    conn.rollback()
    width = {t.name: len(t.names) for t in TABLES}
    return {name: int(n) * width.get(name, 1) for name, n in rows}


def plan(conn: Any, schema_name: str, builds: Iterable[Build] | None = None,
         fk: str = FK_NOT_VALID, finish: bool = False,
         first: Mapping[str, Sequence[Sequence[sql.Composable]]] | None = None
         ) -> list[Step]:
    """The steps making the missing builds of ``builds`` (default: all), in the order
    of preference of the scheduler: q3c indexes and CLUSTER first (the table's other
    builds wait for them), then keys, then the largest tables first; with ``finish``
    also CLUSTER and ANALYZE, after the work ``first`` (:func:`finishing`), which
    starts first.  A build whose dependency is neither
    present nor among ``builds`` is refused (ValueError)."""
    catalog = present(conn, schema_name)
    wanted = list(schema_builds() if builds is None else builds)
    todo = [b for b in wanted if catalog_state(b, catalog) != DONE]
    if finish:
        todo = finishing(todo, first=first)
    names = {b.name for b in todo}
    for b in todo:
        absent = [d for d in b.depends if catalog.get(d) != DONE and d not in names]
        if absent:
            raise ValueError(f"{b.name} needs {', '.join(absent)}, which {schema_name} "
                             f"lacks and which is not to be built")
    sizes = _sizes(conn, schema_name)
    steps = [s for b in todo for s in b.steps(schema_name, fk, catalog_state(b, catalog))]
    return sorted(steps, key=lambda s: (
        0 if s.build.kind in (FIRST, Q3C, CLUSTER) else 1 if s.build.kind in KEY_KINDS
        else 2, -sizes.get(s.build.table, 0)))


def build_missing(dsn: str | None, schema_name: str, builds: Iterable[Build] | None = None,
                  connections: int = 3, parallel_workers: int = 2,
                  maintenance_work_mem: str = "1GB", fk: str = FK_NOT_VALID,
                  check: str = CHECK_ON_FAILURE, settings: Mapping[str, str] | None = None,
                  progress: Callable[[str, float], None] | None = None,
                  finish: bool = False,
                  first: Mapping[str, Sequence[Sequence[sql.Composable]]] | None = None
                  ) -> dict[str, float]:
    """Build what ``schema_name`` lacks of ``builds`` (default: every build of the
    schema) on ``connections`` sessions at once; returns ``{build: seconds}``.

    A step starts when the builds it depends on are done and when no running step holds
    a conflicting lock; each step is its own transaction (a run killed at any point
    leaves every build done, absent or not yet validated; calling this again finishes
    the work).  Every session gets :func:`session_settings`; ``fk`` is
    :data:`~specprod_db.db.builds.FK_NOT_VALID` or
    :data:`~specprod_db.db.builds.FK_DIRECT`; ``check`` is :data:`CHECK_ON_FAILURE`
    (look for duplicates or orphans once the server refused a key) or
    :data:`CHECK_BEFORE` (look first).  ``progress(step name, seconds)`` is called after
    each step.  ``finish``: the end of a bulk load, CLUSTER and ANALYZE too, and the
    caller's work ``first`` on a table before its builds (:func:`finishing`), scheduled
    with the builds.  When rows are refused, the other builds go on (but those depending on
    the refused one) and one :class:`KeyViolation` names them all at the end; a lost
    server (:class:`~specprod_db.errors.DatabaseLost`) or any other error stops the
    scheduling, lets the running steps finish, and is raised.
    """
    if check not in (CHECK_BEFORE, CHECK_ON_FAILURE):
        raise ValueError(f"check {check!r}: {CHECK_BEFORE!r} or {CHECK_ON_FAILURE!r}")
    if connections < 1:
        raise ValueError("connections must be at least 1")
    conns = []
    seconds: dict[str, float] = {}
    try:
        first_conn = connect(dsn, application_name="specprod-db build")
        conns.append(first_conn)
        pending = plan(first_conn, schema_name, builds, fk, finish, first)
        if not pending:
            return seconds
        while len(conns) < min(connections, len(pending)):
            conns.append(connect(dsn, application_name="specprod-db build"))
        values = session_settings(parallel_workers, maintenance_work_mem, settings)
        for conn in conns:
            with conn.cursor() as cur:
                for name, value in values.items():
                    cur.execute("SELECT set_config(%s, %s, false)", (name, value))
            conn.commit()
        _schedule(conns, schema_name, pending, check, progress, seconds)
    except psycopg2.Error as err:
        lost = server_stop(err, conns[-1] if conns else None, doing="planning the builds")
        if lost is not None:
            raise lost from None
        raise
    finally:
        for conn in conns:
            conn.close()
    return seconds


def _schedule(conns: list[Any], schema_name: str, pending: list[Step], check: str,
              progress: Callable[[str, float], None] | None,
              seconds: dict[str, float]) -> None:
    """Run ``pending`` on ``conns`` (see :func:`build_missing`)."""
    building = {s.build.name for s in pending}
    finished: set[str] = set()        # step names
    refused: dict[str, KeyViolation] = {}
    fatal: BaseException | None = None
    idle = list(conns)
    running: dict[Future[float], tuple[Step, Any]] = {}

    built: set[str] = set()           # builds whose every step is done
    order: dict[str, list[str]] = {}  # build -> its step names, in order
    for s in pending:
        order.setdefault(s.build.name, []).append(s.name)

    def ready(step: Step) -> bool:
        b = step.build
        before = order[b.name][:order[b.name].index(step.name)]
        if not set(before) <= finished:
            return False  # an earlier step of the same build is not done
        if any(d in building and d not in built for d in b.depends):
            return False
        return not any(step.conflicts(r) for r, _ in running.values())

    with ThreadPoolExecutor(max_workers=len(conns)) as pool:
        try:
            while True:
                if fatal is None:
                    for step in [s for s in pending if ready(s)]:
                        if not idle:
                            break
                        if not ready(step):   # a step started in this pass conflicts
                            continue
                        conn = idle.pop()
                        pending.remove(step)
                        running[pool.submit(_run_step, conn, schema_name, step, check)] = \
                            (step, conn)
                if not running:
                    break
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for future in done:
                    step, conn = running.pop(future)
                    idle.append(conn)
                    b = step.build
                    try:
                        took = future.result()
                    except KeyViolation as err:
                        refused[b.name] = err
                        _forget(pending, b.name)
                        continue
                    except BaseException as err:
                        if fatal is None:
                            fatal = err
                        continue
                    finished.add(step.name)
                    seconds[b.name] = seconds.get(b.name, 0.0) + took
                    if step.name == order[b.name][-1]:
                        built.add(b.name)
                    if progress is not None:
                        progress(step.name, took)
        except BaseException:
            for _, conn in running.values():
                conn.cancel()
            raise
    if fatal is not None:
        raise fatal
    if refused:
        found = {k: v for err in refused.values() for k, v in err.found.items()}
        raise KeyViolation("; ".join(str(err) for err in refused.values()), found)
    if pending:  # pragma: no cover - a dependency the plan did not see
        raise RuntimeError(f"builds left unscheduled: {', '.join(s.name for s in pending)}")


def _forget(pending: list[Step], refused: str) -> None:
    """Remove from ``pending`` the steps of ``refused`` and of every build depending on it
    (directly or not): they cannot be made."""
    gone = {refused}
    changed = True
    while changed:
        changed = False
        for s in list(pending):
            if s.build.name in gone or gone & set(s.build.depends):
                pending.remove(s)
                if s.build.name not in gone:
                    gone.add(s.build.name)
                    changed = True
