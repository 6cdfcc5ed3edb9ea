"""``specprod-db verify``: touching nothing, it finds what was changed by hand.

One load of the small production (module scope); each test damages the tables, runs
verify, and repairs them (in ``finally``), so the next starts from a clean load.
"""
import json
import os

import psycopg2
import pytest

from conftest import query
from test_history import copy_prod, drop_schema, load_in_process, new_schema

from specprod_db import cli, schema
from specprod_db.mock import environment


@pytest.fixture(scope="module")
def loaded(pg_dsn, small_production, tmp_path_factory):
    base = tmp_path_factory.mktemp("verify")
    prod = copy_prod(small_production, base / "production")
    name = new_schema(pg_dsn)
    try:
        assert load_in_process(pg_dsn, name, prod, base / "stage") == 0
        yield name, prod
    finally:
        drop_schema(pg_dsn, name)


@pytest.fixture
def verify(loaded, pg_dsn, monkeypatch, capsys):
    """``verify(*options) -> (exit status, JSON report)`` through the CLI, in process."""
    name, prod = loaded
    for k, v in environment(prod).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("DESI_LOGLEVEL", "INFO")

    def run(*options):
        capsys.readouterr()
        status = cli.main(["verify", "--schema", name, "--db", pg_dsn, "--json", *options])
        return status, json.loads(capsys.readouterr().out)
    return run


def drifts(report, check):
    return [d for d in report["drift"] if d["check"] == check]


def test_a_fresh_load_verifies(verify, loaded, pg_dsn, capsys):
    status, report = verify()
    assert status == 0 and report["ok"] and report["drift"] == []
    assert set(report["checks"]) == {"tile_rows", "inputs", "photometry", "primary",
                                     "constraints", "ids", "desiname"}
    assert all(c["checked"] > 0 and c["skipped"] is None for c in report["checks"].values())
    assert report["checks"]["tile_rows"]["checked"] == 5
    # the text report
    assert cli.main(["verify", "--schema", loaded[0], "--db", pg_dsn, "-q"]) == 0
    text = capsys.readouterr().out
    assert "no drift" in text and max(map(len, text.splitlines())) <= 80


def test_a_deleted_ztile_row(verify, loaded, pg_dsn):
    name = loaded[0]
    query(pg_dsn, f'CREATE TABLE "{name}".bak AS SELECT * FROM "{name}".ztile WHERE id = '
                  f'(SELECT min(id) FROM "{name}".ztile WHERE tileid = 1000)')
    # its afterburner rows (foreign key to ztile.id) go first, and come back after it
    children = [t.name for t in schema.AFTERBURNER_TABLES]
    for t in children:
        query(pg_dsn, f'CREATE TABLE "{name}".bak_{t} AS SELECT * FROM "{name}".{t} '
                      f'WHERE id IN (SELECT id FROM "{name}".bak)')
    try:
        n = query(pg_dsn, f'SELECT count(*) FROM "{name}".ztile WHERE tileid = 1000')[0][0]
        for t in children:
            query(pg_dsn, f'DELETE FROM "{name}".{t} WHERE id IN (SELECT id FROM "{name}".bak)')
        query(pg_dsn, f'DELETE FROM "{name}".ztile WHERE id IN (SELECT id FROM "{name}".bak)')
        status, report = verify()
        assert status == 1 and not report["ok"]
        found = {d["table"]: d for d in drifts(report, "tile_rows")}
        assert set(found) == {"ztile"} | set(children)
        d = found["ztile"]
        assert (d["tile"], d["table"], d["expected"], d["found"]) == (1000, "ztile", n, n - 1)
        assert "tile 1000: ztile: %d row(s) recorded by run 1, %d found" % (n, n - 1) \
            in d["message"]
        # with --tiles: only those tiles
        assert verify("--tiles", "1001,100")[0] == 0
        assert verify("--tiles", "1000")[0] == 1
    finally:
        query(pg_dsn, f'INSERT INTO "{name}".ztile SELECT * FROM "{name}".bak; '
                      f'DROP TABLE "{name}".bak')
        for t in children:
            query(pg_dsn, f'INSERT INTO "{name}".{t} SELECT * FROM "{name}".bak_{t}; '
                          f'DROP TABLE "{name}".bak_{t}')
    assert verify()[0] == 0


def test_photometry_rows_by_hand(verify, loaded, pg_dsn):
    """An unreferenced photometry row is drift.  A referenced one cannot be deleted while
    the foreign keys stand; once they are dropped, it can, and both the missing keys and
    the TARGETIDs left without photometry are reported, per tile."""
    name = loaded[0]
    s = f'"{name}"'
    # an unreferenced row: a copy of a loaded one under a TARGETID nothing references
    targetid = query(pg_dsn, f"SELECT min(targetid) FROM {s}.ztile WHERE tileid = 1000")[0][0]
    query(pg_dsn, f"CREATE TABLE {s}.bak AS SELECT * FROM {s}.photometry WHERE targetid = "
                  f"%s; UPDATE {s}.bak SET targetid = 123456789; "
                  f"INSERT INTO {s}.photometry SELECT * FROM {s}.bak; DROP TABLE {s}.bak",
          (targetid,))
    try:
        status, report = verify()
        assert status == 1
        [d] = drifts(report, "photometry")
        assert (d["table"], d["found"], d["rows"]) == ("photometry", 1, [123456789])
    finally:
        query(pg_dsn, f"DELETE FROM {s}.photometry WHERE targetid = 123456789")
    # a referenced row: the database refuses
    with pytest.raises(psycopg2.errors.ForeignKeyViolation):
        query(pg_dsn, f"DELETE FROM {s}.photometry WHERE targetid = %s", (targetid,))
    # unless someone drops the foreign keys first
    keys = query(pg_dsn, """SELECT conrelid::regclass::text, conname,
                                   pg_get_constraintdef(oid)
                            FROM pg_constraint WHERE contype = 'f'
                              AND confrelid = %s::regclass""", (f"{s}.photometry",))
    referencing = {t.name for t, _ in schema.referencing("photometry")}
    assert {k[0].split(".")[-1] for k in keys} == referencing  # zpix, ztile, target ...
    query(pg_dsn, f"CREATE TABLE {s}.bak2 AS SELECT * FROM {s}.photometry WHERE "
                  f"targetid = %s", (targetid,))
    for table, con, _ in keys:
        query(pg_dsn, f'ALTER TABLE {table} DROP CONSTRAINT "{con}"')
    try:
        query(pg_dsn, f"DELETE FROM {s}.photometry WHERE targetid = %s", (targetid,))
        status, report = verify()
        assert status == 1
        missing = drifts(report, "constraints")
        assert {d["table"] for d in missing} == referencing
        assert all("foreign key targetid -> photometry.targetid is missing" in d["message"]
                   for d in missing)
        lost = drifts(report, "photometry")
        tiles = {r[0] for r in query(pg_dsn, f"SELECT tileid FROM {s}.ztile WHERE "
                                             f"targetid = %s", (targetid,))}
        assert 1000 in tiles
        assert {d["tile"] for d in lost if d["table"] == "ztile"} == tiles
        assert all(d["rows"] == [targetid] for d in lost)
    finally:
        query(pg_dsn, f"INSERT INTO {s}.photometry SELECT * FROM {s}.bak2; "
                      f"DROP TABLE {s}.bak2")
        for table, con, definition in keys:
            query(pg_dsn, f'ALTER TABLE {table} ADD CONSTRAINT "{con}" {definition}')
    assert verify()[0] == 0


def test_a_flipped_primary_flag(verify, loaded, pg_dsn):
    name = loaded[0]
    # a TARGETID observed on two tiles: both are reported
    targetid, tiles = query(pg_dsn, f'SELECT targetid, array_agg(tileid ORDER BY tileid) '
                                    f'FROM "{name}".ztile GROUP BY targetid HAVING '
                                    f'count(DISTINCT tileid) > 1 ORDER BY targetid LIMIT 1')[0]
    flip = (f'UPDATE "{name}".ztile SET zcat_primary = NOT zcat_primary WHERE targetid = '
            f'{targetid} AND tileid = {tiles[0]}')
    query(pg_dsn, flip)
    try:
        status, report = verify()
        assert status == 1
        found = drifts(report, "primary")
        assert sorted(d["tile"] for d in found) == tiles
        for d in found:
            [row] = d["rows"]
            assert row["targetid"] == targetid and row["zcat"]["expected"] == 1
            assert row["zcat"]["primary"] in (0, 2)
    finally:
        query(pg_dsn, flip)
    assert verify()[0] == 0


def test_a_composite_id_that_does_not_decode(verify, loaded, pg_dsn):
    name = loaded[0]
    original = int(query(pg_dsn, f'SELECT min(id) FROM "{name}".fiberassign WHERE tileid = '
                                 f'1001')[0][0])
    change = f'UPDATE "{name}".fiberassign SET id = %s WHERE id = %s'
    query(pg_dsn, change, (original + (1 << 64), original))  # the TILEID bits: 1002
    try:
        status, report = verify()
        assert status == 1
        [d] = drifts(report, "ids")
        assert (d["tile"], d["table"], d["found"]) == (1001, "fiberassign", 1)
        assert d["rows"] == [str(original + (1 << 64))]
    finally:
        query(pg_dsn, change, (original, original + (1 << 64)))
    assert verify()[0] == 0


def test_input_files(verify, loaded, pg_dsn):
    """A touched file is drift by stat; with --hash, same contents is only a note."""
    from specprod_db.extract import redshift
    from specprod_db.paths import Paths
    name, prod = loaded
    lastnight = query(pg_dsn, f'SELECT lastnight FROM "{name}".tile WHERE tileid = 1001')[0][0]
    paths = Paths.from_environment(environment(prod))
    path = next(p for _, p in redshift.redrock_files(paths, 1001, lastnight) if p)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        status, report = verify()
        assert status == 1
        [d] = drifts(report, "inputs")
        assert d["tile"] == 1001 and os.path.basename(path) + " modified" in d["message"]
        status, report = verify("--hash")
        assert status == 0
        assert any("same contents" in n for n in report["checks"]["inputs"]["notes"])
        with open(path, "ab") as f:
            f.write(b"\0")
        status, report = verify("--hash")
        assert status == 1
        assert "contents changed" in drifts(report, "inputs")[0]["message"]
    finally:
        with open(path, "r+b") as f:
            f.truncate(st.st_size)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert verify()[0] == 0


def test_unreadable_input_files_are_findings(verify, loaded, pg_dsn):
    """A loaded tile's file that is there but cannot be stat-ed or read (a symlink loop,
    a directory in its place) is drift naming tile, file and reason, with and without
    --hash; verify used to crash on it (OSError from stat)."""
    from specprod_db.extract import redshift, tile
    from specprod_db.paths import Paths
    name, prod = loaded
    paths = Paths.from_environment(environment(prod))
    lastnight = query(pg_dsn, f'SELECT lastnight FROM "{name}".tile WHERE tileid = 1001')[0][0]
    [(_, fa)] = tile.fiberassign_files(paths, 1000)
    rr = next(p for _, p in redshift.redrock_files(paths, 1001, lastnight) if p)
    saved = {p: (open(p, "rb").read(), os.stat(p)) for p in (fa, rr)}
    os.remove(fa)
    os.symlink(os.path.basename(fa), fa)
    os.remove(rr)
    os.mkdir(rr)
    try:
        for options in ((), ("--hash",)):
            status, report = verify(*options)
            assert status == 1
            found = {d["tile"]: d["message"] for d in drifts(report, "inputs")}
            assert set(found) == {1000, 1001}, found
            assert os.path.basename(fa) in found[1000]
            assert "Too many levels of symbolic links" in found[1000]
            assert os.path.basename(rr) in found[1001] and "is a directory" in found[1001]
    finally:
        for path, (data, st) in saved.items():
            if os.path.isdir(path) and not os.path.islink(path):
                os.rmdir(path)
            elif os.path.lexists(path):
                os.remove(path)
            with open(path, "wb") as f:
                f.write(data)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert verify()[0] == 0


def test_desiname_sql_equals_desiutil(pg_dsn):
    """verify's DESINAME in SQL is desiutil's, edge cases included (datamodel §10.2)."""
    import numpy as np
    from desiutil.names import radec_to_desiname
    from psycopg2 import sql
    from specprod_db.ops.verify import _desiname_sql
    rng = np.random.default_rng(7)
    ra = np.concatenate([rng.uniform(0, 360, 2000), [0.0, 359.99999, 150.12345, 5.0, 10.0,
                                                     0.00004, 359.999999999, 1e-9]])
    dec = np.concatenate([rng.uniform(-90, 90, 2000), [-90.0, 90.0, -0.5, 2.25, -0.00005,
                                                       -0.99999, 0.0, -1e-9]])
    statement = sql.SQL("SELECT {} FROM unnest(%s::float8[], %s::float8[]) WITH ORDINALITY "
                        "AS c(ra, dec, i) ORDER BY i").format(
        _desiname_sql(sql.SQL("c.ra"), sql.SQL("c.dec")))
    conn = psycopg2.connect(pg_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(statement, (ra.tolist(), dec.tolist()))
            got = [r[0] for r in cur.fetchall()]
    finally:
        conn.close()
    assert got == radec_to_desiname(ra, dec).tolist()


def test_id_expressions_equal_the_numpy_encoding(pg_dsn):
    """verify's SQL of every composite id and frameid, derived from the constants of
    specprod_db.ids, equals the numpy encoding of ids on sample values (every survey,
    program, spgrp and camera band; the largest SPGRPVAL, LOCATION, TILEID, TARGETID)."""
    import numpy as np
    from psycopg2 import sql
    from specprod_db import ids
    from specprod_db.ops.verify import id_expressions
    rng = np.random.default_rng(17)
    n = 64
    surveys, programs, spgrps = list(ids.SURVEYID), list(ids.PROGRAMID), list(ids.SPGRPID)
    rows = {
        "survey": [surveys[i % len(surveys)] for i in range(n)],
        "program": [programs[i % len(programs)] for i in range(n)],
        "spgrp": [spgrps[i % len(spgrps)] for i in range(n)],
        "spgrpval": [0, 20240101, (1 << ids.SPGRPVAL_BITS) - 1]
        + rng.integers(0, 1 << ids.SPGRPVAL_BITS, n - 3).tolist(),
        "location": [0, 9999, (1 << 31) - 1] + rng.integers(0, 10000, n - 3).tolist(),
        "tileid": [0, 1, (1 << 31) - 1] + rng.integers(1, 100000, n - 3).tolist(),
        "targetid": [0, 1, (1 << 63) - 1] + rng.integers(0, 1 << 62, n - 3).tolist(),
        "expid": [0, 1, 10 ** 7] + rng.integers(0, 10 ** 6, n - 3).tolist(),
        "camera": [f"{ids.CAMERA_BANDS[i % 3]}{(i // 3) % 10}" for i in range(n)],
    }
    r = {k: np.array(v) for k, v in rows.items()}
    target = ids.to_int(ids.target_id(r["survey"], r["tileid"], r["targetid"]))
    fiberassign = ids.to_int(ids.fiberassign_id(r["location"], r["tileid"], r["targetid"]))
    expected = {
        ("target", "id"): target,
        ("fiberassign", "id"): fiberassign,
        ("potential", "id"): fiberassign,
        ("ztile", "id"): ids.to_int(ids.ztile_id(r["spgrp"], r["spgrpval"], r["tileid"],
                                                 r["targetid"])),
        ("ztile", "targetphotid"): target,
        ("zpix", "id"): ids.to_int(ids.zpix_id(r["program"], r["survey"], r["targetid"])),
        ("frame", "frameid"): ids.frameid(r["expid"], r["camera"]).tolist(),
    }
    expressions = id_expressions()
    assert sorted((t, c) for t, c, _ in expressions) == sorted(expected)
    types = {"survey": "text", "program": "text", "spgrp": "text", "spgrpval": "int4",
             "location": "int4", "tileid": "int4", "targetid": "int8", "expid": "int4",
             "camera": "text"}
    source = sql.SQL("unnest({}) WITH ORDINALITY AS v({}, i)").format(
        sql.SQL(", ").join(sql.SQL("%s::{}[]").format(sql.SQL(t)) for t in types.values()),
        sql.SQL(", ").join(map(sql.Identifier, types)))
    conn = psycopg2.connect(pg_dsn)
    try:
        with conn.cursor() as cur:
            for table, column, expression in expressions:
                cur.execute(sql.SQL("SELECT {} FROM {} ORDER BY i").format(expression, source),
                            [rows[k] for k in types])
                got = [int(v) for (v,) in cur.fetchall()]
                assert got == [int(v) for v in expected[table, column]], (table, column)
    finally:
        conn.close()


def test_a_desiname_that_is_not_its_coordinates(verify, loaded, pg_dsn):
    """A ztile desiname that is not radec_to_desiname of its coordinates (a name copied
    from a FIBERMAP, desispec#2238, or edited by hand) is drift naming tile and row."""
    name = loaded[0]
    tid, right = query(pg_dsn, f'SELECT targetid, desiname FROM "{name}".ztile WHERE '
                               "tileid = 1001 ORDER BY targetid LIMIT 1")[0]
    change = f'UPDATE "{name}".ztile SET desiname = %s WHERE tileid = 1001 AND targetid = %s'
    query(pg_dsn, change, ("DESI J999.9999+99.9999", tid))
    try:
        status, report = verify()
        assert status == 1
        [d] = drifts(report, "desiname")
        assert (d["tile"], d["table"], d["found"]) == (1001, "ztile", 1)
        assert d["rows"] == [f"{tid} DESI J999.9999+99.9999 (computed {right})"]
        status, report = verify("--tiles", "1000")
        assert status == 0 and "zpix not checked with --tiles" in \
            report["checks"]["desiname"]["notes"]
    finally:
        query(pg_dsn, change, (right, tid))
    status, report = verify()
    assert status == 0 and report["checks"]["desiname"]["checked"] == query(
        pg_dsn, f'SELECT count(*) FROM "{name}".ztile')[0][0]
