"""Shared fixtures: a real PostgreSQL with q3c, a fresh schema per test, and MPI.

Database: ``SPECPROD_DB_TEST_DSN`` if set, else the configured server (``SPECPROD_DB_DSN``
or PGHOST/PGPORT/PGDATABASE/PGSERVICE), else the private cluster, started on demand
(``specprod_db.devdb.pgcluster.ensure_server``). No database mocks: if no server can be had,
the tests needing one fail saying what was checked.
"""
import os
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest

from specprod_db.devdb import pgcluster

_server = {}


def _get_dsn():
    """The test server's conninfo, computed once per process (xdist: per worker)."""
    if "dsn" not in _server:
        try:
            dsn = os.environ.get("SPECPROD_DB_TEST_DSN", "").strip()
            if dsn:
                pgcluster.ensure_q3c(dsn, where="SPECPROD_DB_TEST_DSN")
            else:
                dsn = pgcluster.ensure_server()
            _server["dsn"] = dsn
        except pgcluster.ClusterError as e:
            _server["dsn"], _server["error"] = None, str(e)
    return _server["dsn"]


def pytest_addoption(parser):
    """``--fuzz-seed S`` (repeatable), ``--fuzz-steps N``, ``--fuzz-ranks R``: which
    mornings ``tests/test_fuzz.py`` runs instead of its short default (tests/morningfuzz.py)."""
    group = parser.getgroup("fuzz", "differential fuzzer of mornings (tests/test_fuzz.py)")
    group.addoption("--fuzz-seed", action="append", type=int, default=[],
                    help="run these seeds (repeat the option) instead of the default ones")
    group.addoption("--fuzz-steps", type=int, default=None, help="mornings per seed")
    group.addoption("--fuzz-ranks", type=int, default=None, help="ranks of the morning loads")


def pytest_report_header(config):
    dsn = _get_dsn()
    from specprod_db.conninfo import mask
    if dsn is None:
        return [f"database: unavailable: {mask(_server['error'])}"]
    import psycopg2
    with psycopg2.connect(dsn, connect_timeout=30) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_setting('server_version'), "
                    "(SELECT extversion FROM pg_extension WHERE extname = 'q3c')")
        version, q3c = cur.fetchone()
    conn.close()
    return [f"database: PostgreSQL {version}, q3c {q3c}: {mask(dsn)}"]


# --- database --------------------------------------------------------------------------

@pytest.fixture(scope="session")
def pg_dsn():
    """libpq conninfo of a server with q3c in its database; started if need be."""
    dsn = _get_dsn()
    if dsn is None:
        pytest.fail(f"no PostgreSQL server for the tests: {_server['error']}", pytrace=False)
    return dsn


@pytest.fixture
def schema_name(pg_dsn):
    """A fresh, random schema name ``test_<8 hex>`` (not created here); the schema is
    dropped with CASCADE after the test, whoever created it."""
    import psycopg2
    from psycopg2 import sql
    name = "test_" + secrets.token_hex(4)
    yield name
    conn = psycopg2.connect(pg_dsn, connect_timeout=30)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(name)))
    finally:
        conn.close()


# --- MPI -------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def mpiexec():
    """Path of ``mpiexec``: the venv's (from the ``mpich`` wheel), else the one on PATH."""
    local = Path(sys.executable).parent / "mpiexec"
    path = str(local) if os.access(local, os.X_OK) else shutil.which("mpiexec")
    if path is None:
        pytest.fail(f"no mpiexec next to {sys.executable} nor on PATH; install the "
                    f"`mpich` extra: pip install -e '.[test,mpich]' (make env)",
                    pytrace=False)
    return path


def run_mpi(mpiexec, n, argv, timeout=300, check=True, **kwargs):
    """Run ``mpiexec -n N argv...``, killing every rank if it exceeds ``timeout`` seconds
    (a deadlock fails the test instead of hanging CI). Returns the CompletedProcess
    (text output captured); with ``check``, a non-zero exit fails the test."""
    argv = [mpiexec, "-n", str(n), *map(str, argv)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, start_new_session=True,
                            **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"timed out after {timeout} s: {' '.join(argv)}\n--- stdout ---\n"
                    f"{out[-5000:]}\n--- stderr ---\n{err[-5000:]}", pytrace=False)
    result = subprocess.CompletedProcess(argv, proc.returncode, out, err)
    if check and proc.returncode != 0:
        pytest.fail(f"exit {proc.returncode}: {' '.join(argv)}\n--- stdout ---\n"
                    f"{out[-5000:]}\n--- stderr ---\n{err[-5000:]}", pytrace=False)
    return result


@pytest.fixture
def mpirun(mpiexec):
    """``mpirun(n, argv, timeout=300, check=True, env=..., cwd=...)``: :func:`run_mpi`
    with this session's ``mpiexec``."""
    def _run(n, argv, **kwargs):
        return run_mpi(mpiexec, n, argv, **kwargs)
    return _run


# --- fixtures of other parts of the project go below this line ------------------------


def tractor_files(prod):
    """Paths of a mock production's Legacy Surveys tractor files, sorted."""
    root = os.path.join(prod, "external", "legacysurvey", "dr9")
    out = []
    for region in ("north", "south"):
        for dirpath, _, names in os.walk(os.path.join(root, region, "tractor")):
            out += [os.path.join(dirpath, n) for n in names if n.endswith(".fits")]
    return sorted(out)


def mock_env(outdir, **extra):
    """The process environment plus the mock production's DESI variables and ``extra``."""
    from specprod_db.mock import environment
    env = dict(os.environ, **environment(outdir))
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.fixture(scope="session")
def small_production(tmp_path_factory):
    """A small mock production (``--small``), written once per session; copy before
    advancing it (``copy_production``)."""
    from specprod_db.mock import make_production
    outdir = tmp_path_factory.mktemp("mock") / "production"
    summary = make_production(str(outdir), small=True, seed=3)
    return str(outdir), summary


@pytest.fixture
def copy_production(small_production, tmp_path):
    """A private copy of the small production, safe to advance or damage."""
    def _copy(name="production"):
        return copy_mock(small_production[0], tmp_path / name)
    return _copy


def copy_mock(src, dest):
    """Copy the mock production ``src`` to ``dest`` (its ``env.sh``, which names the
    original tree, rewritten for the copy); returns ``dest`` as a string.  For fixtures
    of a wider scope than ``copy_production``."""
    shutil.copytree(src, dest, symlinks=True)
    env_sh = os.path.join(dest, "env.sh")
    with open(env_sh) as f:
        text = f.read().replace(str(src), str(dest))
    with open(env_sh, "w") as f:
        f.write(text)
    return str(dest)


def dump_schema(dsn, schema_name, tables=None):
    """Every row of every data table, ordered by primary key (for equality checks)."""
    import psycopg2
    from specprod_db import schema as _schema
    out = {}
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        for t in _schema.DATA_TABLES:
            if tables and t.name not in tables or t.name == "version":
                continue
            cur.execute(f'SELECT * FROM "{schema_name}".{t.name} ORDER BY '
                        + ", ".join(t.primary_key))
            out[t.name] = cur.fetchall()
    conn.close()
    return out


# --- running the CLI against a schema ---------------------------------------------------

CLI = [sys.executable, "-m", "specprod_db.cli"]
LOAD_TIMEOUT = 300


def init(dsn, schema_name):
    subprocess.run(CLI + ["init", "--schema", schema_name, "--db", dsn, "--no-grant"],
                   check=True, capture_output=True, timeout=120)


def load(mpirun, n, dsn, schema_name, prod, stage, *extra, check=True, env=None,
         command="load"):
    """``mpiexec -n N specprod-db load`` on the mock production ``prod``."""
    e = mock_env(prod, SPECPROD_DB_DSN=dsn, **(env or {}))
    return mpirun(n, CLI + [command, "--schema", schema_name, "--stage-dir", str(stage),
                            *extra], env=e, check=check, timeout=LOAD_TIMEOUT)


def query(dsn, statement, args=None):
    conn = psycopg2.connect(dsn, connect_timeout=30)
    try:
        with conn.cursor() as cur:
            cur.execute(statement, args)
            rows = cur.fetchall() if cur.description else None
        conn.commit()
        return rows
    finally:
        conn.close()


@pytest.fixture
def schemas(pg_dsn):
    """``schemas()`` -> a new initialised schema; all dropped afterwards."""
    names = []

    def make(dsn=pg_dsn):
        name = "test_" + secrets.token_hex(4)
        names.append((dsn, name))
        init(dsn, name)
        return name
    yield make
    for dsn, name in names:
        try:
            conn = psycopg2.connect(dsn, connect_timeout=10)
        except psycopg2.Error:
            continue
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        conn.close()


@pytest.fixture
def created(pg_dsn, schema_name):
    """A connection to ``schema_name`` made by ``init``'s DDL (:func:`ddl.create_schema`)."""
    from specprod_db.db import ddl
    conn = psycopg2.connect(pg_dsn)
    ddl.create_schema(conn, schema_name)
    yield conn
    conn.close()


def fresh_load_dump(dsn, mpiexec, prod, stage_dir):
    """The tables of an uninterrupted 1-rank load of ``prod`` into a new schema
    (dropped afterwards): the reference other runs must reach."""
    name = "test_" + secrets.token_hex(4)
    init(dsn, name)
    try:
        run_mpi(mpiexec, 1, CLI + ["load", "--schema", name, "--stage-dir", str(stage_dir)],
                env=mock_env(prod, SPECPROD_DB_DSN=dsn))
        return dump_schema(dsn, name)
    finally:
        query(dsn, f'DROP SCHEMA "{name}" CASCADE')


# --- test-only dependencies ------------------------------------------------------------

def require(module):
    """``importlib.import_module(module)``, or a failure (not a skip) if it cannot be
    imported: desispec, desitarget, desimodel, healpy ... are test dependencies, so their
    absence is a broken install.  At module level the failure is a collection error of
    that file, which fails the run too."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as err:
        why = f"{err.__class__.__name__}: {err}"
    pytest.fail(f"{module} is a test dependency installed by `make env` (setup.cfg "
                f"extra `test`): {why}", pytrace=False)
