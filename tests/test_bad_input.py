"""Bad input, for 1 and 3 ranks (doc/daily.md "When something fails").

Fatal for a tile: the message names the tile, the file and the problem; the other tiles
load; the failure is recorded in tile_state; the run exits 1; no row of a failed tile is
anywhere (the tables equal a fresh load of the other tiles); the next run (inputs
repaired) retries it and reaches the state of a fresh load.  The tile-fatal cases are
injected together, on disjoint tiles, in two damaged copies of the mock production
(scenario "files": tile-local files; scenario "shared": catalogs shared between tiles),
and each case is asserted by its own test.

Not fatal (decision 11): a targeting catalog named in a fiberassign header that does not
exist is skipped with a warning naming tile, keyword and path, counted in
load_run.counts; the tile fails only when none of its named catalogs exists.

Fatal for the run (exit 2, nothing written): tiles file missing or empty, a database
user without write permission, a stage directory unwritable or too small.

Loaded with a warning that counts them: NaN/Inf in float columns (finitized to -9999),
TARGETIDs that disagree with their RELEASE/BRICKID/BRICK_OBJID, exposure rows of tiles
not in tiles-daily, duplicate tiles-daily lines.
"""
import gzip
import os
import re
import shutil

import fitsio
import numpy as np
import pytest

from conftest import (CLI, copy_mock, dump_schema, fresh_load_dump, init, load, mock_env, query,
                      run_mpi)
from test_daily import edit_tiles_csv, last_run, tile_state, tiles_csv, tiles_of

GOOD = [1000, 1002]


# --- FITS surgery ---------------------------------------------------------------------

def rewrite_fits(path, change):
    """Rewrite a (possibly gzipped) FITS file: ``change(extnum, extname, header, data)``
    returns ``(header, data)``."""
    gz = path.endswith(".gz")
    tmp = path + ".tmp.fits"
    with fitsio.FITS(path) as fin, fitsio.FITS(tmp, "rw", clobber=True) as fout:
        for hdu in fin:
            hdr, data = hdu.read_header(), hdu.read()
            name = hdu.get_extname() if hdu.get_extnum() else None
            hdr, data = change(hdu.get_extnum(), name, hdr, data)
            if hdu.get_extnum() == 0:
                fout.write(data, header=hdr)
            else:
                fout.write(data, header=hdr, extname=name)
    if gz:
        with open(tmp, "rb") as f, gzip.open(path, "wb") as g:
            shutil.copyfileobj(f, g)
        os.remove(tmp)
    else:
        os.replace(tmp, path)


def truncate(path):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 3)


copy_prod = copy_mock  # a copy of the mock production src at dest (env.sh names the copy)


def fresh_load_dump_of(dsn, mpiexec, prod, tileids, base):
    """The tables of a fresh load of a copy of ``prod`` whose tiles file keeps only the
    lines of ``tileids``: what a run that loaded just those tiles must hold."""
    copy = copy_prod(prod, os.path.join(str(base), "production"))
    keep = {int(t) for t in tileids}
    edit_tiles_csv(copy, lambda header, rows: [
        r for r in rows if int(r[header.index("TILEID")]) in keep])
    return fresh_load_dump(dsn, mpiexec, copy, os.path.join(str(base), "stage"))


def targetids_of_tiles(dump, tileids):
    """TARGETIDs the rows of ``tileids`` reference, in a dump's per-tile tables."""
    from specprod_db import schema
    out = set()
    for name in ("fiberassign", "potential", "target", "ztile"):
        names = schema.table(name).names
        t, k = names.index("tileid"), names.index("targetid")
        out |= {r[k] for r in dump[name] if r[t] in tileids}
    return out


#: Per-tile tables: a failed or interrupted tile has no row in any of them.
TILE_TABLES = ("tile", "exposure", "frame", "fiberassign", "potential", "target", "ztile")


def paths_of(prod):
    from specprod_db.paths import Paths
    return Paths.from_environment(mock_env(prod))


def lastnight(prod, tileid):
    import csv
    with open(tiles_csv(prod)) as f:
        rows = [r for r in csv.DictReader(f) if int(r["TILEID"]) == tileid]
    return int(max(rows, key=lambda r: r["UPDATED"] or "")["LASTNIGHT"])


# --- scenarios ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pristine(small_production, tmp_path_factory):
    """The small production advanced by one night with 3 new tiles (8 loadable tiles)."""
    from specprod_db.mock import advance_production
    dest = tmp_path_factory.mktemp("bad") / "pristine"
    copy_mock(small_production[0], dest)
    s = advance_production(str(dest), new_tiles=3, reobserve=0)
    assert s["new_tiles"] == [1002, 50000, 50001]
    return str(dest)


@pytest.fixture(scope="module")
def reference(pg_dsn, pristine, mpiexec, tmp_path_factory):
    return fresh_load_dump(pg_dsn, mpiexec, pristine, tmp_path_factory.mktemp("refstage"))


def damage_files(prod):
    """Tile-local damages; returns {tileid: (case, words the message must contain)}."""
    p = paths_of(prod)
    os.remove(p.fiberassign_file(100))
    truncate(p.fiberassign_file(40000))
    rewrite_fits(p.redrock_file(60000, lastnight(prod, 60000), 0),
                 lambda i, n, h, d: ({**{r["name"]: r["value"] for r in h.records()},
                                      "TILEID": 60001} if i == 0 else h, d))
    truncate(p.redrock_file(1001, lastnight(prod, 1001), 0))
    shutil.rmtree(p.cumulative_dir(50000, lastnight(prod, 50000)))

    def bad_nexp(header, rows):
        i, k = header.index("TILEID"), header.index("NEXP")
        for r in rows:
            if int(r[i]) == 50001:
                r[k] = "x"
        return rows
    edit_tiles_csv(prod, bad_nexp)
    return {100: ("missing fiberassign", ["fiberassign-000100.fits", "does not exist"]),
            40000: ("corrupt fiberassign", ["fiberassign-040000.fits.gz", "cannot be read"]),
            60000: ("redrock TILEID differs", ["redrock-0-60000-thru", "60001", "differs"]),
            1001: ("corrupt redrock", ["redrock-0-1001-thru"]),
            50000: ("missing LASTNIGHT directory", ["cumulative/50000/", "does not exist"]),
            50001: ("malformed tiles-daily line", ["tiles-daily.csv line",
                                                   "NEXP not an integer"])}


#: The catalog named in the header of 60000 that does not exist (scenario "shared"):
#: skipped with a warning, the tile loads.
MISSING_ONE = (60000, "SCND2", "DESIROOT/target/catalogs/nowhere/scnd2.fits")


def damage_shared(prod):
    """Damages of catalogs: sv3 targets (tile 100 only), every catalog named in the
    header of 40000 missing, one more (missing) catalog named in the header of 60000
    (not fatal: MISSING_ONE), a tractor brick only tile 50001 needs."""
    from specprod_db.extract.tractorphot import bricknames
    p = paths_of(prod)
    sv3 = os.path.join(p.target, "catalogs", "dr9", "0.57.0", "targets", "sv3",
                       "resolve", "dark")
    for name in os.listdir(sv3):
        truncate(os.path.join(sv3, name))
    tid, key, value = MISSING_ONE
    rewrite_fits(p.fiberassign_file(tid),
                 lambda i, n, h, d: (_set(h, key, value) if i == 0 else h, d))
    rewrite_fits(p.fiberassign_file(40000),
                 lambda i, n, h, d: (_set(_set(h, "TARG", "DESIROOT/target/nowhere-targ"),
                                          "TOO", "DESIROOT/survey/nowhere/ToO.ecsv")
                                     if i == 0 else h, d))
    bricks = {}
    for tid in (100, 1000, 1001, 1002, 40000, 50000, 50001, 60000):
        t = fitsio.read(p.fiberassign_file(tid), ext="TARGETS", columns=["RA", "DEC"])
        bricks[tid] = set(np.asarray(bricknames(t["RA"], t["DEC"])).astype(str))
    others = set().union(*(b for t, b in bricks.items() if t != 50001))
    brick = next(b for b in sorted(bricks[50001] - others)
                 if any(os.path.exists(p.tractor_file(r, b)) for r in ("north", "south")))
    for region in ("north", "south"):
        if os.path.exists(p.tractor_file(region, brick)):
            truncate(p.tractor_file(region, brick))
    return {100: ("corrupt targets file", ["sv3targets-dark", "cannot read targeting"]),
            40000: ("no named targeting catalog exists", [
                "fiberassign-040000.fits.gz", "target/nowhere-targ", "survey/nowhere/ToO",
                "no targeting catalog named in the header"]),
            50001: ("corrupt tractor file", [f"tractor-{brick}.fits", "cannot read tractor"])}


def _set(header, key, value):
    header[key] = value
    return header


SCENARIOS = {"files": damage_files, "shared": damage_shared}
_results = {}


@pytest.fixture(scope="module")
def scenario(pg_dsn, pristine, mpiexec, tmp_path_factory):
    """``scenario(name, ranks)`` -> the failed run's outcome (memoised)."""
    made = []

    def run(name, ranks):
        if (name, ranks) in _results:
            return _results[name, ranks]
        import secrets
        base = tmp_path_factory.mktemp(f"{name}{ranks}")
        prod = copy_prod(pristine, base / "production")
        cases = SCENARIOS[name](prod)
        schema_name = "test_" + secrets.token_hex(4)
        made.append(schema_name)
        init(pg_dsn, schema_name)
        r = run_mpi(mpiexec, ranks, CLI + ["load", "--schema", schema_name, "--stage-dir",
                                           str(base / "stage")],
                    env=mock_env(prod, SPECPROD_DB_DSN=pg_dsn), check=False)
        _results[name, ranks] = dict(
            prod=prod, stage=str(base / "stage"), schema=schema_name, cases=cases,
            returncode=r.returncode, log=r.stdout + r.stderr,
            state=tile_state(pg_dsn, schema_name), tiles=tiles_of(pg_dsn, schema_name),
            run=last_run(pg_dsn, schema_name), dump=dump_schema(pg_dsn, schema_name))
        return _results[name, ranks]
    yield run
    for schema_name in made:
        query(pg_dsn, f'DROP SCHEMA IF EXISTS "{schema_name}" CASCADE')


@pytest.fixture(scope="module")
def good_reference(pg_dsn, pristine, mpiexec, tmp_path_factory):
    """``good_reference(name, failed)`` -> the tables of a fresh load of the pristine
    production without the tiles ``failed`` (memoised per scenario)."""
    made = {}

    def get(name, failed):
        if name not in made:
            loadable = {t for t in _tileids(pristine) if t not in failed}
            made[name] = fresh_load_dump_of(pg_dsn, mpiexec, pristine, loadable,
                                            tmp_path_factory.mktemp(f"good-{name}"))
        return made[name]
    return get


def _tileids(prod):
    import csv
    with open(tiles_csv(prod)) as f:
        return {int(r["TILEID"]) for r in csv.DictReader(f)}


CASES = [("files", 100), ("files", 40000), ("files", 60000), ("files", 1001),
         ("files", 50000), ("files", 50001), ("shared", 100), ("shared", 40000),
         ("shared", 50001)]


@pytest.mark.parametrize("ranks", [1, 3])
@pytest.mark.parametrize("name,tileid", CASES,
                         ids=[f"{n}-{t}" for n, t in CASES])
def test_tile_fatal(name, tileid, ranks, scenario):
    res = scenario(name, ranks)
    case, words = res["cases"][tileid]
    assert res["returncode"] == 1, res["log"][-3000:]
    status, error = res["state"][tileid]
    assert status == "failed", case
    for w in words:
        assert w in error, (case, error)
    if name != "files" or tileid != 50001:  # a tiles-file line is its tile's by position
        assert f"tile {tileid}" in error, error
    assert re.search(rf"^\s+{tileid}: .*{re.escape(words[-1])}", res["log"], re.M), case
    assert tileid not in res["tiles"]
    assert set(GOOD) <= set(res["tiles"])          # the other tiles load
    assert res["run"][0] == "failed"
    assert str(tileid) in res["run"][1]["failed"]


@pytest.mark.parametrize("ranks", [1, 3])
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_no_row_of_failed_tiles(name, ranks, scenario, reference, good_reference):
    """The failed tiles' own rows are in no table (their photometry: the rows of
    TARGETIDs no loaded tile references), and the tables are those of a fresh load of
    the other tiles."""
    from specprod_db import schema
    res = scenario(name, ranks)
    failed, loaded = set(res["cases"]), set(res["tiles"])
    assert failed and not failed & loaded
    got = res["dump"]
    for table in TILE_TABLES:
        k = schema.table(table).names.index("tileid")
        assert not [r for r in got[table] if r[k] in failed], table
    only_failed = targetids_of_tiles(reference, failed) - targetids_of_tiles(reference,
                                                                             loaded)
    assert only_failed                        # the check below has something to find
    k = schema.table("photometry").names.index("targetid")
    assert not only_failed & {r[k] for r in got["photometry"]}
    good = good_reference(name, failed)
    assert set(good) == set(got)
    for table in good:
        assert got[table] == good[table], table


@pytest.mark.parametrize("ranks", [1, 3])
def test_missing_catalog_skipped(ranks, scenario, good_reference):
    """One of a tile's named catalogs missing: the tile loads, its rows those of the
    pristine tile (in a fresh load of the same tiles: primary flags depend on them), with
    a warning naming tile, keyword and path."""
    from specprod_db import schema
    res = scenario("shared", ranks)
    tid, key, value = MISSING_ONE
    assert tid in res["tiles"] and res["state"][tid][0] == "loaded"
    path = value.replace("DESIROOT", "")
    assert re.search(rf"tile {tid}: targeting catalog {key} = \S*{re.escape(path)} "
                     r".*does not exist", res["log"]), res["log"][-3000:]
    good = good_reference("shared", set(res["cases"]))
    for table in TILE_TABLES:
        k = schema.table(table).names.index("tileid")
        mine = [r for r in res["dump"][table] if r[k] == tid]
        assert mine and mine == [r for r in good[table] if r[k] == tid], table


@pytest.mark.parametrize("ranks", [1, 3])
def test_missing_catalog_counted(ranks, scenario):
    res = scenario("shared", ranks)
    warned = re.findall(r"tile \d+: targeting catalog \S+ = \S+ .*does not exist",
                        res["log"])
    assert warned
    assert res["run"][1]["warnings"]["missing_catalogs"] == len(warned)


@pytest.mark.parametrize("ranks", [1, 3])
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_next_run_retries(name, ranks, scenario, pg_dsn, pristine, reference, mpirun):
    res = scenario(name, ranks)
    failed = set(res["cases"])
    # repair the inputs: the next run retries the failed tiles and converges
    shutil.rmtree(res["prod"])
    copy_prod(pristine, res["prod"])
    r = load(mpirun, ranks, pg_dsn, res["schema"], res["prod"], res["stage"])
    for tid in failed:
        assert re.search(rf"tile {tid} (INSERT|UPDATE)", r.stdout + r.stderr)
    assert dump_schema(pg_dsn, res["schema"]) == reference
    assert all(s == "loaded" for t, (s, _) in tile_state(pg_dsn, res["schema"]).items()
               if t != 20000)


# --- fatal for the run ----------------------------------------------------------------

def _nothing_written(dsn, name):
    for table in ("load_run", "tile_state", "tile", "photometry"):
        assert query(dsn, f'SELECT count(*) FROM "{name}".{table}')[0][0] == 0, table


RUN_FATAL = ["tiles missing", "tiles empty", "read-only user", "stage unwritable",
             "stage too small"]


# rank 0 decides before any task: 3 ranks checked once (all ranks must exit, not hang)
@pytest.mark.parametrize("case,ranks", [(c, 1) for c in RUN_FATAL] + [(RUN_FATAL[0], 3)])
def test_run_fatal(case, ranks, pg_dsn, schemas, copy_production, mpirun, tmp_path):
    prod = copy_production()
    name = schemas()
    stage, extra, dsn = tmp_path / "stage", [], pg_dsn
    csv = tiles_csv(prod)
    if case == "tiles missing":
        os.remove(csv)
        os.remove(csv.replace(".csv", ".fits"))
        expect = ["tiles file", "does not exist"]
    elif case == "tiles empty":
        with open(csv) as f:
            header = f.readline()
        with open(csv, "w") as f:
            f.write(header)
        expect = ["tiles file", "has no tiles"]
    elif case == "read-only user":
        role = f"ro_{name}"
        query(pg_dsn, f'CREATE ROLE "{role}" LOGIN; GRANT USAGE ON SCHEMA "{name}" TO '
                      f'"{role}"; GRANT SELECT ON ALL TABLES IN SCHEMA "{name}" TO "{role}"')
        dsn = re.sub(r"user=\S+", f"user={role}", pg_dsn)
        expect = [f"database user {role} lacks INSERT/UPDATE/DELETE on {name}.", "nothing"]
    elif case == "stage unwritable":
        (tmp_path / "file").write_text("not a directory")
        stage = tmp_path / "file" / "stage"
        expect = ["stage directory", "is not writable"]
    else:
        extra = ["--stage-min-free", str(2 ** 40)]  # a TiB of MiB: more than any disk
        expect = ["stage directory", "MiB free", "needs about"]
    try:
        r = load(mpirun, ranks, dsn, name, prod, stage, *extra, check=False)
    finally:
        if case == "read-only user":
            query(pg_dsn, f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')
    assert r.returncode == 2, r.stdout + r.stderr
    for w in expect:
        assert w in r.stderr, r.stderr
    _nothing_written(pg_dsn, name)


# --- loaded, with a warning that counts them ------------------------------------------
# One damaged copy, one load; each case is its own test on that run.

def kept(rows):
    """Indices of rows the loader keeps (no sky, TARGETID > 0)."""
    from specprod_db.ids import no_sky
    return np.flatnonzero(no_sky(rows["TARGETID"]))


NAN_TILE = 1000


def _nonfinite(prod):
    """NaN/Inf in double and real columns, scalar and array, of tiles-daily, exposures,
    fiberassign and redrock (targeting photometry NaN is covered by the mock's nan_pm)."""
    p, tid = paths_of(prod), NAN_TILE
    night = lastnight(prod, tid)

    def tiles(header, rows):
        i, k = header.index("TILEID"), header.index("EFFTIME_GFA")
        for r in rows:
            if int(r[i]) == tid:
                r[k] = "nan"
        return rows
    edit_tiles_csv(prod, tiles)

    def exposures(i, n, h, d):
        if n == "EXPOSURES":
            d = d.copy()
            d["SEEING_ETC"][d["TILEID"] == tid] = np.inf
        return h, d
    rewrite_fits(p.exposures(), exposures)

    def fiberassign(i, n, h, d):
        if n == "FIBERASSIGN":
            d = d.copy()
            d["FIBERASSIGN_X"][kept(d)[:2]] = np.nan
        return h, d
    rewrite_fits(p.fiberassign_file(tid), fiberassign)

    def redrock(i, n, h, d):
        if n == "REDSHIFTS":
            d = d.copy()
            d["ZERR"][kept(d)[:3]] = np.nan
            d["COEFF"][kept(d)[0], :2] = -np.inf
        return h, d
    rewrite_fits(p.redrock_file(tid, night, 0), redrock)


def _targetid_mismatch(prod):
    """A targeting row of tile 100 whose BRICK_OBJID differs from its TARGETID's OBJID;
    returns (targetid, objid encoded)."""
    from specprod_db import ids
    p = paths_of(prod)
    fa = fitsio.read(p.fiberassign_file(100), ext="TARGETS", columns=["TARGETID"])
    sv3 = os.path.join(p.target, "catalogs", "dr9", "0.57.0", "targets", "sv3",
                       "resolve", "dark")
    path = os.path.join(sv3, sorted(os.listdir(sv3))[0])
    cat = fitsio.read(path, columns=["TARGETID", "RELEASE"])
    pick = next(int(t) for t, rel in zip(cat["TARGETID"], cat["RELEASE"])
                if t in set(fa["TARGETID"].tolist()) and rel >= 9000)
    objid = int(ids.decode_targetid(pick)[0])

    def change(i, n, h, d):
        if i == 1:
            d = d.copy()
            d["BRICK_OBJID"][d["TARGETID"] == pick] = objid + 7
        return h, d
    rewrite_fits(path, change)
    return pick, objid


def _orphan_exposures(prod):
    def orphan(i, n, h, d):
        if n == "EXPOSURES":
            extra = d[:2].copy()
            extra["TILEID"] = 99999
            extra["EXPID"] = [9999998, 9999999]
            d = np.concatenate([d, extra])
        return h, d
    rewrite_fits(paths_of(prod).exposures(), orphan)


@pytest.fixture(scope="module")
def warned(pg_dsn, small_production, mpiexec, tmp_path_factory):
    """The small production with the three damages above, loaded once (1 rank)."""
    import secrets
    base = tmp_path_factory.mktemp("warned")
    prod = copy_mock(small_production[0], base / "production")
    _nonfinite(prod)
    pick = _targetid_mismatch(prod)
    _orphan_exposures(prod)
    name = "test_" + secrets.token_hex(4)
    init(pg_dsn, name)
    try:
        r = run_mpi(mpiexec, 1, CLI + ["load", "--schema", name, "--stage-dir",
                                       str(base / "stage")],
                    env=mock_env(prod, SPECPROD_DB_DSN=pg_dsn))
        yield dict(schema=name, log=r.stdout + r.stderr, pick=pick,
                   run=last_run(pg_dsn, name))
    finally:
        query(pg_dsn, f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def test_nonfinite_values_finitized(warned, pg_dsn):
    name, tid = warned["schema"], NAN_TILE
    m = re.search(rf"tile {tid}: (\d+) non-finite value\(s\) \(NaN/Inf\) stored as -9999 "
                  r"in (\d+) column\(s\): (.*)", warned["log"])
    assert m, warned["log"][-3000:]
    counts = dict(re.findall(r"(\w+) (\d+)", m.group(3)))
    assert counts["efftime_gfa"] == "1" and counts["zerr"] == "3"       # double
    assert counts["coeff_0"] == "1" and counts["coeff_1"] == "1"       # double, array
    assert counts["fiberassign_x"] == "2" and int(counts["seeing_etc"]) >= 1  # real
    q = f'SELECT %s FROM "{name}".%s WHERE tileid = {tid}'
    assert query(pg_dsn, q % ("efftime_gfa", "tile"))[0][0] == -9999
    assert -9999 in {r[0] for r in query(pg_dsn, q % ("seeing_etc", "exposure"))}
    assert sum(r[0] == -9999 for r in query(pg_dsn, q % ("fiberassign_x", "fiberassign"))) == 2
    assert sum(r[0] == -9999 for r in query(pg_dsn, q % ("zerr", "ztile"))) == 3
    assert warned["run"][0] == "ok"
    assert warned["run"][1]["warnings"]["finitized"] >= int(m.group(1))


def test_targetid_disagreeing_with_columns(warned, pg_dsn):
    """Loaded with the row's own columns (as desispec's gather_targetphot reads it)."""
    pick, objid = warned["pick"]
    assert re.search(r"tile 100: 1 targeting row\(s\) whose TARGETID does not encode their "
                     r"own RELEASE/BRICKID/BRICK_OBJID", warned["log"])
    assert query(pg_dsn, f'SELECT brick_objid FROM "{warned["schema"]}".photometry '
                         "WHERE targetid = %s", (pick,)) == [(objid + 7,)]
    assert warned["run"][1]["warnings"]["targetid_mismatch"] == 1


def test_orphan_exposures_ignored(warned, pg_dsn):
    assert "2 exposure row(s) of 1 tile(s) not in the tiles file are ignored: 99999" \
        in warned["log"]
    assert query(pg_dsn, f'SELECT count(*) FROM "{warned["schema"]}".exposure '
                         "WHERE tileid = 99999") == [(0,)]


def test_duplicate_lines(warned, pg_dsn):
    """Decision 1: the latest UPDATED wins, logged once."""
    assert len(re.findall(r"tile 1000 has 2 lines in the tiles file; using line \d+",
                          warned["log"])) == 1
    assert query(pg_dsn, f'SELECT lastnight, nexp FROM "{warned["schema"]}".tile '
                         "WHERE tileid = 1000") == [(20241101, 4)]
