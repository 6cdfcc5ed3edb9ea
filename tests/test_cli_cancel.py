"""The server stopping the work (issue 20): ``statement_timeout``, ``pg_cancel_backend``,
``idle_in_transaction_session_timeout``, each on a real server, 1 and 3 ranks.

Each time: exit 3 (the database), one line naming the cause and the setting, no
traceback, the interrupted tile rolled back (tiles committed before are whole), and a
plain rerun reaches what a fresh load holds.  The settings reach the loader's sessions
through ``PGOPTIONS``, as a DBA's ``ALTER ROLE ... SET`` would.
"""
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg2
import pytest

from conftest import LOAD_TIMEOUT, dump_schema, fresh_load_dump, mock_env, query
from specprod_db.db import lock

SCRIPT = str(Path(sys.executable).parent / "specprod-db")
TILES = [100, 1000, 1001, 40000, 60000]  # write order of the small production


@pytest.fixture(scope="module")
def reference(pg_dsn, small_production, mpiexec, tmp_path_factory):
    return fresh_load_dump(pg_dsn, mpiexec, small_production[0],
                           tmp_path_factory.mktemp("refstage"))


def errors(stderr):
    return [line for line in stderr.splitlines() if line.strip() and not re.match(
        r"(\[rank \d+/\d+\] )?(DEBUG|INFO|WARNING|ERROR|CRITICAL):", line)]


def start_load(mpiexec, ranks, name, stage, env, *extra):
    return subprocess.Popen([mpiexec, "-n", str(ranks), SCRIPT, "load", "--schema", name,
                             "--stage-dir", str(stage), *extra], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def finish(proc, timeout=LOAD_TIMEOUT):
    """The process's (stdout, stderr) once it exits; killed (every rank) if it has not
    within ``timeout`` seconds."""
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


class TableLock:
    """A second session holding ``ACCESS EXCLUSIVE`` on ``S.ztile`` (taken now): the
    loader's first write of a tile waits for it, inside a running statement."""

    def __init__(self, dsn, schema_name):
        self.conn = psycopg2.connect(dsn)
        with self.conn.cursor() as cur:
            cur.execute(f'LOCK TABLE "{schema_name}".ztile IN ACCESS EXCLUSIVE MODE')
            cur.execute("SELECT pg_backend_pid()")
            self.pid = cur.fetchone()[0]

    def waiting(self, dsn):
        """pids of the sessions waiting for this lock (asked from another session: in
        the holder's transaction pg_stat_activity is the snapshot first read)."""
        return [pid for (pid,) in query(dsn, "SELECT pid FROM pg_stat_activity WHERE "
                                             "%s = ANY(pg_blocking_pids(pid))", (self.pid,))]

    def release(self):
        if not self.conn.closed:
            self.conn.rollback()
            self.conn.close()


def assert_stopped(proc, out, err, cause, pg_dsn, name, committed=()):
    """Exit 3, one line naming ``cause``, and only ``committed`` tiles in the schema."""
    assert proc.returncode == 3, err
    assert "Traceback" not in err and "internal error" not in err, err
    lines = errors(err)
    assert len(lines) == 1 and lines[0].startswith("specprod-db: load interrupted: "), err
    assert cause in lines[0], lines[0]
    assert "rerun the load" in lines[0]
    state = dict(query(pg_dsn, f'SELECT tileid, status FROM "{name}".tile_state'))
    assert state == {t: "loaded" for t in committed}, state
    held = {t for (t,) in query(pg_dsn, f'SELECT DISTINCT tileid FROM "{name}".ztile')}
    assert held == set(committed)
    return lines[0]


def rerun_converges(mpiexec, ranks, pg_dsn, name, prod, stage, reference):
    r = subprocess.run([mpiexec, "-n", str(ranks), SCRIPT, "load", "--schema", name,
                        "--stage-dir", str(stage)], env=mock_env(prod, SPECPROD_DB_DSN=pg_dsn),
                       capture_output=True, text=True, timeout=LOAD_TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert dump_schema(pg_dsn, name) == reference


@pytest.mark.parametrize("ranks, extra", [(1, []), (3, []), (4, ["--writers", "2"])])
def test_statement_timeout(ranks, extra, pg_dsn, schemas, small_production, mpiexec,
                           tmp_path, reference):
    """With --writers 2 the writer ranks' statements are cancelled: the run stops too."""
    name, prod, stage = schemas(), small_production[0], tmp_path / "stage"
    lock = TableLock(pg_dsn, name)
    try:
        env = mock_env(prod, SPECPROD_DB_DSN=pg_dsn,
                       PGOPTIONS="-c statement_timeout=1500")
        proc = start_load(mpiexec, ranks, name, stage, env, *extra)
        out, err = finish(proc)
    finally:
        lock.release()
    line = assert_stopped(proc, out, err, "statement_timeout = 1500ms expired", pg_dsn, name)
    assert re.search(r"statement cancelled by the server while writing tile "
                     + ("100:" if not extra else r"\d+:"), line), line
    rerun_converges(mpiexec, ranks, pg_dsn, name, prod, stage, reference)


@pytest.mark.parametrize("ranks", [1, 3])
def test_pg_cancel_backend(ranks, pg_dsn, schemas, small_production, mpiexec, tmp_path,
                           reference):
    name, prod, stage = schemas(), small_production[0], tmp_path / "stage"
    lock, proc = TableLock(pg_dsn, name), None
    try:
        proc = start_load(mpiexec, ranks, name, stage, mock_env(prod, SPECPROD_DB_DSN=pg_dsn))
        end = time.time() + LOAD_TIMEOUT
        while not (waiting := lock.waiting(pg_dsn)):
            assert proc.poll() is None and time.time() < end, "the load never waited"
            time.sleep(0.1)
        assert query(pg_dsn, "SELECT pg_cancel_backend(%s)", (waiting[0],)) == [(True,)]
        out, err = finish(proc)
    finally:
        lock.release()
        if proc is not None and proc.returncode is None:  # the test failed: no leftover
            finish(proc, timeout=60)
    line = assert_stopped(proc, out, err, "a cancel request (pg_cancel_backend", pg_dsn,
                          name)
    assert "while writing tile 100" in line
    rerun_converges(mpiexec, ranks, pg_dsn, name, prod, stage, reference)


@pytest.mark.parametrize("ranks", [1, 3])
def test_idle_in_transaction_session_timeout(ranks, pg_dsn, schemas, small_production,
                                             mpiexec, tmp_path, reference):
    """The writer idles inside tile 1000's transaction (paused after its COPY) longer
    than the server allows: the server ends the session; tile 100 stays whole."""
    name, prod, stage = schemas(), small_production[0], tmp_path / "stage"
    faults = tmp_path / "faults"
    faults.mkdir()
    env = mock_env(prod, SPECPROD_DB_DSN=pg_dsn, SPECPROD_DB_FAULT="pause:1000",
                   SPECPROD_DB_FAULT_DIR=faults,
                   PGOPTIONS="-c idle_in_transaction_session_timeout=1000")
    proc = start_load(mpiexec, ranks, name, stage, env)
    try:
        end = time.time() + LOAD_TIMEOUT
        while not (faults / "paused-1000").exists():
            assert proc.poll() is None and time.time() < end, "the load never paused"
            time.sleep(0.05)
        # the server ends the idle session: its advisory lock goes with it
        while query(pg_dsn, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                            "AND classid = %s AND objid = %s",
                    (lock.LOCK_NAMESPACE, lock.lock_key(name)))[0][0]:
            assert time.time() < end
            time.sleep(0.1)
    finally:
        (faults / "resume-1000").touch()
    out, err = finish(proc)
    line = assert_stopped(proc, out, err, "idle_in_transaction_session_timeout = 1s",
                          pg_dsn, name, committed=[100])
    assert "database connection lost while writing tile 1000" in line
    rerun_converges(mpiexec, ranks, pg_dsn, name, prod, stage, reference)
