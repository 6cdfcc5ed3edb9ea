"""The MPI load pipeline end to end on a mock production, against a real PostgreSQL.

Same contents for 1, 2 and 3 ranks; loading tiles over several runs equals one run;
overlapping tiles share photometry; q3c cone searches work; a second run is a no-op.
"""
import os

import psycopg2

from conftest import dump_schema, load


def test_same_result_for_1_2_3_ranks(pg_dsn, schemas, small_production, mpirun, tmp_path):
    prod = small_production[0]
    dumps = []
    for n in (1, 2, 3):
        name = schemas()
        load(mpirun, n, pg_dsn, name, prod, tmp_path / f"stage{n}")
        dumps.append(dump_schema(pg_dsn, name))
    assert dumps[0]["tile"] and dumps[0]["ztile"] and dumps[0]["photometry"]
    assert dumps[0] == dumps[1] == dumps[2]


def test_tiles_over_several_runs_equal_one_run(pg_dsn, schemas, small_production, mpirun,
                                               tmp_path):
    prod, summary = small_production
    one, several = schemas(), schemas()
    load(mpirun, 2, pg_dsn, one, prod, tmp_path / "a")
    loaded = [r[0] for r in dump_schema(pg_dsn, one, ["tile"])["tile"]]
    half = loaded[: len(loaded) // 2]
    load(mpirun, 2, pg_dsn, several, prod, tmp_path / "b", "--tiles",
          ",".join(map(str, half)))
    assert [r[0] for r in dump_schema(pg_dsn, several, ["tile"])["tile"]] == half
    load(mpirun, 2, pg_dsn, several, prod, tmp_path / "b")
    assert dump_schema(pg_dsn, one) == dump_schema(pg_dsn, several)


def test_second_run_changes_nothing(pg_dsn, schemas, small_production, mpirun, tmp_path):
    prod = small_production[0]
    name = schemas()
    load(mpirun, 1, pg_dsn, name, prod, tmp_path / "s")
    import json
    with open(tmp_path / "s" / "manifest.json") as f:
        manifest = json.load(f)
    assert {p["action"] for p in manifest["plan"]} == {"INSERT", "SKIP"}
    assert manifest["schema"] == name and manifest["tiles"] and not manifest["failed"]
    before = dump_schema(pg_dsn, name)
    result = load(mpirun, 1, pg_dsn, name, prod, tmp_path / "s", "--dry-run")
    import re
    assert re.search(r"^total: SKIP 1, UNCHANGED \d+$", result.stdout, re.M), result.stdout
    assert not re.search(r"^\s*\d+\s+(INSERT|UPDATE|DELETE)", result.stdout, re.M)
    load(mpirun, 1, pg_dsn, name, prod, tmp_path / "s")
    assert dump_schema(pg_dsn, name) == before


def test_shared_targets_and_cone_search(pg_dsn, schemas, small_production, mpirun, tmp_path):
    prod = small_production[0]
    name = schemas()
    load(mpirun, 2, pg_dsn, name, prod, tmp_path / "s")
    conn = psycopg2.connect(pg_dsn)
    with conn.cursor() as cur:
        cur.execute(f'SELECT targetid, count(*) FROM "{name}".target GROUP BY targetid '
                    "HAVING count(DISTINCT tileid) > 1 LIMIT 5")
        shared = cur.fetchall()
        assert shared, "the mock has targets on overlapping tiles"
        for targetid, ntarget in shared:
            cur.execute(f'SELECT count(*) FROM "{name}".photometry WHERE targetid = %s',
                        (targetid,))
            assert cur.fetchone()[0] == 1
            assert ntarget >= 2
        # every referenced TARGETID has photometry (foreign keys hold by construction)
        cur.execute(f'SELECT count(*) FROM "{name}".target t LEFT JOIN "{name}".photometry p '
                    "USING (targetid) WHERE p.targetid IS NULL")
        assert cur.fetchone()[0] == 0
        # q3c cone search equals a brute-force angular-distance selection
        cur.execute(f'SELECT ra, dec FROM "{name}".photometry WHERE ra <> 0 LIMIT 1')
        ra, dec = cur.fetchone()
        for table, rac, decc in (("photometry", "ra", "dec"),
                                 ("fiberassign", "target_ra", "target_dec")):
            cur.execute(f'SELECT targetid FROM "{name}".{table} WHERE '
                        f"q3c_radial_query({rac}, {decc}, %s, %s, 0.2) ORDER BY 1", (ra, dec))
            q3c = cur.fetchall()
            cur.execute(f'SELECT targetid FROM "{name}".{table} WHERE '
                        f"q3c_dist({rac}, {decc}, %s, %s) < 0.2 ORDER BY 1", (ra, dec))
            assert q3c == cur.fetchall()
            assert q3c
    conn.close()


def test_initial_load_equals_normalload(pg_dsn, schemas, small_production, mpirun,
                                         tmp_path):
    prod = small_production[0]
    normal, initial = schemas(), schemas()
    load(mpirun, 2, pg_dsn, normal, prod, tmp_path / "n")
    load(mpirun, 2, pg_dsn, initial, prod, tmp_path / "i", "--initial")
    assert dump_schema(pg_dsn, initial) == dump_schema(pg_dsn, normal)
    conn = psycopg2.connect(pg_dsn)
    from specprod_db.db import ddl
    assert ddl.missing_indexes(conn, initial) == []
    # an initial load interrupted before its indexes were rebuilt: a plain rerun repairs it
    ddl.drop_secondary_indexes(conn, initial)
    with conn.cursor() as cur:
        cur.execute(f'UPDATE "{initial}".ztile SET zcat_primary = false, zcat_nspec = 0')
    conn.commit()
    load(mpirun, 1, pg_dsn, initial, prod, tmp_path / "i")
    assert ddl.missing_indexes(conn, initial) == []
    assert dump_schema(pg_dsn, initial) == dump_schema(pg_dsn, normal)
    conn.close()


def test_waves_equal_one_wave(pg_dsn, schemas, small_production, mpirun, tmp_path):
    """Tiles extracted, matched and written in waves of 1 or 2 (the next wave extracted
    while one is written) give the tables of one wave; the run reports each rank's busy
    time, the load balance and the write time overlapped by extraction."""
    import json
    from conftest import query
    prod = small_production[0]
    one = schemas()
    load(mpirun, 1, pg_dsn, one, prod, tmp_path / "one")
    reference = dump_schema(pg_dsn, one)
    for ranks, wave in ((1, 1), (3, 1), (3, 2)):
        name = schemas()
        r = load(mpirun, ranks, pg_dsn, name, prod, tmp_path / f"w{ranks}{wave}",
                 "--wave-tiles", str(wave))
        assert dump_schema(pg_dsn, name) == reference, (ranks, wave)
        assert "ranks busy (s)" in r.stdout + r.stderr
        counts = json.loads(query(pg_dsn, f'SELECT counts FROM "{name}".load_run')[0][0])
        busy = counts["ranks"]["busy_seconds"]
        assert set(busy) == ({"0"} if ranks == 1 else {"1", "2"})
        assert counts["ranks"]["balance_max_over_mean"] >= 1.0
        assert 0 <= counts["ranks"]["write_seconds_with_workers_busy"] \
            <= counts["ranks"]["write_seconds"]
        assert not [f for f in os.listdir(tmp_path / f"w{ranks}{wave}") if f.endswith(".h5")]


def test_parallel_writers_equal_one_writer(pg_dsn, schemas, small_production, mpirun,
                                           tmp_path):
    """``--writers 2`` on 4 ranks (ranks 1 and 2 write, rank 3 extracts): the tiles share
    targets, so the writers insert the same TARGETIDs concurrently; the tables equal a
    one-writer load (flags included), no table of the run is left behind, and a job too
    small for its writers is refused."""
    from conftest import query
    prod = small_production[0]
    one, two = schemas(), schemas()
    load(mpirun, 1, pg_dsn, one, prod, tmp_path / "one")
    for initial in ((), ("--initial",)):
        name = schemas()
        load(mpirun, 4, pg_dsn, name, prod, tmp_path / f"two{len(initial)}", "--writers",
             "2", "--wave-tiles", "3", *initial)
        assert dump_schema(pg_dsn, name) == dump_schema(pg_dsn, one), initial
        assert query(pg_dsn, "SELECT count(*) FROM pg_tables WHERE schemaname = %s AND "
                             "tablename LIKE '\\_run\\_%%'", (name,))[0][0] == 0
    r = load(mpirun, 3, pg_dsn, two, prod, tmp_path / "few", "--writers", "2", check=False)
    assert r.returncode == 2 and "--writers 2 needs at least 4 ranks" in r.stderr
