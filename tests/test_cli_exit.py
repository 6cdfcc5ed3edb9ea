"""Exit statuses as doc/daily.md's table states them, case by case (1 and 3 ranks where
MPI is involved), through the commands as an operator runs them.

* configuration and argument errors (``DESI_ROOT`` unset, a bad ``--tiles``, a schema
  name PostgreSQL cannot hold, in every command taking one) are refused: exit 2, one
  line, nothing written;
* ``init`` refused by the database (a role without CREATE) is one line and exit 2; a role
  owning an existing schema may init it without CREATE on the database;
* the database lost while the run plans is exit 3 (the database), not 4 (a bug);
* a full stage disk while tiles are staged fails those tiles (recorded, exit 1, one line
  each, no traceback) and a rerun loads them; full before anything starts, exit 2.
"""
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg2
import pytest

from conftest import LOAD_TIMEOUT, dump_schema, fresh_load_dump, mock_env, query
from specprod_db.db import lock

SCRIPT = str(Path(sys.executable).parent / "specprod-db")
TILES = [100, 1000, 1001, 40000, 60000]  # write order of the small production


def script(argv, env=None, timeout=120):
    return subprocess.run([SCRIPT, *map(str, argv)], env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def errors(stderr):
    """The lines of stderr that are not log lines (a command's own messages)."""
    return [line for line in stderr.splitlines() if line.strip() and not re.match(
        r"(\[rank \d+/\d+\] )?(DEBUG|INFO|WARNING|ERROR|CRITICAL):", line)]


def load_argv(mpiexec, ranks, name, stage, *extra):
    return [mpiexec, "-n", str(ranks), SCRIPT, "load", "--schema", name, "--stage-dir",
            str(stage), *extra]


def run(argv, env, timeout=LOAD_TIMEOUT):
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def nothing_written(dsn, name):
    assert query(dsn, f'SELECT count(*) FROM "{name}".load_run')[0][0] == 0
    assert query(dsn, f'SELECT count(*) FROM "{name}".tile')[0][0] == 0


@pytest.fixture(scope="module")
def reference(pg_dsn, small_production, mpiexec, tmp_path_factory):
    return fresh_load_dump(pg_dsn, mpiexec, small_production[0],
                           tmp_path_factory.mktemp("refstage"))


# --- configuration and argument errors: exit 2 -----------------------------------------

@pytest.mark.parametrize("ranks", [1, 3])
@pytest.mark.parametrize("case", ["DESI_ROOT unset", "bad --tiles", "schema missing"])
def test_configuration_errors_are_refused(case, ranks, pg_dsn, schemas, small_production,
                                          mpiexec, tmp_path):
    name, prod = schemas(), small_production[0]
    env, extra = mock_env(prod, SPECPROD_DB_DSN=pg_dsn), []
    if case == "DESI_ROOT unset":
        for var in ("DESI_ROOT", "DESI_SPECTRO_REDUX", "SPECPROD"):
            env.pop(var, None)
        expect = "DESI_ROOT"
    elif case == "bad --tiles":
        extra, expect = ["--tiles", "100,abc"], "--tiles must be a comma-separated list"
    else:
        name = name + "_never_made"
        expect = f"schema {name} does not exist; run 'specprod-db init"
    r = run(load_argv(mpiexec, ranks, name, tmp_path / "stage", *extra), env)
    assert r.returncode == 2, r.stderr
    assert len(errors(r.stderr)) == 1 and expect in r.stderr, r.stderr  # once, not per rank
    if case != "schema missing":
        nothing_written(pg_dsn, name)


def schema_commands():
    """(command path, parser) of every command taking --schema, from the argparse tree."""
    import argparse

    from specprod_db import cli

    def walk(parser, path):
        if any("--schema" in a.option_strings for a in parser._actions):
            yield path
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    if hasattr(sub, "load"):
                        sub.load()
                    yield from walk(sub, path + [sub_name])
    return list(walk(cli.parser(), []))


#: what a command needs besides --schema to get as far as checking it
EXTRA = {"combine": ["src"], "report": ["--out", "/nonexistent"],
         "vac load": ["--name", "x", "x.fits"], "vac drop": ["--name", "x"]}
TOO_LONG = ["a" * 64, "é" * 32]  # 64 bytes each; "é" * 31 + "a" is 63 and accepted


def test_schema_names_refused_in_every_command(pg_dsn):
    commands = schema_commands()
    assert {"init", "load", "plan", "status", "combine", "vac load"} <= \
        {" ".join(c) for c in commands}
    env = dict(os.environ, SPECPROD_DB_DSN=pg_dsn)
    cases = [(c, bad, EXTRA.get(" ".join(c), [])) for c in commands
             for bad in ["", *TOO_LONG]]
    cases.append((["combine"], "dest", ["a" * 64]))  # its sources are schema names too
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda case: (case, script(
            [*case[0], "--schema", case[1], *case[2]], env=env)), cases))
    bad = [(" ".join(case[0]), case[1], r.returncode, r.stderr[-300:])
           for case, r in results
           if r.returncode != 2 or "schema name" not in r.stderr or r.stdout]
    assert not bad, bad
    long_message = [r.stderr for case, r in results if case[1] == "a" * 64][0]
    assert "64 bytes long" in long_message and "at most 63" in long_message


def test_longest_schema_name_is_kept_whole(pg_dsn):
    name = "t" + secrets.token_hex(4) + "é" * 27  # 9 + 54 = 63 bytes
    assert len(name.encode()) == 63
    try:
        r = script(["init", "--schema", name, "--no-grant"],
                   env=dict(os.environ, SPECPROD_DB_DSN=pg_dsn))
        assert r.returncode == 0, r.stderr
        assert query(pg_dsn, "SELECT count(*) FROM pg_namespace WHERE nspname = %s",
                     (name,))[0][0] == 1
    finally:
        query(pg_dsn, f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def test_unreachable_database_is_refused(tmp_path):
    r = script(["status", "--schema", "daily", "--db",
                f"host={tmp_path} port=1 dbname=x user=x connect_timeout=5"])
    assert r.returncode == 2 and r.stdout == ""
    assert errors(r.stderr) == [line for line in r.stderr.splitlines() if line.strip()]
    assert len(errors(r.stderr)) == 1 and "cannot connect to PostgreSQL" in r.stderr


# --- init ------------------------------------------------------------------------------

@pytest.fixture
def role(pg_dsn):
    """A login role with no CREATE on the database; ``(name, its dsn)``; dropped after."""
    name = "r_" + secrets.token_hex(4)
    query(pg_dsn, f'CREATE ROLE "{name}" LOGIN')
    dsn = re.sub(r"user=\S+", f"user={name}", pg_dsn) if "user=" in pg_dsn \
        else f"{pg_dsn} user={name}"
    yield name, dsn
    query(pg_dsn, f'DROP OWNED BY "{name}" CASCADE; DROP ROLE "{name}"')


def test_init_refused_by_the_database_is_one_line(role, pg_dsn):
    name, dsn = role
    schema_name = "test_" + secrets.token_hex(4)
    r = script(["init", "--schema", schema_name, "--no-grant", "--db", dsn])
    assert r.returncode == 2, r.stderr
    assert errors(r.stderr) == [f"specprod-db: init of schema {schema_name} refused by the "
                                f"database: InsufficientPrivilege: permission denied for "
                                f"database {query(pg_dsn, 'SELECT current_database()')[0][0]}"
                                ], r.stderr
    assert query(pg_dsn, "SELECT count(*) FROM pg_namespace WHERE nspname = %s",
                 (schema_name,))[0][0] == 0


def test_init_of_an_owned_schema_needs_no_create_on_the_database(role, pg_dsn):
    name, dsn = role
    schema_name = "test_" + secrets.token_hex(4)
    query(pg_dsn, f'CREATE SCHEMA "{schema_name}" AUTHORIZATION "{name}"')
    try:
        for created in ("created", "already up to date"):  # twice: idempotent
            r = script(["init", "--schema", schema_name, "--no-grant", "--db", dsn])
            assert r.returncode == 0, r.stderr
            assert f"schema {schema_name} {created}" in r.stderr
        assert query(pg_dsn, "SELECT count(*) FROM pg_tables WHERE schemaname = %s AND "
                             "tableowner = %s", (schema_name, name))[0][0] > 10
    finally:
        query(pg_dsn, f'DROP SCHEMA IF EXISTS "{schema_name}" CASCADE')


# --- the database lost while the run plans: exit 3 -------------------------------------

@pytest.mark.parametrize("ranks", [1, 3])
def test_database_lost_while_planning(ranks, pg_dsn, schemas, small_production, mpiexec,
                                      tmp_path):
    name, prod = schemas(), small_production[0]
    faults = tmp_path / "faults"
    faults.mkdir()
    env = mock_env(prod, SPECPROD_DB_DSN=pg_dsn, SPECPROD_DB_FAULT="pause:plan",
                   SPECPROD_DB_FAULT_DIR=faults)
    proc = subprocess.Popen(load_argv(mpiexec, ranks, name, tmp_path / "stage"), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        end = time.time() + LOAD_TIMEOUT
        while not (faults / "paused-plan").exists():
            assert proc.poll() is None and time.time() < end, proc.communicate()
            time.sleep(0.05)
        terminated = query(pg_dsn, "SELECT pg_terminate_backend(l.pid) FROM pg_locks l "
                                   "WHERE l.locktype = 'advisory' AND l.classid = %s AND "
                                   "l.objid = %s AND l.granted",
                           (lock.LOCK_NAMESPACE, lock.lock_key(name)))
        assert terminated == [(True,)]
        (faults / "resume-plan").touch()
        out, err = proc.communicate(timeout=LOAD_TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 3, err
    assert "Traceback" not in err and len(errors(err)) == 1, err
    assert "load interrupted: database connection lost" in err and "rerun" in err, err
    nothing_written(pg_dsn, name)


# --- a full stage disk -----------------------------------------------------------------

VICTIM = 1001


@pytest.mark.parametrize("ranks", [1, 3])
def test_full_stage_disk_fails_the_tiles_it_stages(ranks, pg_dsn, schemas, small_production,
                                                   mpiexec, tmp_path, reference):
    """ENOSPC injected while the victim's stage file is half written (faults.py): that
    tile fails as an environment failure (not an internal error), recorded, its
    temporary file gone; the other tiles load; a rerun loads it."""
    name, prod, stage = schemas(), small_production[0], tmp_path / "stage"
    env = mock_env(prod, SPECPROD_DB_DSN=pg_dsn,
                   SPECPROD_DB_FAULT=f"enospc:stage-tile-{VICTIM}.h5")
    r = run(load_argv(mpiexec, ranks, name, stage), env)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    state = dict(query(pg_dsn, f'SELECT tileid, status FROM "{name}".tile_state'))
    assert state == {**{t: "loaded" for t in TILES if t != VICTIM}, VICTIM: "failed"}, state
    error = query(pg_dsn, f'SELECT error FROM "{name}".tile_state WHERE tileid = %s',
                  (VICTIM,))[0][0]
    assert f"tile-{VICTIM}.h5" in error and "No space left on device" in error, error
    assert not [f for f in os.listdir(stage) if ".tmp-" in f]
    r = run(load_argv(mpiexec, ranks, name, stage), mock_env(prod, SPECPROD_DB_DSN=pg_dsn))
    assert r.returncode == 0, r.stderr
    assert dump_schema(pg_dsn, name) == reference


@pytest.fixture
def tiny_disk(tmp_path):
    """A 300 KiB tmpfs (real ENOSPC): root only; skipped where mounting is not allowed."""
    where = tmp_path / "tiny"
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(where)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=True)


@pytest.mark.parametrize("ranks", [1, 3])
def test_real_full_disk(ranks, tiny_disk, pg_dsn, schemas, small_production, mpiexec):
    """On a real full disk, h5py's own file driver crashed the process (SIGSEGV closing
    the half-written file); now the tiles fail, each with one line."""
    name, prod = schemas(), small_production[0]
    env = mock_env(prod, SPECPROD_DB_DSN=pg_dsn)
    r = run(load_argv(mpiexec, ranks, name, tiny_disk / "stage"), env)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    failed = query(pg_dsn, f"SELECT tileid, error FROM \"{name}\".tile_state WHERE "
                           f"status = 'failed'")
    assert failed and all("No space left on device" in e for _, e in failed), failed
    assert query(pg_dsn, f"SELECT count(*) FROM \"{name}\".tile_state WHERE "
                         f"status = 'internal_error'")[0][0] == 0
    # full before anything starts: refused, nothing written
    with open(tiny_disk / "filler", "wb") as f:
        try:
            f.write(b"\0" * (400 << 10))
        except OSError:
            pass
    other = schemas()
    r = run(load_argv(mpiexec, ranks, other, tiny_disk / "stage2"), env)
    assert r.returncode == 2 and "No space left on device" in r.stderr, r.stderr
    nothing_written(pg_dsn, other)
