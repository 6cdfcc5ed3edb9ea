"""stdout is a command's result, stderr its log; every ``--help`` works.

Every command runs through the installed console script (``.venv/bin/specprod-db``), as
an operator or cron runs it, and its stdout is parsed alone: a log line there breaks
``specprod-db status --json | jq``.
"""
import argparse
import json
import os
import secrets
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fitsio
import numpy as np
import pytest

from conftest import LOAD_TIMEOUT, init, mock_env, query, run_mpi

SCRIPT = str(Path(sys.executable).parent / "specprod-db")
LOG_LEVELS = ("DEBUG:", "INFO:", "WARNING:", "ERROR:", "CRITICAL:")


def script(argv, env=None, timeout=120):
    """``specprod-db argv...`` through the console script; the CompletedProcess."""
    return subprocess.run([SCRIPT, *map(str, argv)], env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def log_lines(text):
    return [line for line in text.splitlines() if line.startswith(LOG_LEVELS)
            or line.startswith(tuple(f"[rank {r}" for r in range(10)))]


# --- every --help ---------------------------------------------------------------------

def command_paths():
    """Every command and sub-command, from the argparse tree itself (lazy sub-commands
    loaded), so a command added later is covered without touching this test."""
    from specprod_db import cli

    def walk(parser, path):
        yield path
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    if hasattr(sub, "load"):
                        sub.load()
                    yield from walk(sub, path + [name])
    return list(walk(cli.parser(), []))


def test_every_help_works():
    paths = command_paths()
    names = {" ".join(p) for p in paths}
    # the tree really is walked: nested sub-commands are found
    assert {"", "load", "maintain", "cluster", "vac", "vac load", "vac list",
            "vac drop"} <= names, names
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda p: (p, script([*p, "--help"])), paths))
    bad = [(" ".join(p), r.returncode, r.stderr[-300:]) for p, r in results
           if r.returncode != 0 or r.stderr or not r.stdout.startswith("usage: specprod-db")]
    assert not bad, bad


# --- stdout: the result alone; stderr: the log ----------------------------------------

@pytest.fixture(scope="module")
def loaded(pg_dsn, small_production, mpiexec, tmp_path_factory):
    """A schema holding the small production (its tiles file has duplicate lines: the
    planner logs a WARNING each time it reads it); dropped afterwards."""
    prod = small_production[0]
    name = "test_" + secrets.token_hex(4)
    stage = tmp_path_factory.mktemp("stage")
    init(pg_dsn, name)
    run_mpi(mpiexec, 1, [SCRIPT, "load", "--schema", name, "--stage-dir", stage],
            env=mock_env(prod, SPECPROD_DB_DSN=pg_dsn), timeout=LOAD_TIMEOUT)
    yield name, prod, stage
    query(pg_dsn, f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


#: every command with --json, and what it needs on its command line
JSON_COMMANDS = {
    "status": [], "verify": [], "history": [], "maintain": ["--cluster", "never"],
    "migrate": ["--dry-run"], "vac list": [],
}


@pytest.mark.parametrize("command", sorted(JSON_COMMANDS))
def test_json_is_pure_json_with_the_log_on_stderr(command, loaded, pg_dsn):
    name, prod, _ = loaded
    env = mock_env(prod, SPECPROD_DB_DSN=pg_dsn)
    if command == "verify":  # it then warns that it compares no input file
        env.pop("DESI_ROOT")
    r = script([*command.split(), "--json", "-v", "--schema", name,
                *JSON_COMMANDS[command]], env=env)
    assert r.returncode in (0, 1), r.stderr
    json.loads(r.stdout)  # stdout alone parses: nothing else was printed there
    logged = log_lines(r.stderr)
    assert any(line.startswith("DEBUG:") and "connected to PostgreSQL" in line
               for line in logged), r.stderr  # -v: the log is on, on stderr
    if command in ("status", "verify"):
        assert any(line.startswith("WARNING:") for line in logged), r.stderr


def test_status_json_quiet(loaded, pg_dsn):
    name, prod, _ = loaded
    r = script(["status", "--json", "-q", "--schema", name],
               env=mock_env(prod, SPECPROD_DB_DSN=pg_dsn))
    assert json.loads(r.stdout)["schema"] == name
    logged = log_lines(r.stderr)
    assert logged and all(line.startswith("WARNING:") for line in logged), r.stderr


@pytest.mark.parametrize("ranks", [1, 3])
def test_load_report_on_stdout_log_on_stderr(ranks, pg_dsn, schemas, small_production,
                                            mpirun, tmp_path):
    """The workers log too (a missing petal, the tasks' progress): on stderr.  With -q
    no INFO line is left, on any rank."""
    name, prod = schemas(), small_production[0]
    env = mock_env(prod, SPECPROD_DB_DSN=pg_dsn)
    r = mpirun(ranks, [SCRIPT, "load", "--schema", name, "--stage-dir", tmp_path / "s"],
               env=env)
    assert r.stdout.startswith("load run ") and not log_lines(r.stdout), r.stdout
    assert any(line.startswith("INFO:") for line in log_lines(r.stderr)), r.stderr
    if ranks > 1:  # a worker's lines are tagged with its rank
        assert "[rank " in r.stderr, r.stderr
    r = mpirun(ranks, [SCRIPT, "load", "-q", "--schema", name, "--stage-dir",
                       tmp_path / "s"], env=env)
    assert r.stdout.startswith("load run ") and not log_lines(r.stdout), r.stdout
    logged = log_lines(r.stderr)
    assert logged and all(line.startswith("WARNING:") for line in logged), r.stderr
    r = script(["plan", "--schema", name], env=env)  # one process: plan is not MPI-aware
    assert r.returncode == 0, r.stderr
    assert r.stdout.lstrip().startswith("TILEID") and not log_lines(r.stdout), r.stdout
    assert any(line.startswith("WARNING:") for line in log_lines(r.stderr)), r.stderr


@pytest.mark.parametrize("ranks", [1, 3])
def test_vac_load_quiet_on_every_rank(ranks, loaded, pg_dsn, mpirun, tmp_path):
    name, prod, _ = loaded
    for k, f in enumerate(("a.fits", "b.fits")):
        rows = np.zeros(5, dtype=[("TARGETID", "i8"), ("X", "f4")])
        rows["TARGETID"] = np.arange(1, 6) + 5 * k
        fitsio.write(str(tmp_path / f), rows)
    vac = f"q{ranks}"
    argv = [SCRIPT, "vac", "load", "--schema", name, "--name", vac, "--no-fk",
            "--stage-dir", tmp_path / "stage", tmp_path / "a.fits", tmp_path / "b.fits"]
    env = dict(os.environ, SPECPROD_DB_DSN=pg_dsn)
    r = mpirun(ranks, argv, env=env)
    assert r.stdout.startswith(f"{name}.vac_{vac}: 10 rows"), r.stdout
    assert any(line.startswith("INFO:") for line in log_lines(r.stderr)), r.stderr
    r = mpirun(ranks, argv[:3] + ["-q"] + argv[3:], env=env)
    assert r.stdout.startswith(f"{name}.vac_{vac}: 10 rows"), r.stdout
    assert not log_lines(r.stderr), r.stderr


def test_errors_are_one_line_on_stderr(pg_dsn):
    r = script(["status", "--json", "--schema", "no_such_schema_here"],
               env=dict(os.environ, SPECPROD_DB_DSN=pg_dsn))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        "specprod-db: schema no_such_schema_here does not exist"], r.stderr


def test_mock_refusal_is_on_stderr(tmp_path):
    out = tmp_path / "static"
    assert script(["mock", out, "--small", "--static", "fuji", "--tiles", "2"]).returncode == 0
    r = script(["mock", out, "--advance"])
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("specprod-db mock: "), r.stderr
