"""targetphot_onetile against desispec's gather_targetphot, on small catalogs written here.

The inputs follow datamodel.md §3.3 (fiberassign header), §4.1-4.4 (healpix-split primary
target files, a secondary catalog, a ToO ledger).  desispec/desimodel/healpy are used
only here, as the reference.
"""
import os

import fitsio
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from specprod_db import ids
from specprod_db.extract import targetphot as tp
from specprod_db.paths import InputError, Paths
from specprod_db.schema import table

TILEID = 1234
NSIDE = 8
MAIN_BITS = ["DESI_TARGET", "BGS_TARGET", "MWS_TARGET", "SCND_TARGET"]


def desi_env(monkeypatch, root):
    """Set the DESI variables for ``root``; reset desispec's cached read-only root."""
    env = _env(root)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("DESI_ROOT_READONLY", raising=False)
    import desispec.io.meta
    monkeypatch.setattr(desispec.io.meta, "_desi_root_readonly", None)
    return env


def _env(root):
    return {"DESI_ROOT": str(root), "DESI_TARGET": str(root / "target"),
            "DESI_SURVEYOPS": str(root / "survey" / "ops" / "surveyops" / "trunk"),
            "FIBER_ASSIGN_DIR": str(root / "target" / "fiberassign" / "tiles" / "trunk")}


def _primary_dtype():
    """Primary target file columns (§4.2): the photometry, then main-survey bits."""
    names = [n for n in tp.TARGETPHOT_DTYPE.names if not n.endswith("_TARGET")]
    fields = [(n, tp.TARGETPHOT_DTYPE[n]) for n in names if n != "HPXPIXEL"]
    return np.dtype(fields + [(n, "i8") for n in MAIN_BITS] + [("HPXPIXEL", "i8")])


def _fill(arr, rng):
    for name in arr.dtype.names:
        col = arr[name]
        if col.dtype.kind == "f":
            col[...] = rng.normal(size=col.shape)
        elif col.dtype.kind in "iu":
            col[...] = rng.integers(1, 100, size=col.shape)
        elif col.dtype.kind == "b":
            col[...] = rng.integers(0, 2, size=col.shape).astype(bool)
        elif col.dtype.kind == "S":
            col[...] = b"ABCDEFGH"[:col.dtype.itemsize]
    return arr


def _write_targets(path, data, extname, header=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with fitsio.FITS(path, "rw", clobber=True) as fx:
        fx.write(data, extname=extname, header=header)


@pytest.fixture
def tile(tmp_path, monkeypatch):
    """A tile whose header names a primary dir, a secondary file, a ToO ledger and a
    missing TARG2 directory; returns (paths, header, targets, expected-source dict)."""
    root = tmp_path / "desi"
    env = desi_env(monkeypatch, root)
    rng = np.random.default_rng(42)
    paths = Paths.from_environment(env)

    # positions: 6 in pixel A, 6 in pixel B, 2 in pixels without a file, 1 NaN
    ra = np.r_[rng.uniform(150.1, 150.6, 6), rng.uniform(170.2, 170.6, 6), 10.0, np.nan, 200.0]
    dec = np.r_[rng.uniform(2.1, 2.5, 6), rng.uniform(20.1, 20.5, 6), -60.0, np.nan, 30.0]
    n = len(ra)
    tid = 39627000000000000 + np.arange(n) * 7919
    pix = tp.radec2pix(NSIDE, ra[:12], dec[:12])
    pa, pb = pix[0], pix[6]
    assert (pix[:6] == pa).all() and (pix[6:] == pb).all() and pa != pb

    pdir = root / "target" / "catalogs" / "dr9" / "1.1.1" / "targets" / "main" / "resolve" / "dark"
    hdr = {"FILENSID": NSIDE, "FILENEST": True, "OBSCON": "DARK"}
    for p, sel in ((pa, np.r_[0:5, 8]), (pb, np.r_[6:12])):
        # target 8 (pixel B) is also in file A with other values: first file wins
        data = _fill(np.zeros(len(sel), dtype=_primary_dtype()), rng)
        data["TARGETID"], data["RA"], data["DEC"] = tid[sel], ra[sel], dec[sel]
        data["PHOTSYS"] = b"S"
        data["PMRA"][:2] = np.nan                     # PM zeroing
        data["FLUX_G"][2] = np.inf                    # finitize
        _write_targets(str(pdir / f"targets-dark-hp-{p}.fits"), data, "TARGETS", hdr)
    # target 5 is secondary only (its primary row absent); target 4 primary and secondary
    sdir = root / "target" / "catalogs" / "dr9" / "1.1.1" / "targets" / "main" / "secondary" / "dark"
    sdt = np.dtype([("RA", "f8"), ("DEC", "f8"), ("PMRA", "f4"), ("PMDEC", "f4"),
                    ("REF_EPOCH", "f4"), ("OVERRIDE", "?"), ("FLUX_G", "f4"), ("FLUX_R", "f4"),
                    ("FLUX_Z", "f4"), ("PARALLAX", "f4"), ("GAIA_PHOT_G_MEAN_MAG", "f4"),
                    ("GAIA_PHOT_BP_MEAN_MAG", "f4"), ("GAIA_PHOT_RP_MEAN_MAG", "f4"),
                    ("GAIA_ASTROMETRIC_EXCESS_NOISE", "f4"), ("TARGETID", "i8"),
                    ("DESI_TARGET", "i8"), ("SCND_TARGET", "i8"), ("SCND_ORDER", "i4"),
                    ("SUBPRIORITY", "f8"), ("OBSCONDITIONS", "i8"), ("PRIORITY_INIT", "i8"),
                    ("NUMOBS_INIT", "i8")])
    sec = _fill(np.zeros(3, dtype=sdt), rng)
    sec["TARGETID"] = [tid[4], tid[5], tid[13]]
    sec["PMDEC"][1] = np.nan
    sfile = sdir / "targets-dark-secondary.fits"
    os.makedirs(sdir, exist_ok=True)
    with fitsio.FITS(str(sfile), "rw", clobber=True) as fx:
        fx.write(None)
        fx.write(np.zeros(1, dtype=[("X", "i4")]), extname="INFO")
        fx.write(sec, extname="SCND_TARGETS")
    # ToO ledger: target 3 (also primary: the ToO, under survey/, wins) and target 12
    too = Table()
    too["RA"] = np.array([1.0, 2.0])
    too["DEC"] = np.array([3.0, 4.0])
    too["PMRA"] = np.array([np.nan, 1.5])
    too["PMDEC"] = np.array([0.5, 2.5])
    too["REF_EPOCH"] = np.array([2015.5, 2015.5])
    too["FLUX_G"] = np.array([1.0, 2.0], dtype="f4")
    too["TARGETID"] = np.array([tid[3], tid[12]])
    too["DESI_TARGET"] = np.array([1, 2])
    too["SUBPRIORITY"] = np.array([0.1, 0.2])
    too["OBSCONDITIONS"] = np.array([1, 1])
    too["CHECKER"] = ["AM", "AM"]
    too["TOO_TYPE"] = ["TILE", "FIBER"]
    too.meta["RELEASE"] = 9999
    tfile = root / "survey" / "ops" / "surveyops" / "trunk" / "mtl" / "main" / "ToO" / "ToO.ecsv"
    os.makedirs(tfile.parent, exist_ok=True)
    too.write(str(tfile), format="ascii.ecsv")

    header = fits.Header()
    header["TILEID"] = TILEID
    header["TARG"] = "DESIROOT/target/catalogs/dr9/1.1.1/targets/main/resolve/dark"
    header["TARG2"] = "DESIROOT/target/catalogs/gaiadr2/2.2.0/targets/main/resolve/backup"
    header["TARG3"] = "-"
    header["TARG4"] = "DESIROOT/never/read"
    header["SCND"] = ("DESIROOT/target/catalogs/dr9/1.1.1/targets/main/secondary/dark/"
                      "targets-dark-secondary.fits")
    header["TOO"] = "DESIROOT/survey/ops/surveyops/trunk/mtl/main/ToO/ToO.ecsv"
    fa = paths.fiberassign_file(TILEID)
    os.makedirs(os.path.dirname(fa), exist_ok=True)
    targets = np.zeros(n, dtype=[("TARGETID", "i8"), ("RA", "f8"), ("DEC", "f8")])
    targets["TARGETID"], targets["RA"], targets["DEC"] = tid, ra, dec
    fits.HDUList([fits.PrimaryHDU(header=header),
                  fits.BinTableHDU(targets, name="TARGETS")]).writeto(fa)
    assert fa.endswith(".gz")
    return paths, header, targets


def _desispec(targets):
    return _desispec_tile(targets, TILEID)


def assert_same_as_desispec(ours, ref):
    assert list(ours.dtype.names) == ref.colnames
    for name in ref.colnames:
        a, b = ours[name], np.asarray(ref[name])
        if b.dtype.kind == "U":
            np.testing.assert_array_equal(np.char.decode(a, "ascii"), b, err_msg=name)
        else:
            assert a.dtype == b.dtype.newbyteorder("="), name
            assert a.shape == b.shape, name
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_radec2pix_equals_healpy():
    import healpy as hp
    rng = np.random.default_rng(3)
    ra = np.r_[rng.uniform(-20, 380, 100000), 0, 0, 90, 180, 359.9999999, 45]
    dec = np.r_[np.degrees(np.arcsin(rng.uniform(-1, 1, 100000))), 90, -90, 0,
                89.99999, -89.99999, np.degrees(np.arcsin(2 / 3))]
    for nside in (1, 2, 8, 64, 256, 4096, 2 ** 20, 2 ** 29):
        ours = tp.radec2pix(nside, ra, dec)
        ref = hp.ang2pix(nside, np.radians(90 - dec), np.radians(ra), nest=True)
        np.testing.assert_array_equal(ours, ref, err_msg=f"nside {nside}")


def test_datamodel_is_desispec(tmp_path, monkeypatch):
    from desispec.io.photo import targetphot_datamodel
    desi_env(monkeypatch, tmp_path)
    ref = targetphot_datamodel()
    assert tp.TARGETPHOT_DTYPE.names == tuple(ref.colnames)
    for name in ref.colnames:
        col = ref[name]
        want = col.dtype
        got = tp.TARGETPHOT_DTYPE[name]
        assert got.shape == col.shape[1:], name
        if want.kind == "U":
            assert got.kind == "S" and got.base.itemsize == want.itemsize // 4, name
        else:
            assert got.base == want.newbyteorder("="), name


def test_header_families():
    h = {"TARG": "a", "TARG2": "b", "TARG3": " - ", "TARG4": "never", "SCND": "s",
         "SCND3": "skipped", "TOO": "t", "TOO2": "u"}
    assert tp.header_catalogs(h) == [("TARG", "a"), ("TARG2", "b"), ("SCND", "s"),
                                     ("TOO", "t"), ("TOO2", "u")]


def test_catalog_paths(tile, caplog):
    """A named catalog that does not exist is skipped with a warning and listed in
    stats (decision 11, desispec's rule); the tile loads from the others."""
    paths, header, _ = tile
    stats = {}
    got = tp.catalog_paths(header, paths, TILEID, stats)
    root = paths.desi_root
    assert got == sorted([
        f"{root}/survey/ops/surveyops/trunk/mtl/main/ToO/ToO.ecsv",
        f"{root}/target/catalogs/dr9/1.1.1/targets/main/resolve/dark",
        f"{root}/target/catalogs/dr9/1.1.1/targets/main/secondary/dark/"
        "targets-dark-secondary.fits"])
    assert got[0].endswith("ToO.ecsv")
    targ2 = f"{root}/target/catalogs/gaiadr2/2.2.0/targets/main/resolve/backup"
    assert stats["missing_catalogs"] == [f"TARG2={targ2}"]   # TARG4 is after '-'
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(f"tile {TILEID}" in m and f"TARG2 = {targ2}" in m and "does not exist" in m
               for m in warned), warned
    from desispec.io.photo import gather_targetdirs
    assert list(gather_targetdirs(TILEID)) == got
    # appended to what the task's stats already hold; no stats dict is fine too
    stats = {"missing_catalogs": ["TOO=elsewhere"]}
    tp.catalog_paths(header, paths, TILEID, stats)
    assert stats["missing_catalogs"] == ["TOO=elsewhere", f"TARG2={targ2}"]
    assert tp.catalog_paths(header, paths, TILEID) == got


def test_missing_catalog_loads_the_tile(tile):
    """targetphot_onetile with a missing TARG2: the rows come from the other catalogs
    (the same as with TARG2 removed from the header) and the missing one is listed."""
    paths, header, targets = tile
    stats = {}
    with_missing = tp.targetphot_onetile(TILEID, header, targets, paths, stats)
    assert len(stats["missing_catalogs"]) == 1
    assert stats["missing_catalogs"][0].startswith("TARG2=")
    clean = header.copy()
    del clean["TARG2"], clean["TARG3"], clean["TARG4"]
    assert with_missing.tobytes() == tp.targetphot_onetile(
        TILEID, clean, targets, paths).tobytes()


def test_no_catalog_is_an_error(tile):
    """Only when none of the named catalogs exists does the tile fail, naming the tile,
    the fiberassign file and every keyword with its path."""
    paths, _, targets = tile
    root = paths.desi_root
    header = {"TARG": "DESIROOT/nowhere", "SCND": "DESIROOT/secondary/none.fits"}
    stats = {}
    with pytest.raises(InputError, match=(
            rf"tile 1234: no targeting catalog named in the header of "
            rf".*fiberassign-001234.* exists \(TARG = {root}/nowhere; "
            rf"SCND = {root}/secondary/none.fits\)")):
        tp.catalog_paths(header, paths, TILEID, stats)
    with pytest.raises(InputError, match="tile 1234.*fiberassign-001234"):
        tp.targetphot_onetile(TILEID, header, targets, paths, stats)
    with pytest.raises(InputError, match="tile 1234.*no TARG/SCND/TOO keyword"):
        tp.catalog_paths({}, paths, TILEID)


def test_require_all_is_gone():
    """One rule (decision 11): there is no mode in which a missing catalog is fatal."""
    import inspect
    assert "require_all" not in inspect.signature(tp.catalog_paths).parameters
    assert "require_all" not in inspect.signature(tp.targetphot_onetile).parameters


def test_parity_with_gather_targetphot(tile):
    paths, header, targets = tile
    stats = {}
    ours = tp.targetphot_onetile(TILEID, header, targets, paths, stats)
    ref = _desispec(targets)
    assert_same_as_desispec(ours, ref)
    tid = targets["TARGETID"]
    # the cases the inputs were built for
    assert ours["PHOTSYS"][0] == b"S" and ours["RELEASE"][0] > 0
    assert ours["FLUX_G"][3] == 1.0 and ours["PHOTSYS"][3] == b""   # ToO wins
    assert ours["PHOTSYS"][4] == b"S"                               # primary beats secondary
    assert ours["PHOTSYS"][5] == b"" and ours["TARGETID"][5] == tid[5]
    assert ours["RELEASE"][12] == 0 and ours["PMRA"][12] == np.float32(1.5)
    assert ours["SCND_TARGET"][13] > 0                              # NaN RA, in secondary
    assert stats["not_found"] == 1 and stats["nan_radec"] == 1       # target 14
    blank = np.zeros(1, dtype=tp.TARGETPHOT_DTYPE)
    blank["TARGETID"] = tid[14]
    assert ours[14:15].tobytes() == blank.tobytes()
    assert (ours["TARGETID"] == tid).all()


def test_input_order_and_subsets(tile):
    paths, header, targets = tile
    full = tp.targetphot_onetile(TILEID, header, targets, paths)
    perm = np.random.default_rng(0).permutation(len(targets))
    shuffled = tp.targetphot_onetile(TILEID, header, targets[perm], paths)
    assert shuffled.tobytes() == full[perm].tobytes()
    empty = tp.targetphot_onetile(TILEID, header, targets[:0], paths)
    assert len(empty) == 0 and empty.dtype == tp.TARGETPHOT_DTYPE


def test_corrupt_file_names_tile_and_file(tile):
    paths, header, targets = tile
    pdir = os.path.join(paths.desi_root, "target/catalogs/dr9/1.1.1/targets/main/resolve/dark")
    victim = sorted(os.listdir(pdir))[-1]
    path = os.path.join(pdir, victim)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 2880)
    with pytest.raises(InputError, match=rf"tile 1234.*{victim}"):
        tp.targetphot_onetile(TILEID, header, targets, paths)
    with open(path, "wb") as f:
        f.write(b"not a FITS file")
    with pytest.raises(InputError, match=rf"tile 1234.*{victim}"):
        tp.targetphot_onetile(TILEID, header, targets, paths)


def test_target_and_photometry_rows(tile):
    paths, header, targets = tile
    phot = tp.targetphot_onetile(TILEID, header, targets, paths)
    stats = {}
    trows = tp.target_rows(phot, TILEID, "main", "dark", stats)
    assert trows.dtype == table("target").dtype
    assert len(trows) == len(targets)
    assert ids.to_int(trows["id"][:1]) == [(6 << 96) | (TILEID << 64) | int(phot["TARGETID"][0])]
    assert (trows["tileid"] == TILEID).all() and (trows["program"] == b"dark").all()
    np.testing.assert_array_equal(trows["desi_target"], phot["DESI_TARGET"])
    np.testing.assert_array_equal(trows["hpxpixel"], phot["HPXPIXEL"])

    prow = tp.photometry_from_targetphot(phot, stats)
    assert prow.dtype == table("photometry").dtype
    np.testing.assert_array_equal(
        prow["ls_id"], (phot["RELEASE"].astype(np.int64) << 40)
        | (phot["BRICKID"].astype(np.int64) << 16) | phot["BRICK_OBJID"])
    np.testing.assert_array_equal(prow["dchisq_ser"], phot["DCHISQ"][:, 4])
    bad = np.isnan(phot["PMRA"]) | np.isnan(phot["PMDEC"])
    assert bad.sum() == stats["pm_zeroed"] > 0
    assert (prow["pmra"][bad] == 0).all() and (prow["pmdec"][bad] == 0).all()
    assert (prow["flux_g"][~np.isfinite(phot["FLUX_G"])] == -9999.0).all()
    assert stats["finitized"]["flux_g"] >= 1 and stats["rows_finitized"] >= 1
    assert (prow["wisemask_w1"] == phot["WISEMASK_W1"]).all()
    # the old loader's own conversion, for comparison: PM zeroing then finitize
    old = phot.copy()
    old["PMRA"][bad] = 0.0
    old["PMDEC"][bad] = 0.0
    for name in prow.dtype.names:
        if name.upper() in old.dtype.names and old[name.upper()].dtype.kind == "f":
            want = np.where(np.isfinite(old[name.upper()]), old[name.upper()], -9999.0)
            np.testing.assert_array_equal(prow[name], want.astype(prow[name].dtype),
                                          err_msg=name)


# --- the mock production (specprod_db.mock) -------------------------------------------

@pytest.fixture(scope="module")
def mock_production(tmp_path_factory):
    from specprod_db.mock import make_production
    outdir = tmp_path_factory.mktemp("mock")
    summary = make_production(str(outdir), small=True, seed=5)
    import json
    with open(outdir / "mock-truth.json") as f:
        truth = json.load(f)
    return outdir, summary, truth


def mock_tile_inputs(paths, tileid):
    """PRIMARY header and the non-sky TARGETS (TARGETID, RA, DEC) of a mock tile."""
    fa = paths.fiberassign_file(tileid)
    header = fitsio.read_header(fa, 0)
    targets = fitsio.read(fa, "TARGETS", columns=["TARGETID", "RA", "DEC"])
    return header, targets[ids.no_sky(targets["TARGETID"])]


def mock_env(monkeypatch, outdir):
    env = {"DESI_ROOT": str(outdir), "DESI_TARGET": str(outdir / "target"),
           "DESI_SURVEYOPS": str(outdir / "survey" / "ops" / "surveyops" / "trunk"),
           "FIBER_ASSIGN_DIR": str(outdir / "target" / "fiberassign" / "tiles" / "trunk")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("DESI_ROOT_READONLY", raising=False)
    import desispec.io.meta
    monkeypatch.setattr(desispec.io.meta, "_desi_root_readonly", None)
    return Paths.from_environment(env)


def test_mock_parity_with_gather_targetphot(mock_production, monkeypatch):
    outdir, summary, truth = mock_production
    paths = mock_env(monkeypatch, outdir)
    for tileid in summary["tiles"]:
        header, targets = mock_tile_inputs(paths, tileid)
        stats = {}
        ours = tp.targetphot_onetile(tileid, header, targets, paths, stats)
        ref = _desispec_tile(targets, tileid)
        assert_same_as_desispec(ours, ref)
        t = truth["tiles"][str(tileid)]
        tid = ours["TARGETID"]
        assert (ours["RELEASE"][np.isin(tid, t["id"])] >= 9010).all()
        assert not np.isin(tid, t["sky"]).any()
        prow = tp.photometry_from_targetphot(ours, stats)
        nan_pm = np.isin(tid, t["nan_pm"])
        assert nan_pm.any() or not t["nan_pm"]
        assert (prow["pmra"][nan_pm] == 0).all() and (prow["pmdec"][nan_pm] == 0).all()
        trows = tp.target_rows(ours, tileid, t["survey"], t["program"])
        assert len(trows) == len(targets)


def _desispec_tile(targets, tileid):
    from desispec.io.photo import gather_targetphot
    cat = Table()
    cat["TARGETID"] = targets["TARGETID"]
    cat["TARGET_RA"] = targets["RA"]
    cat["TARGET_DEC"] = targets["DEC"]
    cat["TILEID"] = np.full(len(targets), tileid, dtype=np.int32)
    return gather_targetphot(cat)


def test_secondary_targetids_cached_until_the_file_changes(tile):
    """(This test's directory name contains "secondary": catalogs are still classified
    by what they are, not by a substring of the whole path as desispec does.)"""
    paths, header, targets = tile
    first = tp.targetphot_onetile(TILEID, header, targets, paths)
    sfile = os.path.join(paths.desi_root, "target/catalogs/dr9/1.1.1/targets/main/"
                         "secondary/dark/targets-dark-secondary.fits")
    assert sfile in tp._TARGETID_CACHE
    sec = fitsio.read(sfile, "SCND_TARGETS")
    sec = np.concatenate([sec[[1, 0, 2]], sec[:1]])
    sec["TARGETID"][-1] = 7
    sec["SUBPRIORITY"][0] = 0.5                       # target 5 (secondary only)
    with fitsio.FITS(sfile, "rw", clobber=True) as fx:
        fx.write(None)
        fx.write(sec, extname="SCND_TARGETS")
    again = tp.targetphot_onetile(TILEID, header, targets, paths)
    assert again["SUBPRIORITY"][5] == 0.5 != first["SUBPRIORITY"][5]
