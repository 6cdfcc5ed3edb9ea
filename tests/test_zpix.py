"""A static (named) production with HEALPix redshifts: ``zpix`` against desispec.

A mock static production (``make_production(..., static='fuji')``: tiles-fuji.fits,
exposures-fuji.fits, cumulative and HEALPix redrock files) is loaded with ``specprod-db
load --initial`` on 1 and 3 ranks.  Then ``zpix`` must equal, row for row, what
desispec's own reader gives for every HEALPix file found by desispec's ``findfile
('redrock_hp', ...)`` (``read_redrock(path, group='healpix')``: values, DESINAME,
HEALPIX), with the composite id of datamodel.md §6.5 computed here from its formula, and
the primary flags must equal desispec's ``find_primary_spectra`` on the zpix rows, with
the sort column desispec uses for HEALPix catalogs (``EFFTIME_SPEC = 12.15 *
TSNR2_LRG``, ``desi_zcatalog`` and ``create_summary_catalog``).  Finally: a file whose
TARGETIDs no loaded tile provides fails alone and loads on the next run (decision 13).
"""
import os
import secrets

import numpy as np
import psycopg2
import pytest
from astropy.table import Table

from conftest import dump_schema, init, load, mock_env, query, require
from specprod_db import ids, schema

zcatalog = require("desispec.zcatalog")
from desispec.scripts.zcatalog import read_redrock  # noqa: E402

SPECPROD = "fuji"
#: datamodel.md §6.4 (and decision 5 for dark1b/bright1b), written out here on purpose.
SURVEYID = {"cmx": 1, "special": 2, "sv1": 3, "sv2": 4, "sv3": 5, "main": 6}
PROGRAMID = {"backup": 1, "bright": 2, "dark": 3, "other": 4, "dark1b": 5, "bright1b": 6}
FLAGS = ("sv_nspec", "sv_primary", "main_nspec", "main_primary", "zcat_nspec",
         "zcat_primary")


@pytest.fixture(scope="module")
def static(tmp_path_factory):
    from specprod_db.mock import make_production
    out = tmp_path_factory.mktemp("static") / "fuji"
    summary = make_production(str(out), small=True, seed=5, static=SPECPROD)
    return str(out), summary


@pytest.fixture(scope="module")
def loaded(pg_dsn, static, tmp_path_factory, mpiexec):
    """The static production loaded with --initial on 1 and on 3 ranks."""
    from conftest import run_mpi
    prod = static[0]
    names = []
    try:
        for n in (1, 3):
            name = "test_" + secrets.token_hex(4)
            names.append(name)
            init(pg_dsn, name)
            r = load(lambda k, argv, **kw: run_mpi(mpiexec, k, argv, **kw), n, pg_dsn, name,
                     prod, tmp_path_factory.mktemp("stage"), "--initial")
            assert "HEALPix files:" in r.stdout and "0 failed" in r.stdout, r.stdout
        yield prod, names
    finally:
        for name in names:
            query(pg_dsn, f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def _desispec_env(monkeypatch, prod):
    for key, value in mock_env(prod).items():
        if key in ("DESI_ROOT", "DESI_SPECTRO_REDUX", "SPECPROD", "DESI_TARGET",
                   "FIBER_ASSIGN_DIR", "DESI_SURVEYOPS"):
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("DESI_ROOT_READONLY", raising=False)
    import desispec.io.meta
    monkeypatch.setattr(desispec.io.meta, "_desi_root_readonly", None)


def _healpix_files(prod):
    """(survey, program, healpix) of every HEALPix redrock file, from the directories."""
    root = os.path.join(prod, "spectro", "redux", SPECPROD, "healpix")
    out = []
    for survey in sorted(os.listdir(root)):
        for program in sorted(os.listdir(os.path.join(root, survey))):
            for group in sorted(os.listdir(os.path.join(root, survey, program))):
                for pix in sorted(os.listdir(os.path.join(root, survey, program, group))):
                    out.append((survey, program, int(pix)))
    return out


def _expected(prod, monkeypatch):
    """The zpix rows desispec's reader gives, as a structured array of zpix's dtype."""
    from desispec.io.meta import findfile
    _desispec_env(monkeypatch, prod)
    parts = []
    for survey, program, pix in _healpix_files(prod):
        path = findfile("redrock_hp", survey=survey, faprogram=program, healpix=pix,
                        readonly=True)
        assert os.path.exists(path), path
        data, _ = read_redrock(path, group="healpix")
        data = data[(data["TARGETID"] > 0) & (((data["TARGETID"] >> 59) & 1) == 0)]
        n = len(data)
        out = np.zeros(n, dtype=schema.ZPIX.dtype)
        for name in schema.ZPIX.names:
            up = name.upper()
            if name.startswith("coeff_"):
                v = np.asarray(data["COEFF"])[:, int(name[-1])]
            elif up in data.colnames:
                v = np.asarray(data[up])
            else:
                continue
            if v.dtype.kind == "f":
                v = np.where(np.isfinite(v), v, -9999.0)
            if v.dtype.kind == "U":
                v = np.char.encode(v, "ascii")
            out[name] = v
        out["survey"], out["program"], out["spgrp"] = survey, program, "healpix"
        out["spgrpval"] = data["HEALPIX"]
        tid = [int(t) for t in data["TARGETID"]]
        out["id"] = [[(PROGRAMID[program] << 32) | SURVEYID[survey], t] for t in tid]
        out["targetid"] = tid
        parts.append(out)
    return np.concatenate(parts)


def _database(dsn, name):
    """zpix as a structured array of its dtype (flags included)."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(f'SELECT * FROM "{name}".zpix')
            cols = [d.name for d in cur.description]
            rows = cur.fetchall()
    finally:
        conn.close()
    assert cols == list(schema.ZPIX.names)
    out = np.zeros(len(rows), dtype=schema.ZPIX.dtype)
    for i, c in enumerate(cols):
        v = [r[i] for r in rows]
        if c == "id":
            out[c] = ids.from_int(v)
        elif out.dtype[c].kind == "S":
            out[c] = [s.encode() for s in v]
        else:
            out[c] = v
    return out


def _by_key(a):
    return a[np.lexsort((a["program"], a["survey"], a["targetid"]))]


def test_zpix_equals_read_redrock(pg_dsn, loaded, monkeypatch):
    prod, names = loaded
    exp = _by_key(_expected(prod, monkeypatch))
    assert len(exp) > 0
    for name in names:
        got = _by_key(_database(pg_dsn, name))
        assert len(got) == len(exp), name
        for c in schema.ZPIX.names:
            if c not in FLAGS:
                np.testing.assert_array_equal(got[c], exp[c], err_msg=f"{name}: {c}")
        # the id decodes to its own columns; the worked example of datamodel.md §6.5
        assert ids.to_int(ids.zpix_id("dark", "main", 123456789)) == [
            237684487653473477223012617493]
    assert (exp["desiname"] != b"-" * 22).all()
    assert set(exp["program"].tolist()) >= {b"dark", b"bright1b", b"backup"}
    assert (exp["coadd_numtile"] > 1).any(), "some targets are coadded over two tiles"


def test_primary_flags_match_find_primary_spectra(pg_dsn, loaded):
    prod, names = loaded
    for name in names:
        z = _database(pg_dsn, name)
        cat = Table()
        cat["TARGETID"] = z["targetid"]
        cat["ZWARN"] = z["zwarn"]
        cat["TSNR2_LRG"] = z["tsnr2_lrg"]
        cat["EFFTIME_SPEC"] = 12.15 * cat["TSNR2_LRG"]      # as desi_zcatalog adds it
        survey = z["survey"].astype(str)
        for prefix, member in (("zcat", np.ones(len(z), bool)),
                               ("sv", np.char.startswith(survey, "sv")),
                               ("main", survey == "main")):
            nspec, primary = zcatalog.find_primary_spectra(cat[member],
                                                           sort_column="EFFTIME_SPEC")
            np.testing.assert_array_equal(z[f"{prefix}_nspec"][member], nspec, prefix)
            np.testing.assert_array_equal(z[f"{prefix}_primary"][member], primary, prefix)
            assert not z[f"{prefix}_primary"][~member].any()
            assert (z[f"{prefix}_nspec"][~member] == 0).all()
        assert (z["zcat_nspec"] > 1).any(), "a target observed in two programs"
        assert z["main_primary"].any() and z["sv_primary"].any()


def test_one_and_three_ranks_agree_and_targets_have_tiles(pg_dsn, loaded):
    prod, (one, three) = loaded
    assert dump_schema(pg_dsn, one) == dump_schema(pg_dsn, three)
    # every zpix TARGETID was observed on a loaded tile (ztile) and has photometry
    assert query(pg_dsn, f'SELECT count(*) FROM "{one}".zpix z WHERE NOT EXISTS '
                         f'(SELECT 1 FROM "{one}".ztile t WHERE t.targetid = z.targetid)'
                 ) == [(0,)]
    assert query(pg_dsn, f'SELECT count(*) FROM "{one}".zpix z WHERE NOT EXISTS '
                         f'(SELECT 1 FROM "{one}".photometry p WHERE p.targetid = '
                         f'z.targetid)') == [(0,)]


def test_file_without_photometry_fails_alone_then_loads(pg_dsn, loaded, mpirun, tmp_path):
    """--tiles loads only some tiles: the HEALPix files with targets of the others fail
    (exit 1, nothing of them written), the rest load; a full run then loads the missing
    files, and the schema equals the one of a single full load.  A third run is a no-op
    for zpix."""
    prod, (one, _) = loaded
    tiles = [t for (t,) in query(pg_dsn, f'SELECT tileid FROM "{one}".tile ORDER BY 1')]
    name = "test_" + secrets.token_hex(4)
    init(pg_dsn, name)
    try:
        stage = tmp_path / "stage"
        r = load(mpirun, 1, pg_dsn, name, prod, stage, "--tiles", str(tiles[0]),
                 "--healpix", check=False)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "FAILED HEALPix files" in r.stdout and "have no photometry" in r.stdout
        part = query(pg_dsn, f'SELECT count(*) FROM "{name}".zpix')[0][0]
        total = query(pg_dsn, f'SELECT count(*) FROM "{one}".zpix')[0][0]
        assert 0 < part < total
        load(mpirun, 1, pg_dsn, name, prod, stage)
        assert dump_schema(pg_dsn, name) == dump_schema(pg_dsn, one)
        r = load(mpirun, 1, pg_dsn, name, prod, stage)
        assert "0 written" in r.stdout and "nothing to do" in r.stdout
    finally:
        query(pg_dsn, f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


# --- DESINAME: computed, never the file's column (desispec#2238) ------------------------

def _healpix_path(prod, survey, program, pix):
    return os.path.join(prod, "spectro", "redux", SPECPROD, "healpix", survey, program,
                        str(pix // 100), str(pix), f"redrock-{survey}-{program}-{pix}.fits")


def _one_healpix_copy(static, tmp_path):
    import shutil
    survey, program, pix = _healpix_files(static[0])[0]
    path = str(tmp_path / os.path.basename(_healpix_path(static[0], survey, program, pix)))
    shutil.copy(_healpix_path(static[0], survey, program, pix), path)
    return path, survey, program, pix


def test_desiname_computed_not_copied(static, tmp_path):
    from desiutil.names import radec_to_desiname
    from test_ztile_update import WRONG, add_wrong_desiname
    from specprod_db.extract import redshift, zpix
    path, survey, program, pix = _one_healpix_copy(static, tmp_path)
    right, _ = zpix.zpix_rows(path, survey, program, pix)
    wrong = add_wrong_desiname(path)
    stats = {}
    got, _ = zpix.zpix_rows(path, survey, program, pix, stats=stats)
    np.testing.assert_array_equal(got, right)
    import fitsio
    fm = fitsio.read(path, "FIBERMAP", columns=["TARGETID", "TARGET_RA", "TARGET_DEC"])
    fm = fm[ids.no_sky(fm["TARGETID"])]
    assert got["desiname"].tolist() == radec_to_desiname(
        fm["TARGET_RA"], fm["TARGET_DEC"]).astype("S22").tolist()
    assert WRONG not in got["desiname"].tolist()
    n, message = redshift.desiname_mismatch(stats)
    assert n == 2 and f"e.g. TARGETID {wrong[0]} in {os.path.basename(path)}" in message


def test_unnameable_coordinates_fail_the_file(static, tmp_path):
    import fitsio
    from specprod_db.errors import InputError
    from specprod_db.extract import zpix
    path, survey, program, pix = _one_healpix_copy(static, tmp_path)
    with fitsio.FITS(path) as fx:
        hdus = [(h.get_extname(), h.read_header(), h.read()) for h in fx]
    with fitsio.FITS(path, "rw", clobber=True) as f:
        for i, (name, hdr, data) in enumerate(hdus):
            if name == "FIBERMAP":
                data["TARGET_DEC"][np.flatnonzero(ids.no_sky(data["TARGETID"]))[0]] = np.nan
            f.write(data if i else None, header=hdr, extname=name if i else None)
    with pytest.raises(InputError, match=f"healpix {survey}/{program}/{pix}: {path}: 1 "
                                         r"row\(s\) with a non-finite or out-of-range"):
        zpix.zpix_rows(path, survey, program, pix)


@pytest.mark.parametrize("ranks", [1, 3])
def test_desiname_mismatch_counted_in_a_load(ranks, pg_dsn, static, mpirun, tmp_path):
    """A HEALPix file whose FIBERMAP has a DESINAME column with two wrong names: loaded
    with the computed names, counted (warnings.desiname_mismatch), one line naming it."""
    import json
    import shutil
    from test_ztile_update import WRONG, add_wrong_desiname
    prod = str(tmp_path / "fuji")
    shutil.copytree(static[0], prod, symlinks=True)
    survey, program, pix = _healpix_files(prod)[0]
    wrong = add_wrong_desiname(_healpix_path(prod, survey, program, pix))
    name = "test_" + secrets.token_hex(4)
    init(pg_dsn, name)
    try:
        r = load(mpirun, ranks, pg_dsn, name, prod, tmp_path / "stage", "--initial")
        counts = query(pg_dsn, f'SELECT counts FROM "{name}".load_run')[0][0]
        counts = json.loads(counts) if isinstance(counts, str) else counts
        assert counts["warnings"]["desiname_mismatch"] == 2
        lines = [line for line in (r.stdout + r.stderr).splitlines()
                 if "FIBERMAP DESINAME differs" in line]
        assert len(lines) == 1 and f"healpix {survey}-{program}-{pix}: 2 row(s)" in lines[0]
        got = dict(query(pg_dsn, f'SELECT targetid, desiname FROM "{name}".zpix WHERE '
                                 "targetid = ANY(%s) AND survey = %s AND program = %s",
                         (wrong, survey, program)))
        assert sorted(got) == sorted(wrong)
        assert all(v.startswith("DESI J") and v != WRONG.decode() for v in got.values())
    finally:
        query(pg_dsn, f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def test_verify_checks_zpix_desiname(pg_dsn, loaded):
    """verify: every zpix desiname is radec_to_desiname of a fiberassign TARGET_RA/DEC of
    its TARGETID; one changed by hand is drift naming the row."""
    from specprod_db.ops import verify
    _, names = loaded
    name = names[0]
    tid, survey, program, right = query(pg_dsn, f'SELECT targetid, survey, program, desiname '
                                                f'FROM "{name}".zpix ORDER BY id LIMIT 1')[0]
    change = (f'UPDATE "{name}".zpix SET desiname = %s WHERE targetid = %s AND survey = %s '
              "AND program = %s")

    def run():
        conn = psycopg2.connect(pg_dsn)
        try:
            report = verify.Verifier(conn, name)
            report.check_desiname()
            conn.rollback()
            return report.report()
        finally:
            conn.close()
    report = run()
    zrows = query(pg_dsn, f'SELECT (SELECT count(*) FROM "{name}".ztile) + '
                          f'(SELECT count(*) FROM "{name}".zpix)')[0][0]
    assert report["ok"] and report["checks"]["desiname"]["checked"] == zrows
    query(pg_dsn, change, ("DESI J999.9999+99.9999", tid, survey, program))
    try:
        report = run()
        [d] = report["drift"]
        assert (d["check"], d["table"], d["tile"], d["found"]) == ("desiname", "zpix", None, 1)
        assert d["rows"] == [f"{tid} {survey}/{program} DESI J999.9999+99.9999 (computed "
                             f"{right})"]
    finally:
        query(pg_dsn, change, (right, tid, survey, program))
