"""The tile afterburners (``emline``, ``qso_mgii``, ``qso_qn`` files of each petal) ->
``ztile_emline``, ``ztile_qso_mgii``, ``ztile_qso_qn``, through the daily pipeline.

The tables of a loaded mock production (1 and 3 ranks) equal what desispec 0.70's
``read_redrock`` returns for those columns on the same files, row for row (joined by
TARGETID and tile), each row carrying the id of its ztile row; an UPDATE of a tile (new
LASTNIGHT, or only an afterburner file rewritten) replaces its rows; a DELETE removes
them; a missing afterburner file leaves its rows absent; a file not row-matched to
REDSHIFTS fails the tile naming the file.
"""
import os

import fitsio
import numpy as np
import pytest
from desispec.scripts.zcatalog import read_redrock

from conftest import dump_schema, load, mock_env, query
from test_daily import last_run, plan_lines, tile_state

from specprod_db import ids, schema
from specprod_db.errors import InputError
from specprod_db.extract import afterburner, redshift
from specprod_db.paths import Paths

TABLES = [t.name for t in schema.AFTERBURNER_TABLES]
#: table -> [(database column, read_redrock column, element of an array column)]
COLUMNS = {
    "ztile_emline": [("oii_flux", "OII_FLUX", None), ("oii_flux_ivar", "OII_FLUX_IVAR", None)],
    "ztile_qso_mgii": [("is_qso_mgii", "IS_QSO_MGII", None)],
    "ztile_qso_qn": [(c.lower(), c, None) for c in (
        "IS_QSO_QN_NEW_RR", "C_LYA", "C_CIV", "C_CIII", "C_MgII", "C_Hbeta", "C_Halpha",
        "Z_NEW", "ZERR_NEW", "ZWARN_NEW", "SPECTYPE_NEW", "SUBTYPE_NEW", "CHI2_NEW",
        "DELTACHI2_NEW")] + [(f"coeff_new_{k}", "COEFF_NEW", k) for k in range(10)],
}


def _paths(prod):
    return Paths.from_environment(mock_env(prod))


def _value(v, pgtype):
    """A read_redrock value as the database returns it (real: via float32)."""
    if isinstance(v, (bytes, np.bytes_)):
        v = v.decode()
    if isinstance(v, str):
        return v.rstrip()
    if pgtype == "real":
        return float(np.float32(v))
    if pgtype == "boolean":
        return bool(v)
    if pgtype in ("bigint", "integer", "smallint"):
        return int(v)
    return float(v)


def expected(prod, tiles):
    """{table: {(targetid, tileid): (ztile id, values...)}} from read_redrock on the
    petal files of ``tiles`` ({tileid: lastnight}): the ztile row's id as the ztile
    extraction computes it, then the table's columns."""
    paths = _paths(prod)
    out = {t: {} for t in TABLES}
    for tileid, lastnight in tiles.items():
        for petal in redshift.PETALS:
            path = redshift.petal_file(paths, tileid, lastnight, petal)
            if path is None:
                continue
            data, _ = read_redrock(path, group="cumulative", pertile=True)
            data = data[ids.no_sky(data["TARGETID"])]
            zid = ids.ztile_id("cumulative", data["SPGRPVAL"], data["TILEID"],
                               data["TARGETID"])
            for table in TABLES:
                cols = COLUMNS[table]
                types = {c.name: c.pgtype for c in schema.table(table).columns}
                for i, row in enumerate(data):
                    key = (int(row["TARGETID"]), int(tileid))
                    values = tuple(_value(row[f] if k is None else row[f][k], types[c])
                                   for c, f, k in cols)
                    out[table][key] = (_id(zid[i]),) + values
    return out


def _id(words):
    return (int(words[0]) << 64) | int(words[1])


def in_database(dsn, name, tiles=None):
    """{table: {(targetid, tileid): (id, values...)}} of the afterburner tables, each
    row's id checked against its ztile row (same targetid and tileid)."""
    out = {}
    for table in TABLES:
        cols = ", ".join(f"a.{c}" for c, _, _ in COLUMNS[table])
        rows = query(dsn, f'SELECT a.targetid, a.tileid, a.id, z.targetid, z.tileid, {cols} '
                          f'FROM "{name}".{table} a LEFT JOIN "{name}".ztile z USING (id)')
        types = [schema.table(table).column(c).pgtype for c, _, _ in COLUMNS[table]]
        out[table] = {}
        for r in rows:
            assert (r[3], r[4]) == (r[0], r[1]), (table, r[:5])
            if tiles is None or r[1] in tiles:
                out[table][(r[0], r[1])] = (int(r[2]),) + tuple(
                    _value(v, t) for v, t in zip(r[5:], types))
    return out


def loaded_tiles(dsn, name):
    return dict(query(dsn, f'SELECT tileid, lastnight FROM "{name}".tile_state '
                           "WHERE status = 'loaded'"))


def assert_match(dsn, name, prod, tiles=None):
    tiles = tiles if tiles is not None else loaded_tiles(dsn, name)
    exp, got = expected(prod, tiles), in_database(dsn, name, set(tiles))
    for table in TABLES:
        assert got[table].keys() == exp[table].keys(), table
        for key in exp[table]:
            assert got[table][key] == exp[table][key], (table, key)
    return exp


def rewrite(path, ext, edit):
    """Rewrite the FITS file ``path`` with ``edit(data) -> data`` applied to HDU ``ext``."""
    tmp = path + ".tmp.fits"
    with fitsio.FITS(path) as fin, fitsio.FITS(tmp, "rw", clobber=True) as fout:
        for hdu in fin:
            hdr = hdu.read_header()
            data = hdu.read()
            if hdu.get_extnum() == 0:
                fout.write(data, header=hdr)
                continue
            if hdu.get_extname() == ext:
                data = edit(data)
            fout.write(data, header=hdr, extname=hdu.get_extname())
    os.replace(tmp, path)


# --- loads ------------------------------------------------------------------------------

@pytest.mark.parametrize("ranks", [1, 3])
def test_loaded_tables_equal_read_redrock(ranks, pg_dsn, schemas, copy_production, mpirun,
                                          tmp_path):
    prod = copy_production()
    name = schemas()
    load(mpirun, ranks, pg_dsn, name, prod, tmp_path / "stage")
    assert last_run(pg_dsn, name)[0] == "ok"
    exp = assert_match(pg_dsn, name, prod)
    assert all(exp[t] for t in TABLES)
    # one row per ztile row, in every table
    nz = query(pg_dsn, f'SELECT count(*) FROM "{name}".ztile')[0][0]
    for table in TABLES:
        assert query(pg_dsn, f'SELECT count(*) FROM "{name}".{table}')[0][0] == nz, table


def test_update_replaces_and_delete_removes(pg_dsn, schemas, copy_production, mpirun,
                                            tmp_path):
    from specprod_db.mock import advance_production
    prod = copy_production()
    name = schemas()
    stage = tmp_path / "stage"
    load(mpirun, 1, pg_dsn, name, prod, stage)
    before = loaded_tiles(pg_dsn, name)
    s = advance_production(prod, new_tiles=1, reobserve=2, withdraw=True)
    plan = plan_lines(load(mpirun, 1, pg_dsn, name, prod, stage, "--dry-run").stdout)
    load(mpirun, 1, pg_dsn, name, prod, stage, "--max-delete-fraction", "0.5")
    assert last_run(pg_dsn, name)[0] == "ok"
    after = loaded_tiles(pg_dsn, name)
    updated = [t for t, (a, _) in plan.items() if a == "UPDATE"]
    assert updated and any(after[t] != before[t] for t in updated)
    assert s["withdrawn"] and all(plan[t][0] == "DELETE" for t in s["withdrawn"])
    # the UPDATEd tiles hold exactly the rows of their new LASTNIGHT's files
    assert_match(pg_dsn, name, prod)
    for table in TABLES:
        stale = query(pg_dsn, f'SELECT count(*) FROM "{name}".{table} a JOIN "{name}".tile '
                              "t USING (tileid) JOIN \"" + name + "\".ztile z USING (id) "
                              "WHERE z.lastnight <> t.lastnight")[0][0]
        assert stale == 0, table
        # the DELETEd tile has no row left
        assert query(pg_dsn, f'SELECT count(*) FROM "{name}".{table} WHERE tileid = ANY(%s)',
                     (s["withdrawn"],))[0][0] == 0, table
    # incremental == fresh for the afterburner tables
    fresh = schemas()
    load(mpirun, 1, pg_dsn, fresh, prod, tmp_path / "fresh")
    assert dump_schema(pg_dsn, name, TABLES) == dump_schema(pg_dsn, fresh, TABLES)


def test_a_rewritten_afterburner_updates_its_tile(pg_dsn, schemas, copy_production, mpirun,
                                                  tmp_path):
    prod = copy_production()
    name = schemas()
    stage = tmp_path / "stage"
    load(mpirun, 1, pg_dsn, name, prod, stage)
    tiles = loaded_tiles(pg_dsn, name)
    paths = _paths(prod)
    tileid = sorted(tiles)[0]
    petal = next(p for p in redshift.PETALS
                 if redshift.petal_file(paths, tileid, tiles[tileid], p))
    path = paths.redrock_file(tileid, tiles[tileid], petal, prefix="emline")

    def double(d):
        d["OII_FLUX"] = d["OII_FLUX"] * 2 + 1
        return d
    rewrite(path, "EMLINEFIT", double)
    plan = plan_lines(load(mpirun, 1, pg_dsn, name, prod, stage, "--dry-run").stdout)
    assert plan[tileid][0] == "UPDATE", plan
    assert all(a != "UPDATE" for t, (a, _) in plan.items() if t != tileid), plan
    load(mpirun, 1, pg_dsn, name, prod, stage)
    assert last_run(pg_dsn, name)[0] == "ok"
    assert_match(pg_dsn, name, prod)
    # and once loaded, nothing more to do
    plan = plan_lines(load(mpirun, 1, pg_dsn, name, prod, stage, "--dry-run").stdout)
    assert all(a != "UPDATE" for a, _ in plan.values()), plan


def test_missing_and_unmatched_files(pg_dsn, schemas, copy_production, mpirun, tmp_path):
    """A missing qso_qn file: the tile loads, without that petal's qso_qn rows.  An emline
    file whose rows are not those of REDSHIFTS: the tile fails, naming the file."""
    prod = copy_production()
    paths = _paths(prod)
    from specprod_db.extract import tile as tile_extract
    table, _, _ = tile_extract.read_tiles_file(paths.tiles())
    latest = {}
    for line in table:
        latest[int(line["TILEID"])] = int(line["LASTNIGHT"])
    petals = {t: [p for p in redshift.PETALS if redshift.petal_file(paths, t, n, p)]
              for t, n in latest.items()}
    good, bad = [t for t in sorted(petals) if petals[t]][:2]
    tiles = {good: latest[good]}
    exp = expected(prod, tiles)  # read_redrock needs every afterburner file
    missing = paths.redrock_file(good, latest[good], petals[good][0], prefix="qso_qn")
    os.remove(missing)
    unmatched = paths.redrock_file(bad, latest[bad], petals[bad][0], prefix="emline")
    rewrite(unmatched, "EMLINEFIT", lambda d: d[::-1])

    name = schemas()
    load(mpirun, 1, pg_dsn, name, prod, tmp_path / "stage", check=False)
    state = tile_state(pg_dsn, name)
    assert state[good][0] == "loaded"
    assert state[bad][0] == "failed"
    assert os.path.basename(unmatched) in state[bad][1] and "row-matched" in state[bad][1]
    assert query(pg_dsn, f'SELECT count(*) FROM "{name}".ztile WHERE tileid = %s',
                 (bad,))[0][0] == 0
    # the good tile: everything but the missing file's rows
    got = in_database(pg_dsn, name, set(tiles))
    gone = {(int(t), good) for t in fitsio.read(
        redshift.petal_file(paths, good, latest[good], petals[good][0]), "REDSHIFTS",
        columns=["TARGETID"])["TARGETID"]}
    assert exp["ztile_qso_qn"].keys() - got["ztile_qso_qn"].keys() == \
        gone & exp["ztile_qso_qn"].keys() != set()
    assert all(exp["ztile_qso_qn"][k] == got["ztile_qso_qn"][k] for k in got["ztile_qso_qn"])
    for t in ("ztile_emline", "ztile_qso_mgii"):
        assert got[t] == exp[t], t


def test_extraction_rules(copy_production):
    """Direct calls: a missing file is listed and counted; a file without its HDU, or
    not row-matched, raises InputError naming tile and file."""
    prod = copy_production()
    paths = _paths(prod)
    from specprod_db.extract import tile as tile_extract
    table, _, _ = tile_extract.read_tiles_file(paths.tiles())
    line = next(ln for ln in table if ln["EFFTIME_SPEC"] > 0)
    tileid, night = int(line["TILEID"]), int(line["LASTNIGHT"])
    z, info = redshift.ztile_rows(paths, tileid, night, str(line["SURVEY"]),
                                  str(line["PROGRAM"]))
    petal = sorted(info["files"])[0]
    stats = {}
    rows, abinfo = afterburner.afterburner_rows(paths, tileid, night, info["files"], z,
                                                stats=stats)
    assert abinfo["missing"] == [] and all(len(rows[t]) == len(z) for t in TABLES)
    zt = {int(t): _id(i) for t, i in zip(z["targetid"], z["id"])}
    for t in TABLES:
        assert {int(r["targetid"]): _id(r["id"]) for r in rows[t]} == zt
        assert (rows[t]["tileid"] == tileid).all()
    mgii = paths.redrock_file(tileid, night, petal, prefix="qso_mgii")
    os.remove(mgii)
    rows, abinfo = afterburner.afterburner_rows(paths, tileid, night, info["files"], z,
                                                stats=stats)
    assert abinfo["missing"] == [os.path.basename(mgii)]
    assert stats["missing_afterburners"] == 1
    assert len(rows["ztile_qso_mgii"]) < len(z) == len(rows["ztile_emline"])
    qn = paths.redrock_file(tileid, night, petal, prefix="qso_qn")
    rewrite(qn, "QN_RR", lambda d: d[1:])
    with pytest.raises(InputError, match=rf"tile {tileid}: .*{os.path.basename(qn)}.*"
                                         "not row-matched"):
        afterburner.afterburner_rows(paths, tileid, night, info["files"], z)
    with open(qn, "wb") as f:
        f.write(b"not a FITS file")
    with pytest.raises(InputError, match=rf"tile {tileid}: .*{os.path.basename(qn)}: "
                                         "cannot be read"):
        afterburner.afterburner_rows(paths, tileid, night, info["files"], z)


def test_a_petal_of_sky_fibres_only(copy_production):
    """A petal whose every fibre is sky or unassigned (TARGETID < 0: found by the
    fuzzer, seed 302, a small backup tile) loads no row from that petal and the others'
    rows as before; it was an internal error (reshape of COEFF with 0 rows)."""
    prod = copy_production()
    paths = _paths(prod)
    from specprod_db.extract import tile as tile_extract
    table, _, _ = tile_extract.read_tiles_file(paths.tiles())
    line = next(ln for ln in table if ln["EFFTIME_SPEC"] > 0)
    tileid, night = int(line["TILEID"]), int(line["LASTNIGHT"])
    survey, program = str(line["SURVEY"]), str(line["PROGRAM"])
    z, info = redshift.ztile_rows(paths, tileid, night, survey, program)
    petal = sorted(info["files"])[0]
    path = info["files"][petal]
    with fitsio.FITS(path) as fx:
        from_petal = set(fx["REDSHIFTS"].read(columns=["TARGETID"])["TARGETID"].tolist())

    def unassigned(d):
        d = d.copy()
        d["TARGETID"] = -1 - np.arange(len(d))
        return d
    for ext in ("REDSHIFTS", "FIBERMAP", "EXP_FIBERMAP", "TSNR2"):
        rewrite(path, ext, unassigned)
    for prefix, ext in (("emline", "EMLINEFIT"), ("qso_mgii", "MGII"), ("qso_qn", "QN_RR")):
        rewrite(paths.redrock_file(tileid, night, petal, prefix=prefix), ext, unassigned)
    got, info = redshift.ztile_rows(paths, tileid, night, survey, program)
    keep = ~np.isin(z["targetid"], list(from_petal))
    assert len(got) == keep.sum() < len(z)
    assert got.tobytes() == z[keep].tobytes()
    rows, _ = afterburner.afterburner_rows(paths, tileid, night, info["files"], got)
    assert all(len(rows[t]) == len(got) for t in TABLES)
