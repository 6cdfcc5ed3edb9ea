"""Failures never hang or hide, for 1 and 3 ranks (``SPECPROD_DB_FAULT``, faults.py).

* An unexpected exception outside any task (planning, brick planning, writing,
  finalizing, a worker between tasks) ends the whole job within seconds, non-zero, with a
  clear message; nothing is half-written; a plain rerun converges.
* An unexpected exception inside a task fails its tile as an *internal error*: logged
  with its traceback, recorded as ``internal_error`` (not ``failed``), reported apart.
* A crash between two tiles leaves no photometry row that nothing references.
* A brick that failed (corrupt tractor file) is not reused from the stage once repaired;
  a photometry value the server refuses fails only the tiles that need it.
* An unreadable input file (any OSError: a symlink loop, a directory in its place) fails
  the tile that needs it, naming tile and path, and only that tile; a bad tractor file
  fails only the tiles of its brick, blamed on that brick.
* No transaction stays open while the root plans; a stage directory belongs to one
  database and schema.
"""
import json
import os
import subprocess
import time

import fitsio
import numpy as np
import pytest

from conftest import (CLI, LOAD_TIMEOUT, dump_schema, fresh_load_dump, load, mock_env,
                      query, tractor_files)
from specprod_db.db import lock
from specprod_db import schema

TILES = [100, 1000, 1001, 40000, 60000]  # write order of the small production
TILE_TABLES = [t.name for t in schema.tile_tables()]


@pytest.fixture(scope="module")
def reference(pg_dsn, small_production, mpiexec, tmp_path_factory):
    return fresh_load_dump(pg_dsn, mpiexec, small_production[0],
                           tmp_path_factory.mktemp("refstage"))


def orphan_photometry(dsn, name):
    """Photometry rows that no table references (must always be 0)."""
    refs = " AND ".join(f'NOT EXISTS (SELECT 1 FROM "{name}".{t.name} r WHERE '
                        f'r.{col} = p.targetid)' for t, col in schema.referencing("photometry"))
    return query(dsn, f'SELECT count(*) FROM "{name}".photometry p WHERE {refs}')[0][0]


def rows_per_tile(dsn, name):
    """{tileid: {table: rows}} over the per-tile tables."""
    out = {}
    for table in TILE_TABLES:
        for tileid, n in query(dsn, f'SELECT tileid, count(*) FROM "{name}".{table} '
                                    f'GROUP BY 1'):
            out.setdefault(tileid, {})[table] = n
    return out


def reference_rows_per_tile(reference):
    out = {}
    for table in TILE_TABLES:
        k = schema.table(table).names.index("tileid")
        for row in reference[table]:
            out.setdefault(row[k], {}).setdefault(table, 0)
            out[row[k]][table] += 1
    return out


def assert_whole(dsn, name, reference):
    """Every tile the database holds has exactly its rows of an uninterrupted load, and
    no photometry row is unreferenced."""
    want = reference_rows_per_tile(reference)
    got = rows_per_tile(dsn, name)
    for tileid, counts in got.items():
        assert counts == want[tileid], tileid
    status = dict(query(dsn, f'SELECT tileid, status FROM "{name}".tile_state'))
    assert all(status.get(t) == "loaded" for t in got)
    assert orphan_photometry(dsn, name) == 0


def rerun_converges(mpirun, ranks, dsn, name, prod, stage, reference):
    r = load(mpirun, ranks, dsn, name, prod, stage)
    assert dump_schema(dsn, name) == reference
    assert orphan_photometry(dsn, name) == 0
    return r


# --- an unexpected error outside any task ends the job ---------------------------------

CASES = [(p, n) for p in ("plan", "bricks", "write", "finalize") for n in (1, 3)] \
    + [("serve@1", 3), ("serve@2", 3)]


@pytest.mark.parametrize("point, ranks", CASES)
def test_unexpected_error_ends_the_job(point, ranks, pg_dsn, schemas, small_production,
                                       mpirun, reference, tmp_path):
    name, prod, stage = schemas(), small_production[0], tmp_path / "stage"
    t = time.time()
    r = load(mpirun, ranks, pg_dsn, name, prod, stage, check=False,
             env={"SPECPROD_DB_FAULT": f"raise:{point}"})
    elapsed = time.time() - t
    assert r.returncode != 0
    assert elapsed < 90, f"the job took {elapsed:.0f} s to end"
    assert "injected fault" in r.stderr and "internal error" in r.stderr
    assert "Traceback" in r.stderr
    if not point.startswith("serve"):
        assert r.returncode == 4
        outcome = query(pg_dsn, f'SELECT outcome FROM "{name}".load_run')
        assert outcome in ([], [("internal_error",)])
    assert_whole(pg_dsn, name, reference)
    loaded = set(rows_per_tile(pg_dsn, name))
    if point in ("plan", "bricks"):
        assert loaded == set()
    elif point == "write":
        assert loaded == {TILES[0]}  # the fault fires after the first committed tile
    elif point == "finalize":
        assert loaded == set(TILES)
    rerun_converges(mpirun, ranks, pg_dsn, name, prod, stage, reference)


# --- an unexpected error inside a task is an internal error of its tile ---------------

@pytest.mark.parametrize("ranks", [1, 3])
def test_bug_in_a_task_is_an_internal_error(ranks, pg_dsn, schemas, small_production,
                                            mpirun, reference, tmp_path):
    name, prod, stage = schemas(), small_production[0], tmp_path / "stage"
    r = load(mpirun, ranks, pg_dsn, name, prod, stage, check=False,
             env={"SPECPROD_DB_FAULT": "raise:task-1000"})
    assert r.returncode == 1
    log = r.stdout + r.stderr
    assert "Traceback" in log and "RuntimeError: injected fault at task-1000" in log
    assert "INTERNAL ERRORS" in log and "FAILED tiles (bad input)" not in log
    state = dict(query(pg_dsn, f'SELECT tileid, status FROM "{name}".tile_state'))
    assert state[1000] == "internal_error"
    assert {t for t, s in state.items() if s == "loaded"} == set(TILES) - {1000}
    counts = json.loads(query(pg_dsn, f'SELECT counts FROM "{name}".load_run')[0][0])
    assert list(counts["internal_errors"]) == ["1000"] and counts["failed"] == {}
    assert_whole(pg_dsn, name, reference)
    rerun_converges(mpirun, ranks, pg_dsn, name, prod, stage, reference)


# --- photometry belongs to its tile's transaction --------------------------------------

@pytest.mark.parametrize("ranks", [1, 3])
def test_writer_killed_between_tiles_leaves_no_orphan_photometry(
        ranks, pg_dsn, schemas, small_production, mpirun, reference, tmp_path):
    name, prod, stage = schemas(), small_production[0], tmp_path / "stage"
    r = load(mpirun, ranks, pg_dsn, name, prod, stage, check=False,
             env={"SPECPROD_DB_FAULT": "kill:commit-1000"})
    assert r.returncode != 0
    assert set(rows_per_tile(pg_dsn, name)) == {100, 1000}
    assert_whole(pg_dsn, name, reference)
    rerun_converges(mpirun, ranks, pg_dsn, name, prod, stage, reference)


def _loaded_photometry_bricks(reference):
    names = schema.table("photometry").names
    return {row[names.index("brickname")] for row in reference["photometry"]
            if row[names.index("ls_id")] > 0}


@pytest.mark.parametrize("ranks", [1, 3])
def test_repaired_tractor_file_is_read_again(ranks, pg_dsn, schemas, copy_production,
                                             mpirun, reference, tmp_path):
    prod = copy_production()
    name, stage = schemas(), tmp_path / "stage"
    brick = sorted(_loaded_photometry_bricks(reference))[0]
    good = {p: open(p, "rb").read() for p in tractor_files(prod)
            if os.path.basename(p)[8:16] == brick}  # north and south
    for path, data in good.items():
        open(path, "wb").write(data[: len(data) // 2])
    r = load(mpirun, ranks, pg_dsn, name, prod, stage, check=False)
    assert r.returncode == 1
    failed = [t for t, s in query(pg_dsn, f'SELECT tileid, status FROM "{name}".tile_state')
              if s == "failed"]
    assert failed, "a tile needing the corrupt brick must fail"
    assert_whole(pg_dsn, name, reference)
    assert any(f.startswith("brick-") for f in os.listdir(stage))  # kept for the rerun
    for path, data in good.items():  # repaired; the stage files are left as they are
        open(path, "wb").write(data)
    rerun_converges(mpirun, ranks, pg_dsn, name, prod, stage, reference)


@pytest.mark.parametrize("value, expect", [
    (b"P\x00S", ["the database refused its rows", "0x00"]),  # PostgreSQL refuses NUL
    (b"P\xff\xfe", ["tractor", "cannot read", "codec"]),    # not even ASCII: unreadable
])
def test_bad_photometry_string_fails_only_its_tiles(value, expect, pg_dsn, schemas,
                                                    copy_production, mpirun, reference,
                                                    tmp_path):
    prod = copy_production()
    name, stage = schemas(), tmp_path / "stage"
    brick = sorted(_loaded_photometry_bricks(reference))[0]
    for path in tractor_files(prod):
        if os.path.basename(path)[8:16] == brick:
            data, header = fitsio.read(path, header=True)
            dtype = [(n, "S4" if n == "TYPE" else data.dtype[n]) for n in data.dtype.names]
            raw = np.zeros(len(data), dtype=dtype)
            for n in data.dtype.names:
                raw[n] = data[n] if n != "TYPE" else value  # MORPHTYPE
            fitsio.write(path, raw, header=header, clobber=True)
    r = load(mpirun, 1, pg_dsn, name, prod, stage, check=False)
    assert r.returncode == 1
    state = dict(query(pg_dsn, f'SELECT tileid, status FROM "{name}".tile_state'))
    failed = {t for t, s in state.items() if s == "failed"}
    assert failed and failed != set(TILES)
    errors = [e for (e,) in query(pg_dsn, f'SELECT error FROM "{name}".tile_state '
                                          f"WHERE status = 'failed'")]
    assert all(all(x in e for x in expect) for e in errors), errors
    assert_whole(pg_dsn, name, reference)
    assert set(rows_per_tile(pg_dsn, name)) == set(TILES) - failed


# --- an unreadable file fails its own tile (or brick), and only that -------------------

def _loop(path):
    """Replace ``path`` by a symlink to itself: ``stat`` and ``open`` fail with ELOOP
    (root, who runs the tests, is not stopped by chmod 000)."""
    os.remove(path)
    os.symlink(os.path.basename(path), path)


def _lastnight_dir(prod, tileid):
    """The cumulative directory of the tile's winning LASTNIGHT (its latest night)."""
    base = os.path.join(prod, "spectro", "redux", "daily", "tiles", "cumulative",
                        str(tileid))
    return os.path.join(base, max(os.listdir(base)))


@pytest.mark.parametrize("ranks", [1, 3])
def test_unreadable_file_fails_only_its_tile(ranks, pg_dsn, schemas, copy_production,
                                             mpirun, reference, tmp_path):
    """Any OSError from stat or open, not only "no such file": tile 1000's fiberassign
    file is a symlink loop (the planner's stat of it used to refuse the whole run: exit
    2, nothing loaded, no tile named), a redrock petal file of tile 1001 is a symlink
    loop (used to be taken for a missing petal: the tile loaded without it, exit 0), an
    afterburner file of tile 40000 is a directory.  Each fails its own tile, naming tile
    and path; the others load; exit 1; once repaired, a rerun converges."""
    prod = copy_production()
    name, stage = schemas(), tmp_path / "stage"
    fa = os.path.join(prod, "target", "fiberassign", "tiles", "trunk", "001",
                      "fiberassign-001000.fits.gz")
    night = _lastnight_dir(prod, 1001)
    rr = os.path.join(night, f"redrock-0-1001-thru{os.path.basename(night)}.fits")
    night = _lastnight_dir(prod, 40000)
    ab = os.path.join(night, f"emline-2-40000-thru{os.path.basename(night)}.fits")
    saved = {p: open(p, "rb").read() for p in (fa, rr, ab)}
    _loop(fa)
    _loop(rr)
    os.remove(ab)
    os.mkdir(ab)
    r = load(mpirun, ranks, pg_dsn, name, prod, stage, check=False)
    assert r.returncode == 1, r.stderr[-3000:]
    state = {t: (s, e) for t, s, e in query(
        pg_dsn, f'SELECT tileid, status, error FROM "{name}".tile_state')}
    bad = {1000: (fa, "Too many levels of symbolic links"),
           1001: (rr, "Too many levels of symbolic links"), 40000: (ab, "is a directory")}
    for tileid, (path, why) in bad.items():
        status, error = state[tileid]
        assert status == "failed", (tileid, status, error)
        assert error.startswith(f"tile {tileid}: ") and path in error and why in error
    assert {t for t, (s, _) in state.items() if s == "loaded"} == set(TILES) - set(bad)
    assert_whole(pg_dsn, name, reference)
    assert "FAILED tiles (bad input)" in r.stdout + r.stderr
    if ranks == 1:
        os.rmdir(ab)
        for path, data in saved.items():
            if os.path.lexists(path):
                os.remove(path)
            open(path, "wb").write(data)
        rerun_converges(mpirun, ranks, pg_dsn, name, prod, stage, reference)


@pytest.mark.parametrize("kind", ["loop", "directory"])
def test_unreadable_healpix_file_is_bad_input(kind, tmp_path):
    """A HEALPix redrock file of a static production that cannot be read fails its task
    as bad input naming the file (a symlink loop used to be an internal error)."""
    from specprod_db.load import tasks
    from specprod_db.load.jobs import HealpixJob
    from specprod_db.errors import InputError
    from specprod_db.paths import Paths
    paths = Paths.from_environment({}, desi_root=str(tmp_path), specprod="fuji")
    path = paths.healpix_file("main", "dark", 1234)
    os.makedirs(os.path.dirname(path))
    if kind == "loop":
        os.symlink(os.path.basename(path), path)
    else:
        os.mkdir(path)
    with pytest.raises(InputError, match=f"healpix main-dark-1234: {path}: cannot be read"):
        tasks.extract_healpix(HealpixJob("main", "dark", 1234, paths,
                                         str(tmp_path / "stage")))


def _tiles_of_bricks(reference):
    """{brick: tiles whose potential targets have their Legacy Surveys photometry in it}."""
    ph, po = schema.table("photometry").names, schema.table("potential").names
    brick = {row[ph.index("targetid")]: row[ph.index("brickname")]
             for row in reference["photometry"] if row[ph.index("ls_id")] > 0}
    out = {}
    for row in reference["potential"]:
        b = brick.get(row[po.index("targetid")])
        if b:
            out.setdefault(b, set()).add(row[po.index("tileid")])
    return out


@pytest.mark.parametrize("fault, ranks", [("loop", 1), ("loop", 3), ("bug", 1)])
def test_bad_tractor_file_fails_only_the_tiles_of_its_brick(
        fault, ranks, pg_dsn, schemas, copy_production, mpirun, reference, tmp_path):
    """A brick needed by one tile only, in a brick task of many bricks (all 14 of the
    small production's): its tractor file a symlink loop fails that tile alone, status
    failed (bad input), blamed on that brick and file (it used to fail every tile of the
    task as an internal error, blamed on the task's first brick).  A bug while matching
    that brick (an injected exception) fails the same tile alone, as an internal error."""
    prod = copy_production()
    name, stage = schemas(), tmp_path / "stage"
    tiles_of = _tiles_of_bricks(reference)
    brick = sorted(b for b, t in tiles_of.items() if len(t) == 1)[0]
    (tileid,) = tiles_of[brick]
    assert len(tiles_of) > 1 and set().union(*tiles_of.values()) - {tileid}
    paths = [p for p in tractor_files(prod) if os.path.basename(p) == f"tractor-{brick}.fits"]
    env = None
    if fault == "loop":
        for path in paths:
            _loop(path)
    else:
        env = {"SPECPROD_DB_FAULT": f"raise:brick-{brick}"}
    r = load(mpirun, ranks, pg_dsn, name, prod, stage, check=False, env=env)
    assert r.returncode == 1, r.stderr[-3000:]
    state = {t: (s, e) for t, s, e in query(
        pg_dsn, f'SELECT tileid, status, error FROM "{name}".tile_state')}
    status, error = state[tileid]
    assert {t for t, (s, _) in state.items() if s != "loaded"} == {tileid}
    assert error.startswith(f"tile {tileid}: brick {brick}: ")
    assert f"brick {brick}: brick {brick}" not in error  # blamed once
    others = set(tiles_of) - {brick}
    assert not any(b in error for b in others)
    if fault == "loop":
        assert status == "failed"
        assert any(p in error for p in paths) and "Too many levels of symbolic links" in error
        assert "internal error" not in error
    else:
        assert status == "internal_error"
        assert f"injected fault at brick-{brick}" in error and "Traceback" in r.stderr
    assert_whole(pg_dsn, name, reference)


# --- planning and the stage directory --------------------------------------------------

def test_no_transaction_open_while_planning(pg_dsn, schemas, small_production, tmp_path):
    name, prod = schemas(), small_production[0]
    faults = tmp_path / "faults"
    faults.mkdir()
    env = mock_env(prod, SPECPROD_DB_DSN=pg_dsn, SPECPROD_DB_FAULT="pause:plan",
                   SPECPROD_DB_FAULT_DIR=str(faults), SPECPROD_DB_NO_MPI="1")
    proc = subprocess.Popen(CLI + ["load", "--schema", name, "--stage-dir",
                                   str(tmp_path / "stage")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        end = time.time() + 60
        while not (faults / "paused-plan").exists():
            assert proc.poll() is None and time.time() < end, proc.communicate()
            time.sleep(0.05)
        # the loader's session: the one holding the schema's advisory lock
        states = query(pg_dsn, "SELECT a.state FROM pg_stat_activity a JOIN pg_locks l "
                               "ON l.pid = a.pid WHERE l.locktype = 'advisory' AND "
                               "l.classid = %s AND l.objid = %s AND l.granted",
                       (lock.LOCK_NAMESPACE, lock.lock_key(name)))
        assert states == [("idle",)], states
    finally:
        (faults / "resume-plan").touch()
        out, err = proc.communicate(timeout=LOAD_TIMEOUT)
    assert proc.returncode == 0, err


def test_stage_directory_belongs_to_one_schema(pg_dsn, schemas, small_production, mpirun,
                                                tmp_path):
    prod, stage = small_production[0], tmp_path / "stage"
    first, second = schemas(), schemas()
    load(mpirun, 1, pg_dsn, first, prod, stage)
    r = load(mpirun, 1, pg_dsn, second, prod, stage, check=False)
    assert r.returncode == 2
    assert f"belongs to schema {first}" in r.stderr and "--stage-dir" in r.stderr
    assert query(pg_dsn, f'SELECT count(*) FROM "{second}".tile')[0][0] == 0


def test_default_stage_directory_is_keyed_by_database_and_schema(
        pg_dsn, schemas, small_production, mpirun, tmp_path):
    name, prod = schemas(), small_production[0]
    base = tmp_path / "base"
    e = mock_env(prod, SPECPROD_DB_DSN=pg_dsn, SPECPROD_DB_STAGE_DIR=str(base))
    mpirun(1, CLI + ["load", "--schema", name], env=e, timeout=LOAD_TIMEOUT)
    system, db = query(pg_dsn, "SELECT (SELECT system_identifier FROM pg_control_system()),"
                               " current_database()")[0]
    assert os.listdir(base) == [f"{system}-{db}"]
    assert os.listdir(base / f"{system}-{db}") == [name]


@pytest.mark.parametrize("ranks", [1, 3])
def test_initial_load_killed_half_way_and_rerun(ranks, pg_dsn, schemas, small_production,
                                                mpirun, reference, tmp_path):
    """An initial load in waves of 2 tiles, its writer killed after the third tile
    committed: the second wave's tiles are written in one transaction (bulk_writer), so
    the fourth is there too.  The same command again reuses complete stage files, redoes
    only what is missing, rebuilds the indexes and every flag, and equals an
    uninterrupted load."""
    from specprod_db.db import ddl
    from specprod_db.db.connect import connect
    name, prod, stage = schemas(), small_production[0], tmp_path / "stage"
    args = ("--initial", "--wave-tiles", "2")
    r = load(mpirun, ranks, pg_dsn, name, prod, stage, *args, check=False,
             env={"SPECPROD_DB_FAULT": f"kill:commit-{TILES[2]}"})
    assert r.returncode != 0
    assert set(rows_per_tile(pg_dsn, name)) == set(TILES[:4])
    conn = connect(pg_dsn)
    try:
        assert ddl.missing_indexes(conn, name)  # dropped for the bulk load, not rebuilt
    finally:
        conn.close()
    r = load(mpirun, ranks, pg_dsn, name, prod, stage, *args)
    plan = json.loads(query(pg_dsn, f'SELECT counts FROM "{name}".load_run ORDER BY id '
                                    f'DESC LIMIT 1')[0][0])["plan"]
    assert plan == {"INSERT": len(TILES) - 4, "UNCHANGED": 4, "SKIP": 1}
    assert dump_schema(pg_dsn, name) == reference
    assert orphan_photometry(pg_dsn, name) == 0
    conn = connect(pg_dsn)
    try:
        assert ddl.missing_indexes(conn, name) == []
    finally:
        conn.close()
