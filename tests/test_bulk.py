"""The initial load at the server's own pace (issue 18): ``load --initial`` drops the keys,
foreign keys and indexes of the data tables (but ``tile_pkey``, and ``photometry_pkey``
when writer ranks upsert photometry) and builds them at the end on several sessions
(:mod:`specprod_db.db.builds`); the root writes a wave's new tiles in batches, one
transaction each (:mod:`specprod_db.load.bulk_writer`).

On 1 and 3 ranks, and with 2 writer ranks, its tables equal the daily path's load of the
same tiles and its catalog equals ``init``'s; killed during the bulk phase or during the
builds, the schema is an unfinished initial load (``status`` says so and how to finish
it) and the same command again, or a plain ``load``, converges to the same tables and
catalog; ``verify`` and ``combine`` name an unfinished schema too.
"""
import json
import subprocess

import psycopg2
import pytest

from conftest import CLI, dump_schema, fresh_load_dump, load, mock_env, query
from test_builds import catalog, reference  # noqa: F401 (reference: init's catalog, a fixture)
from specprod_db.db import builds

VICTIM = 1001  # third tile in write order (100, 1000, 1001, 40000, 60000)


@pytest.fixture(scope="module")
def daily(pg_dsn, small_production, mpiexec, tmp_path_factory):
    """The tables of the daily-path load (no ``--initial``) of the small production."""
    return fresh_load_dump(pg_dsn, mpiexec, small_production[0],
                           tmp_path_factory.mktemp("dailystage"))


def dropped(writers=1):
    """The names of the builds an initial load into an empty schema drops: photometry's
    key stays when writer ranks upsert photometry."""
    keep = builds.BULK_KEEP if writers > 1 else builds.BULK_KEEP_ALONE
    return {b.name for b in builds.bulk_builds(keep)}


def schema_catalog(dsn, name):
    conn = psycopg2.connect(dsn)
    try:
        return catalog(conn, name)
    finally:
        conn.close()


def lacking(dsn, name):
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            return builds.unfinished(cur, name)
    finally:
        conn.close()


def status(dsn, name, prod):
    return subprocess.run(CLI + ["status", "--schema", name, "--json"], capture_output=True,
                          text=True, timeout=120, env=mock_env(prod, SPECPROD_DB_DSN=dsn))


def last_counts(dsn, name):
    return json.loads(query(dsn, f'SELECT counts FROM "{name}".load_run ORDER BY id DESC '
                                 f'LIMIT 1')[0][0])


@pytest.mark.parametrize("ranks, extra", [(1, ()), (3, ()), (4, ("--writers", "2"))],
                         ids=["1-rank", "3-ranks", "4-ranks-2-writers"])
def test_initial_load_equals_daily_path(ranks, extra, pg_dsn, schemas, small_production,
                                        mpirun, daily, reference, tmp_path):
    prod = small_production[0]
    name = schemas()
    r = load(mpirun, ranks, pg_dsn, name, prod, tmp_path / "s", "--initial",
             "--build-connections", "3", *extra)
    assert dump_schema(pg_dsn, name) == daily
    assert schema_catalog(pg_dsn, name) == reference
    counts = last_counts(pg_dsn, name)
    assert set(counts["builds"]) == dropped(2 if "--writers" in extra else 1)
    assert all(s >= 0 for s in counts["builds"].values())
    assert "builds" in counts["timers"] and "builds" in r.stdout
    assert lacking(pg_dsn, name) == []


def test_killed_in_the_bulk_phase_then_rerun(pg_dsn, schemas, small_production, mpirun,
                                            daily, reference, tmp_path):
    """Killed between two tiles: keys and indexes missing, status says unfinished initial
    load and the command that finishes it; that command converges."""
    prod, stage = small_production[0], tmp_path / "stage"
    name = schemas()
    r = load(mpirun, 3, pg_dsn, name, prod, stage, "--initial", check=False,
             env={"SPECPROD_DB_FAULT": f"kill:commit-{VICTIM}"})
    assert r.returncode != 0
    missing = lacking(pg_dsn, name)
    assert set(missing) == dropped()
    s = status(pg_dsn, name, prod)
    assert s.returncode == 1, s.stderr
    report = json.loads(s.stdout)
    assert report["unfinished_initial_load"]["finish"] == \
        f"specprod-db load --initial --schema {name}"
    assert set(report["unfinished_initial_load"]["missing"]) == set(missing)
    text = subprocess.run(CLI + ["status", "--schema", name], capture_output=True,
                          text=True, timeout=120,
                          env=mock_env(prod, SPECPROD_DB_DSN=pg_dsn)).stdout
    assert "UNFINISHED INITIAL LOAD" in text and "load --initial --schema" in text
    load(mpirun, 3, pg_dsn, name, prod, stage, "--initial")
    assert dump_schema(pg_dsn, name) == daily
    assert schema_catalog(pg_dsn, name) == reference
    assert json.loads(status(pg_dsn, name, prod).stdout)["unfinished_initial_load"] is None


def test_killed_inside_a_batch_leaves_none_of_its_tiles(pg_dsn, schemas, small_production,
                                                        mpirun, daily, reference,
                                                        tmp_path):
    """Waves of 2 tiles, the writer killed while the second wave's batch (VICTIM and the
    tile after it, one transaction) is being written: the first wave's tiles are loaded,
    neither tile of the batch has a row anywhere (tile_state nor tile_history included),
    and the same command again converges."""
    prod, stage = small_production[0], tmp_path / "stage"
    name = schemas()
    args = ("--initial", "--wave-tiles", "2")
    r = load(mpirun, 1, pg_dsn, name, prod, stage, *args, check=False,
             env={"SPECPROD_DB_FAULT": f"copy:{VICTIM}"})
    assert r.returncode != 0
    assert {t for (t,) in query(pg_dsn, f'SELECT tileid FROM "{name}".tile')} == {100, 1000}
    for table in ("tile_state", "tile_history", "ztile", "potential", "fiberassign"):
        assert query(pg_dsn, f'SELECT count(*) FROM "{name}".{table} '
                             f'WHERE tileid IN ({VICTIM}, 40000)') == [(0,)], table
    referenced = " UNION ".join(f'SELECT targetid FROM "{name}".{t}'
                                for t in ("target", "fiberassign", "potential", "ztile"))
    assert query(pg_dsn, f'SELECT count(*) FROM "{name}".photometry WHERE targetid NOT IN '
                         f'({referenced})') == [(0,)]  # none of the batch's photometry
    load(mpirun, 1, pg_dsn, name, prod, stage, *args)
    assert dump_schema(pg_dsn, name) == daily
    assert schema_catalog(pg_dsn, name) == reference


@pytest.mark.parametrize("point, rerun", [
    ("built-ztile_tileid_fkey", ("--initial",)),   # a foreign key left NOT VALID
    ("built-ix_photometry_q3c_ang2ipix", ()),      # a plain load finishes it too
    ("builds", ()),                                 # every row there, no build yet
    ("built-first_ztile_0", ()),                    # one part of ztile's flags done
])
def test_killed_during_the_builds_then_rerun(point, rerun, pg_dsn, schemas,
                                             small_production, mpirun, daily,
                                             reference, tmp_path):
    prod, stage = small_production[0], tmp_path / "stage"
    name = schemas()
    r = load(mpirun, 1, pg_dsn, name, prod, stage, "--initial", "--build-connections", "2",
             check=False, env={"SPECPROD_DB_FAULT": f"kill:{point}"})
    assert r.returncode != 0
    missing = lacking(pg_dsn, name)
    assert missing
    if point == "built-ztile_tileid_fkey":
        conn = psycopg2.connect(pg_dsn)
        try:
            assert builds.present(conn, name).get("ztile_tileid_fkey") == \
                builds.NOT_VALIDATED
        finally:
            conn.close()
        assert "ztile_tileid_fkey" in missing
    elif point == "builds":
        assert set(missing) == dropped()
    elif point.startswith("built-first_"):  # ztile's builds wait for all its flags
        assert {b.name for b in builds.table_builds(builds.schema_table("ztile"))} <= \
            set(missing)
    else:
        assert "ix_photometry_q3c_ang2ipix" not in missing
    report = json.loads(status(pg_dsn, name, prod).stdout)
    assert report["unfinished_initial_load"]["missing"] == missing
    r = load(mpirun, 1, pg_dsn, name, prod, stage, *rerun)
    assert dump_schema(pg_dsn, name) == daily
    assert schema_catalog(pg_dsn, name) == reference
    assert lacking(pg_dsn, name) == []
    counts = last_counts(pg_dsn, name)
    # a rerun --initial drops all but the keys its writer needs (photometry holds rows:
    # it asks the database), and builds photometry's first when it was missing
    assert set(counts["builds"]) == (
        dropped(2) | ({"photometry_pkey"} & set(missing)) if rerun else set(missing))


def test_rows_a_key_refuses_stop_the_run_and_name_their_tiles(pg_dsn, schemas,
                                                             small_production, mpirun,
                                                             tmp_path):
    """A duplicated exposure row (as a bulk phase without keys lets through): the builds
    refuse it, the run exits 1 naming table, key and tile, the other builds are made, the
    schema stays an unfinished initial load."""
    prod, stage = small_production[0], tmp_path / "stage"
    name = schemas()
    r = load(mpirun, 1, pg_dsn, name, prod, stage, "--initial", check=False,
             env={"SPECPROD_DB_FAULT": "kill:builds"})
    assert r.returncode != 0
    expid, tileid = query(pg_dsn, f'SELECT expid, tileid FROM "{name}".exposure '
                                  f'ORDER BY expid LIMIT 1')[0]
    query(pg_dsn, f'INSERT INTO "{name}".exposure SELECT * FROM "{name}".exposure '
                  f'WHERE expid = %s', (expid,))
    r = load(mpirun, 1, pg_dsn, name, prod, stage, check=False)
    assert r.returncode == 1, r.stderr
    assert "exposure_pkey" in r.stderr and f"expid={expid} (2 rows, tile {tileid})" \
        in r.stderr, r.stderr
    assert "unfinished initial load" in r.stderr
    assert f"specprod-db load --initial --schema {name}" in r.stderr
    missing = lacking(pg_dsn, name)
    assert "exposure_pkey" in missing and "ztile_pkey" not in missing
    assert json.loads(status(pg_dsn, name, prod).stdout)["unfinished_initial_load"]
    counts = last_counts(pg_dsn, name)
    assert "ztile_pkey" in counts["builds"] and "exposure_pkey" not in counts["builds"]


def test_verify_and_combine_name_an_unfinished_schema(pg_dsn, schemas):
    from specprod_db.errors import RunRefused
    from specprod_db.ops import combine, verify
    a, b = schemas(), schemas()
    conn = psycopg2.connect(pg_dsn)
    try:
        builds.drop(conn, a, [builds.by_name("ix_ztile_z"), builds.by_name("ztile_tileid_fkey")])
        report = verify.verify(conn, a)
        assert not report["ok"]
        assert report["unfinished_initial_load"]["missing"] == ["ztile_tileid_fkey",
                                                                "ix_ztile_z"]
        text = verify.format_report(report)
        assert "unfinished initial load" in text
        assert f"specprod-db load --initial --schema {a}" in text
        with pytest.raises(RunRefused, match="unfinished initial load.*load --initial"):
            combine.create(conn, "test_bulk_combined", [b, a])
        assert query(pg_dsn, "SELECT count(*) FROM pg_namespace WHERE nspname = "
                             "'test_bulk_combined'")[0][0] == 0
        report = verify.verify(conn, b)
        assert report["unfinished_initial_load"] is None
    finally:
        conn.close()
