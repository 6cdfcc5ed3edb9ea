"""Crash safety, for 1 and 3 ranks: a worker killed mid-extraction, the writer killed
mid-COPY, the PostgreSQL server restarted mid-run.

Each time the run fails (non-zero exit), the interrupted tile has no row anywhere, the
tiles committed before it are whole (every table, photometry and ztile with its primary
flags included, is that of a fresh load of just those tiles), and a plain rerun reaches
exactly the state of an uninterrupted run.  Stale stage files are reused only when complete and made for the
current plan.  Faults are injected with ``SPECPROD_DB_FAULT`` (``specprod_db.faults``).
"""
import os
import shutil
import socket
import subprocess
import time

import pytest

from conftest import (CLI, LOAD_TIMEOUT, dump_schema, fresh_load_dump, init, load, mock_env,
                      query)
from test_bad_input import TILE_TABLES, fresh_load_dump_of, targetids_of_tiles

VICTIM = 1001          # third tile in write order (100, 1000, 1001, 40000, 60000)
BEFORE = [100, 1000]   # committed before it


@pytest.fixture(scope="module")
def reference(pg_dsn, small_production, mpiexec, tmp_path_factory):
    """The tables of an uninterrupted load of the small production."""
    return fresh_load_dump(pg_dsn, mpiexec, small_production[0],
                           tmp_path_factory.mktemp("refstage"))


@pytest.fixture(scope="module")
def committed_reference(pg_dsn, small_production, mpiexec, tmp_path_factory):
    """``committed_reference(tiles)`` -> the tables of a fresh load of just ``tiles``."""
    made = {}

    def get(tiles):
        if tuple(tiles) not in made:
            made[tuple(tiles)] = fresh_load_dump_of(
                pg_dsn, mpiexec, small_production[0], tiles,
                tmp_path_factory.mktemp("committed")) if tiles else None
        return made[tuple(tiles)]
    return get


def _assert_interrupted_cleanly(dsn, name, committed, reference, committed_reference):
    from specprod_db import schema
    assert query(dsn, f'SELECT tileid FROM "{name}".tile ORDER BY 1') == \
        [(t,) for t in committed]
    for table in TILE_TABLES:
        assert query(dsn, f'SELECT count(*) FROM "{name}".{table} WHERE tileid = %s',
                     (VICTIM,))[0][0] == 0, table
    assert VICTIM not in {r[0] for r in query(dsn, f'SELECT tileid FROM "{name}".tile_state')}
    got = dump_schema(dsn, name)
    # committed tiles are whole: every table as a fresh load of just them (photometry:
    # the rows of the TARGETIDs they reference)
    expected = committed_reference(committed) or {t: [] for t in got}
    assert set(got) == set(expected)
    k = schema.table("photometry").names.index("targetid")
    mine = targetids_of_tiles(expected, set(committed))
    for table in got:
        rows = [r for r in got[table] if table != "photometry" or r[k] in mine]
        assert rows == expected[table], table
    # photometry of TARGETIDs only the victim (or a later tile) references: the caller
    # checks it last (_photometry_of_victim)
    only_later = targetids_of_tiles(reference, {VICTIM}) - mine
    assert only_later
    return sorted(only_later & {r[k] for r in got["photometry"]})


def _photometry_of_victim(orphans):
    """No photometry row of a TARGETID only the interrupted tile (or a later one)
    references (photometry is written inside each tile's transaction); checked last,
    after the rerun, so that the other checks report too."""
    assert not orphans, (f"{len(orphans)} photometry row(s) of TARGETIDs only the "
                         f"interrupted tile (or a later one) references stay after the "
                         f"crash, e.g. {orphans[:3]}")


def _rerun_converges(mpirun, ranks, dsn, name, prod, stage, reference):
    r = load(mpirun, ranks, dsn, name, prod, stage)
    assert dump_schema(dsn, name) == reference
    outcomes = [o for o, in query(dsn, f'SELECT outcome FROM "{name}".load_run ORDER BY id')]
    assert outcomes == ["interrupted", "ok"]
    assert not [f for f in os.listdir(stage) if f.endswith(".h5") or ".tmp-" in f]
    return r.stdout + r.stderr


@pytest.mark.parametrize("ranks", [1, 3])
def test_worker_killed_mid_extraction(ranks, pg_dsn, schemas, small_production, mpirun,
                                      tmp_path, reference, committed_reference):
    prod = small_production[0]
    name = schemas()
    stage = tmp_path / "stage"
    r = load(mpirun, ranks, pg_dsn, name, prod, stage, check=False,
             env={"SPECPROD_DB_FAULT": f"extract:{VICTIM}"})
    assert r.returncode != 0
    orphans = _assert_interrupted_cleanly(pg_dsn, name, [], reference, committed_reference)
    left = os.listdir(stage)
    assert any(f.startswith(f"tile-{VICTIM}.h5.tmp-") for f in left), left
    assert f"tile-{VICTIM}.h5" not in left
    # stale files: a complete file of another plan (tile 100's rows under tile 1000's
    # name) and a truncated file under a final name must not be used
    # (with 3 ranks tile 100 may not have been staged, and tile 1000 may have been,
    # for the same plan: then reusing it is right)
    stale = "tile-100.h5" in left
    if stale:
        shutil.copy(stage / "tile-100.h5", stage / "tile-1000.h5")
    (stage / "tile-40000.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    log = _rerun_converges(mpirun, ranks, pg_dsn, name, prod, stage, reference)
    if ranks == 1:  # tile 100 was staged before the crash, for the same plan
        assert "tile 100: reusing complete stage file" in log
    assert not stale or "tile 1000: reusing" not in log, left
    assert "tile 40000: reusing" not in log
    _photometry_of_victim(orphans)


@pytest.mark.parametrize("ranks", [1, 3])
def test_writer_killed_mid_copy(ranks, pg_dsn, schemas, small_production, mpirun, tmp_path,
                                reference, committed_reference):
    prod = small_production[0]
    name = schemas()
    stage = tmp_path / "stage"
    r = load(mpirun, ranks, pg_dsn, name, prod, stage, check=False,
             env={"SPECPROD_DB_FAULT": f"copy:{VICTIM}"})
    assert r.returncode != 0
    orphans = _assert_interrupted_cleanly(pg_dsn, name, BEFORE, reference,
                                          committed_reference)
    log = _rerun_converges(mpirun, ranks, pg_dsn, name, prod, stage, reference)
    assert f"tile {VICTIM}: reusing complete stage file" in log
    _photometry_of_victim(orphans)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("ranks", [1, 3])
def test_database_restarted_mid_run(ranks, small_production, mpiexec, mpirun, tmp_path,
                                    reference, committed_reference):
    """A separate private cluster, restarted while the writer holds an open transaction
    (paused after the COPY of the victim tile's rows)."""
    from specprod_db.devdb import pgcluster
    prod = small_production[0]
    cdir, port = tmp_path / "cluster", _free_port()
    dsn = pgcluster.start(cdir, port=port, dbname="crash")
    proc = None
    try:
        name = "crash"
        init(dsn, name)
        stage, faults = tmp_path / "stage", tmp_path / "faults"
        faults.mkdir()
        env = mock_env(prod, SPECPROD_DB_DSN=dsn, SPECPROD_DB_FAULT=f"pause:{VICTIM}",
                       SPECPROD_DB_FAULT_DIR=str(faults))
        proc = subprocess.Popen([mpiexec, "-n", str(ranks), *CLI, "load", "--schema", name,
                                 "--stage-dir", str(stage)], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        end = time.time() + LOAD_TIMEOUT
        while not (faults / f"paused-{VICTIM}").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.time() < end
            time.sleep(0.1)
        pgcluster.stop(cdir)
        pgcluster.start(cdir, port=port, dbname="crash")
        (faults / f"resume-{VICTIM}").touch()
        out, err = proc.communicate(timeout=LOAD_TIMEOUT)
        assert proc.returncode == 3, err
        assert f"database connection lost while writing tile {VICTIM}" in err
        assert "rerun the load" in err
        orphans = _assert_interrupted_cleanly(dsn, name, BEFORE, reference,
                                              committed_reference)
        _rerun_converges(mpirun, ranks, dsn, name, prod, stage, reference)
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.communicate()
        pgcluster.stop(cdir, remove=True)
    _photometry_of_victim(orphans)
