"""Database contents after a load equal what DESI's own reference functions give.

The mock production is loaded with ``specprod-db load``; then, tile by tile, the rows
are recomputed with desispec (``gather_targetphot``, ``gather_tractorphot``,
``read_redrock``, ``find_primary_spectra``) and desiutil (``radec_to_desiname``) and
compared with the database, column by column.
"""
import sys

import fitsio
import numpy as np
import psycopg2
import pytest
from astropy.table import Table

from conftest import mock_env, require

photo = require("desispec.io.photo")
zcatalog = require("desispec.zcatalog")
from desispec.scripts.zcatalog import read_redrock  # noqa: E402

CLI = [sys.executable, "-m", "specprod_db.cli"]


@pytest.fixture(scope="module")
def loaded(pg_dsn, small_production, tmp_path_factory):
    import secrets
    import subprocess
    prod = small_production[0]
    name = "test_" + secrets.token_hex(4)
    env = mock_env(prod, SPECPROD_DB_DSN=pg_dsn)
    subprocess.run(CLI + ["init", "--schema", name, "--no-grant"], env=env, check=True,
                   capture_output=True)
    subprocess.run(CLI + ["load", "--schema", name, "--stage-dir",
                          str(tmp_path_factory.mktemp("stage"))], env=env, check=True,
                   capture_output=True)
    conn = psycopg2.connect(pg_dsn)
    yield conn, name, prod, env
    conn.rollback()
    with conn.cursor() as cur:
        cur.execute(f'DROP SCHEMA "{name}" CASCADE')
    conn.commit()
    conn.close()


def _table(conn, schema_name, table, where="", args=()):
    with conn.cursor() as cur:
        cur.execute(f'SELECT * FROM "{schema_name}".{table} {where}', args)
        names = [d.name for d in cur.description]
        return names, cur.fetchall()


def _by_targetid(names, rows):
    i = names.index("targetid")
    return {r[i]: dict(zip(names, r)) for r in rows}


def _finite(v):
    v = np.asarray(v, dtype=float)
    return np.where(np.isfinite(v), v, -9999.0)


def _tiles(conn, schema_name):
    with conn.cursor() as cur:
        cur.execute(f'SELECT tileid, survey, program, lastnight FROM "{schema_name}".tile '
                    "ORDER BY tileid")
        return cur.fetchall()


def _potential_targets(prod, tileid):
    t = f"{tileid:06d}"
    fa = fitsio.read(f"{prod}/target/fiberassign/tiles/trunk/{t[:3]}/fiberassign-{t}.fits.gz",
                     ext="TARGETS", columns=["TARGETID", "RA", "DEC"])
    keep = (fa["TARGETID"] > 0) & (((fa["TARGETID"] >> 59) & 1) == 0)
    fa = fa[keep]
    cat = Table()
    cat["TARGETID"] = fa["TARGETID"]
    cat["TILEID"] = np.full(len(fa), tileid, dtype=np.int32)
    cat["TARGET_RA"] = fa["RA"]
    cat["TARGET_DEC"] = fa["DEC"]
    return cat


def test_photometry_and_target_match_desispec(loaded, monkeypatch):
    """photometry: the Legacy Surveys row where desispec matches the target from any of
    its tiles, else the targeting row of its first tile; target: per tile."""
    conn, name, prod, env = loaded
    for key in ("DESI_ROOT", "DESI_TARGET", "DESI_SURVEYOPS", "FIBER_ASSIGN_DIR",
                "DESI_SPECTRO_REDUX", "SPECPROD"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.delenv("DESI_ROOT_READONLY", raising=False)
    # desispec caches the DESI root of its first call (another test's tree, maybe)
    import desispec.io.meta
    monkeypatch.setattr(desispec.io.meta, "_desi_root_readonly", None)
    photometry = _by_targetid(*_table(conn, name, "photometry"))
    tractor, targeting = {}, {}
    for tileid, survey, program, _ in _tiles(conn, name):
        cat = _potential_targets(prod, tileid)
        tp = photo.gather_targetphot(cat)
        # design decision 10: the ID path uses the targeting RELEASE/BRICKID/OBJID/PHOTSYS
        tin = Table(cat, copy=True)
        for col in ("RELEASE", "BRICKID", "BRICK_OBJID", "PHOTSYS", "BRICKNAME"):
            tin[col] = tp[col]
        tr = photo.gather_tractorphot(tin)
        targets = _by_targetid(*_table(conn, name, "target", "WHERE tileid = %s", (tileid,)))
        assert set(targets) == set(cat["TARGETID"].tolist())
        for i, tid in enumerate(cat["TARGETID"].tolist()):
            if tr["BRICKNAME"][i] != "":
                tractor.setdefault(tid, tr[i])
            targeting.setdefault(tid, tp[i])
            trow = targets[tid]
            for col in ("PHOTSYS", "NUMOBS_INIT", "PRIORITY_INIT", "HPXPIXEL", "DESI_TARGET",
                        "SV3_DESI_TARGET", "SCND_TARGET", "OBSCONDITIONS"):
                assert trow[col.lower()] == tp[col][i], (tileid, tid, col)
            assert trow["subpriority"] == pytest.approx(float(tp["SUBPRIORITY"][i]))
            assert (trow["survey"], trow["program"]) == (survey, program)
    assert tractor and set(targeting) - set(tractor)
    assert set(photometry) == set(targeting)
    for tid, row in photometry.items():
        if tid in tractor:
            t = tractor[tid]
            assert row["ls_id"] == t["LS_ID"]
            assert row["brick_objid"] == t["OBJID"]
            assert row["morphtype"] == t["TYPE"]
            for col in ("RA", "DEC", "FLUX_G", "FLUX_R", "FLUX_Z", "FLUX_W1", "EBV",
                        "SHAPE_R", "PMRA", "PMDEC", "PARALLAX"):
                assert row[col.lower()] == pytest.approx(_finite(t[col]), rel=1e-6), col
            assert row["dchisq_ser"] == pytest.approx(_finite(t["DCHISQ"][4]))
        else:
            t = targeting[tid]
            assert row["release"] == t["RELEASE"]
            assert row["brickname"] == t["BRICKNAME"]
            for col in ("RA", "DEC", "FLUX_G", "FLUX_Z", "EBV", "PARALLAX"):
                assert row[col.lower()] == pytest.approx(_finite(t[col]), rel=1e-6), col
            if not (np.isfinite(t["PMRA"]) and np.isfinite(t["PMDEC"])):
                assert row["pmra"] == 0.0 and row["pmdec"] == 0.0
            else:
                assert row["pmra"] == pytest.approx(float(t["PMRA"]), rel=1e-6)


def test_ztile_matches_read_redrock(loaded):
    conn, name, prod, env = loaded
    from desiutil.names import radec_to_desiname
    nrows = 0
    for tileid, survey, program, lastnight in _tiles(conn, name):
        z = _by_targetid(*_table(conn, name, "ztile", "WHERE tileid = %s", (tileid,)))
        expected = set()
        for petal in range(10):
            path = (f"{env['DESI_SPECTRO_REDUX']}/daily/tiles/cumulative/{tileid}/"
                    f"{lastnight}/redrock-{petal}-{tileid}-thru{lastnight}.fits")
            import os
            if not os.path.exists(path):
                continue
            data, expfm = read_redrock(path, group="cumulative", pertile=True)
            keep = (data["TARGETID"] > 0) & (((data["TARGETID"] >> 59) & 1) == 0)
            data = data[keep]
            for row in data:
                tid = int(row["TARGETID"])
                expected.add(tid)
                db = z[tid]
                nrows += 1
                assert db["z"] == pytest.approx(float(row["Z"]))
                assert db["zwarn"] == row["ZWARN"]
                assert db["spectype"] == row["SPECTYPE"]
                assert db["desiname"] == row["DESINAME"] == radec_to_desiname(
                    row["TARGET_RA"], row["TARGET_DEC"])
                assert db["tsnr2_lrg"] == pytest.approx(float(row["TSNR2_LRG"]), rel=1e-6)
                assert db["coeff_2"] == pytest.approx(_finite(row["COEFF"][2]))
                assert db["spgrpval"] == lastnight and db["lastnight"] == row["LASTNIGHT"]
                assert db["firstnight"] == int(expfm["NIGHT"].min())
                assert db["coadd_numexp"] == row["COADD_NUMEXP"]
                assert db["mean_mjd"] == pytest.approx(float(row["MEAN_MJD"]))
        assert set(z) == expected
    assert nrows


def test_primary_flags_match_find_primary_spectra(loaded):
    conn, name, prod, env = loaded
    names, rows = _table(conn, name, "ztile", "ORDER BY id")
    t = Table(rows=rows, names=names)
    cat = Table()
    cat["TARGETID"] = np.asarray(t["targetid"], dtype=np.int64)
    cat["ZWARN"] = np.asarray(t["zwarn"], dtype=np.int64)
    cat["TSNR2_LRG"] = np.asarray(t["tsnr2_lrg"], dtype=np.float32)
    nspec, primary = zcatalog.find_primary_spectra(cat, sort_column="TSNR2_LRG")
    assert np.array_equal(np.asarray(t["zcat_nspec"]), nspec)
    assert np.array_equal(np.asarray(t["zcat_primary"]), primary)
    assert (nspec > 1).any(), "the mock observes some targets on several tiles"
    main = np.asarray(t["survey"]) == "main"
    nspec, primary = zcatalog.find_primary_spectra(cat[main], sort_column="TSNR2_LRG")
    assert np.array_equal(np.asarray(t["main_nspec"])[main], nspec)
    assert np.array_equal(np.asarray(t["main_primary"])[main], primary)
    assert not np.asarray(t["main_primary"])[~main].any()
