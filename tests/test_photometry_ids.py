"""The root's set of photometry TARGETIDs in an initial load (load/photometry_ids.py), and
the index probes that replace it otherwise (db/tempids.present)."""
import numpy as np
import psycopg2
import pytest
from psycopg2 import sql

from specprod_db.db import tempids
from specprod_db.load import photometry_ids
from specprod_db.load.photometry_ids import MAX_RUNS, PhotometryIds
from specprod_db.load.plan import DELETE, INSERT, SKIP, UPDATE, TileAction
from specprod_db.load.tile_writer import copy_rows
from specprod_db.schema import table as schema_table

from conftest import init


def test_add_and_contains_across_merges():
    rng = np.random.default_rng(3)
    known, truth = PhotometryIds(), set()
    for _ in range(3 * MAX_RUNS):
        ids = rng.integers(0, 5000, size=rng.integers(0, 400))
        known.add(ids)
        truth.update(ids.tolist())
        assert len(known.runs) <= MAX_RUNS
        probe = rng.integers(-10, 5010, size=300)
        assert known.contains(probe).tolist() == [int(x) in truth for x in probe]
    assert len(known) == len(truth)  # no TARGETID held twice across runs
    assert known.contains(np.zeros(0, np.int64)).shape == (0,)


def _action(kind, tileid=1):
    return TileAction(tileid, kind, "test")


@pytest.fixture
def conn(pg_dsn, schema_name):
    init(pg_dsn, schema_name)
    c = psycopg2.connect(pg_dsn)
    yield c
    c.close()


def test_start_only_for_a_bulk_load_into_empty_photometry(conn, schema_name):
    plain = [_action(INSERT), _action(SKIP, 2)]
    assert isinstance(photometry_ids.start(conn, schema_name, True, plain), PhotometryIds)
    assert photometry_ids.start(conn, schema_name, False, plain) is None  # a daily run
    for removing in (DELETE, UPDATE):  # photometry could go: ask the database
        assert photometry_ids.start(conn, schema_name, True,
                                    plain + [_action(removing, 3)]) is None
    row = np.zeros(1, dtype=schema_table("photometry").dtype)
    row["targetid"] = 42
    with conn.cursor() as cur:  # a rerun: rows are there already
        copy_rows(cur, schema_name, "photometry", row)
    conn.commit()
    assert photometry_ids.start(conn, schema_name, True, plain) is None


def test_present_probes_the_index(conn, schema_name):
    table = sql.SQL("{}.probed").format(sql.Identifier(schema_name))
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE TABLE {} (targetid bigint PRIMARY KEY)").format(table))
        cur.execute(sql.SQL("INSERT INTO {} (targetid) SELECT g FROM generate_series(1, "
                            "20000) g").format(table))
        found = tempids.present(cur, table, np.array([5, 3, 3, 0, 20000, 20001, 7]))
        assert found.tolist() == [3, 5, 7, 20000]
        cur.execute("SELECT current_setting('enable_hashjoin'), "
                    "current_setting('enable_mergejoin')")
        assert cur.fetchone() == ("on", "on")  # the settings did not outlive the probe
    conn.rollback()
