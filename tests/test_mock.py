"""Fidelity of the mock daily production against DESI's own readers.

desispec / desitarget / desimodel / healpy are test-only dependencies.
"""
import glob
import hashlib
import json
import os

import fitsio
import numpy as np
import pytest
from astropy.table import Table

from conftest import require
from specprod_db.mock import advance_production, make_production
from specprod_db.mock import columns as C

desispec = require("desispec")


def _env(root):
    with open(os.path.join(root, "mock-truth.json")) as f:
        return json.load(f)["env"]


@pytest.fixture(scope="session")
def tree(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("mock"))
    s0 = make_production(root, small=True, seed=7)
    s1 = advance_production(root, withdraw=True)
    mp = pytest.MonkeyPatch()
    for k, v in _env(root).items():
        mp.setenv(k, v)
    mp.delenv("DESI_ROOT_READONLY", raising=False)
    with open(os.path.join(root, "mock-truth.json")) as f:
        truth = json.load(f)
    yield dict(root=root, s0=s0, s1=s1, truth=truth)
    mp.undo()


def _tiles(tree):
    return Table.read(os.path.join(tree["root"], "spectro/redux/daily/tiles-daily.csv"),
                      format="ascii.csv")


def test_healpix_matches_healpy():
    healpy = require("healpy")
    from specprod_db.extract.healpix import radec2pix
    rng = np.random.default_rng(3)
    ra, dec = rng.uniform(0, 360, 50000), np.degrees(np.arcsin(rng.uniform(-1, 1, 50000)))
    for nside in (1, 2, 8, 64):
        assert np.array_equal(radec2pix(nside, ra, dec),
                              healpy.ang2pix(nside, ra, dec, nest=True, lonlat=True))


def test_bricks_match_desiutil():
    from desiutil.brick import Bricks
    from specprod_db.mock import sky
    b = sky.bricks_in_disk(150.0, 32.3, 0.5)
    ra, dec = (b["ra1"] + b["ra2"]) / 2, (b["dec1"] + b["dec2"]) / 2
    B = Bricks()
    assert np.array_equal(B.brickid(ra, dec), b["brickid"])
    assert list(B.brickname(ra, dec)) == list(b["name"])


def test_tractor_columns_match_desispec(tree):
    from desispec.io.photo import tractorphot_datamodel
    dm = tractorphot_datamodel()
    f = glob.glob(os.path.join(tree["root"], "external/legacysurvey/dr9/*/tractor/*/*.fits"))[0]
    data = fitsio.read(f)
    assert len(data.dtype.names) == 181
    assert list(data.dtype.names) == dm.colnames[:181]
    for c in data.dtype.names:
        assert data.dtype[c].base.kind == dm[c].dtype.kind or dm[c].dtype.kind == "U", c
        assert data.dtype[c].shape == dm[c].shape[1:], c


def test_findfile_finds_every_file(tree):
    from desispec.io.meta import findfile
    for t in ("tiles", "tiles_csv", "exposures"):
        assert os.path.exists(findfile(t, readonly=True))
    tiles = _tiles(tree)
    special = tree["truth"]["special"]
    for row in tiles:
        tid, night = int(row["TILEID"]), int(row["LASTNIGHT"])
        assert os.path.exists(findfile("fiberassignsvn", tile=tid, readonly=True))
        for sp in range(10):
            for ft in ("redrock_tile", "emline_tile", "qso_mgii_tile", "qso_qn_tile"):
                p = findfile(ft, tile=tid, night=night, spectrograph=sp, groupname="cumulative")
                if tid == special["missing_petal"] and sp == 3:
                    assert not os.path.exists(p)
                else:
                    assert os.path.exists(p), p


def test_read_redrock_accepts_files(tree):
    from desispec.io.meta import findfile
    from desispec.scripts.zcatalog import read_redrock
    tiles = _tiles(tree)
    for row in tiles[-3:]:
        tid, night = int(row["TILEID"]), int(row["LASTNIGHT"])
        p = findfile("redrock_tile", tile=tid, night=night, spectrograph=0, groupname="cumulative")
        data, expfm = read_redrock(p, group="cumulative", pertile=True)
        assert len(data) > 0
        assert np.all(data["TILEID"] == tid) and np.all(data["SPGRPVAL"] == night)
        assert np.all(data["LASTNIGHT"] == night)
        assert np.all(expfm["TILEID"] == tid)
        assert (data["TARGETID"] < 0).any()            # unassigned / stuck / broken
        assert "DESINAME" in data.colnames


def _potential(tid):
    from desispec.io.meta import findfile
    tg = fitsio.read(findfile("fiberassignsvn", tile=tid, readonly=True), ext="TARGETS")
    keep = (tg["TARGETID"] > 0) & ((tg["TARGETID"] >> 59) & 1 == 0)
    t = Table()
    t["TARGETID"] = tg["TARGETID"][keep]
    t["TARGET_RA"] = tg["RA"][keep]
    t["TARGET_DEC"] = tg["DEC"][keep]
    t["TILEID"] = np.full(keep.sum(), tid, np.int32)
    return t


@pytest.mark.parametrize("name", ["north_south", "missing_petal", "sv3", "dark1b_bright1b",
                                  "backup"])
def test_gather_targetphot_and_tractorphot(tree, name):
    from desispec.io.photo import gather_targetphot, gather_tractorphot
    from desitarget.targets import decode_targetid
    tid = tree["truth"]["special"][name]
    truth = tree["truth"]["tiles"][str(tid)]
    inp = _potential(tid)
    expected = set(truth["id"]) | set(map(int, truth["position"])) | set(truth["targeting"])
    assert set(inp["TARGETID"]) == expected
    tp = gather_targetphot(inp)
    assert np.array_equal(tp["TARGETID"], inp["TARGETID"])
    found = tp["RA"] != 0
    assert found.all(), "every potential target is in a targeting catalogue"
    ids = np.isin(tp["TARGETID"], truth["id"])
    objid, brickid, release, _, sky, _ = decode_targetid(tp["TARGETID"])
    assert np.array_equal(release[ids], tp["RELEASE"][ids])
    assert np.array_equal(brickid[ids], tp["BRICKID"][ids])
    assert np.array_equal(objid[ids], tp["BRICK_OBJID"][ids])
    assert not sky.any()
    nanpm = np.isin(tp["TARGETID"], truth["nan_pm"])
    assert np.all(np.isnan(tp["PMRA"][nanpm]))
    # ID path (targeting columns passed) then positional-only path
    inp2 = Table(tp)
    inp2["TARGET_RA"], inp2["TARGET_DEC"] = inp["TARGET_RA"], inp["TARGET_DEC"]
    for cat in (inp2, Table(inp)):
        tr = gather_tractorphot(cat, legacysurveydir=tree["truth"]["legacysurvey_dir"])
        lsid = dict(zip(tr["TARGETID"].tolist(), tr["LS_ID"].tolist()))
        for t in truth["id"]:
            o, b, r, _, _, _ = decode_targetid(t)
            assert lsid[t] == (int(r) << 40) | (int(b) << 16) | int(o)
        for t, v in truth["position"].items():
            assert lsid[int(t)] == v
        for t in truth["targeting"]:
            assert lsid[t] == 0
        bad = (tr["RELEASE"] == 0) != (tr["BRICKNAME"] == "")
        assert not bad.any()
    if name == "backup":
        assert len(truth["targeting"]) > 0 and len(truth["id"]) == 0
    else:
        assert len(truth["id"]) > 0 and len(truth["position"]) > 0 and len(truth["targeting"]) > 0


def test_shared_targets_between_overlapping_tiles(tree):
    a, b = tree["truth"]["special"]["overlapping"]
    ta, tb = tree["truth"]["tiles"][str(a)], tree["truth"]["tiles"][str(b)]
    assert set(ta["id"]) & set(tb["id"])


def test_north_and_south(tree):
    t = tree["truth"]["tiles"][str(tree["truth"]["special"]["north_south"])]
    from desitarget.targets import decode_targetid
    rel = decode_targetid(np.array(t["id"], dtype=np.int64))[2]
    assert 9011 in rel and ({9010, 9012} & set(rel.tolist()))


def test_targetid_decoding_in_tractor_and_catalogues(tree):
    from desitarget.targets import decode_targetid, encode_targetid
    for f in glob.glob(os.path.join(tree["root"], "target/catalogs/dr9/*/targets/*/resolve/*/*.fits")):
        d = fitsio.read(f, columns=["TARGETID", "RELEASE", "BRICKID", "BRICK_OBJID", "HPXPIXEL", "RA", "DEC"])
        o, b, r, _, _, _ = decode_targetid(d["TARGETID"])
        assert np.array_equal(o, d["BRICK_OBJID"]) and np.array_equal(b, d["BRICKID"])
        assert np.array_equal(r, d["RELEASE"])
        h = fitsio.read_header(f, ext=1)
        assert h["FILENEST"] and h["HPXNSIDE"] == 64
        from desimodel.footprint import radec2pix
        assert np.all(radec2pix(h["FILENSID"], d["RA"], d["DEC"]) == h["FILEHPX"])
        assert np.all(radec2pix(64, d["RA"], d["DEC"]) == d["HPXPIXEL"])
    f = glob.glob(os.path.join(tree["root"], "external/legacysurvey/dr9/*/tractor/*/*.fits"))[0]
    d = fitsio.read(f)
    tid = encode_targetid(objid=d["OBJID"], brickid=d["BRICKID"], release=d["RELEASE"])
    o, b, r, _, _, _ = decode_targetid(tid)
    assert np.array_equal(o, d["OBJID"]) and np.array_equal(r, d["RELEASE"])


def test_fiberassign_file(tree):
    from desispec.io.meta import findfile
    tid = tree["truth"]["special"]["toostaging"]
    p = findfile("fiberassignsvn", tile=tid, readonly=True)
    with fitsio.FITS(p) as f:
        names = [h.get_extname() for h in f]
        h = f[0].read_header()
        fa = f["FIBERASSIGN"].read()
    assert names == ["", "FIBERASSIGN", "SKY_MONITOR", "GFA_TARGETS", "TARGETS",
                     "POTENTIAL_ASSIGNMENTS"]
    for k in ("TILEID", "TILERA", "TILEDEC", "SURVEY", "FAPRGRM", "FAFLAVOR"):
        assert k in h
    assert h["TARG"].startswith("DESIROOT/target/catalogs/dr9/")
    assert h["TOO"] == "DESIROOT/survey/ops/staging/mtl/main/ToO/ToO.ecsv"
    assert list(fa.dtype.names) == C.names(C.fiberassign_spec("main"))
    neg = fa["TARGETID"] < 0
    assert np.array_equal(fa["TARGETID"][neg], -(tid * 10000 + fa["LOCATION"][neg].astype(np.int64)))
    assert np.all(fa["LOCATION"] == 1000 * fa["PETAL_LOC"] + fa["DEVICE_LOC"])
    assert np.all(fa["FIBER"] // 500 == fa["PETAL_LOC"])
    assert ((fa["TARGETID"] > 0) & ((fa["TARGETID"] >> 59) & 1 == 1)).any()   # sky fibres


def test_tiles_and_exposures_files(tree):
    csv = _tiles(tree)
    fits = Table.read(os.path.join(tree["root"], "spectro/redux/daily/tiles-daily.fits"), hdu="TILES")
    assert csv.colnames == C.names(C.TILES) == fits.colnames
    assert np.array_equal(csv["TILEID"], fits["TILEID"])
    sp = tree["truth"]["special"]
    assert sum(csv["TILEID"] == sp["duplicate_lines"][0]) == 2
    assert hasattr(csv["UPDATED"], "mask") and csv["UPDATED"].mask.any()
    assert np.all(np.diff(csv["LASTNIGHT"]) >= 0)
    z = csv[csv["TILEID"] == sp["efftime_zero"]]
    assert np.all(z["EFFTIME_SPEC"] == 0)
    assert set(csv["PROGRAM"]) >= {"dark", "bright1b", "backup"} and set(csv["SURVEY"]) == {"main", "sv3"}
    w = csv[csv["TILEID"] == tree["s1"]["withdrawn"][0]]
    assert w["EFFTIME_SPEC"][-1] == 0
    with fitsio.FITS(os.path.join(tree["root"], "spectro/redux/daily/exposures-daily.fits")) as f:
        ex, fr = f["EXPOSURES"].read(), f["FRAMES"].read()
    assert list(ex.dtype.names) == C.names(C.EXPOSURES)
    assert list(fr.dtype.names) == C.names(C.FRAMES)
    mp = fr[fr["TILEID"] == sp["missing_petal"]]
    assert len(mp) and not any(str(c).endswith("3") for c in mp["CAMERA"])


def test_advance_changes_redshifts(tree):
    s1 = tree["s1"]
    assert s1["new_tiles"] and s1["night"] > tree["s0"]["night"]
    csv = _tiles(tree)
    reobs = [t for t in s1["changed_tiles"] if t not in s1["new_tiles"] + s1["withdrawn"]]
    assert reobs
    for tid in reobs:
        d = os.path.join(tree["root"], "spectro/redux/daily/tiles/cumulative", str(tid))
        nights = sorted(os.listdir(d))
        assert str(s1["night"]) == nights[-1]
        if len(nights) > 1:
            z0 = fitsio.read(os.path.join(d, nights[-2], f"redrock-0-{tid}-thru{nights[-2]}.fits"), ext="REDSHIFTS")
            z1 = fitsio.read(os.path.join(d, nights[-1], f"redrock-0-{tid}-thru{nights[-1]}.fits"), ext="REDSHIFTS")
            assert np.array_equal(z0["TARGETID"], z1["TARGETID"]) and not np.array_equal(z0["Z"], z1["Z"])
        assert csv[csv["TILEID"] == tid]["LASTNIGHT"][-1] == s1["night"]


def _digest(root):
    h = {}
    for dp, _, fs in os.walk(root):
        for f in fs:
            if f.startswith("mock-") or f == "env.sh":
                continue
            p = os.path.join(dp, f)
            h[os.path.relpath(p, root)] = hashlib.sha1(open(p, "rb").read()).hexdigest()
    return h


def test_seed_reproducible(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    make_production(a, small=True, seed=11, tiles=3, nights=2)
    make_production(b, small=True, seed=11, tiles=3, nights=2)
    advance_production(a)
    advance_production(b)
    assert _digest(a) == _digest(b)


# --- a static (named) production: --static NAME ------------------------------------------

@pytest.fixture(scope="module")
def static_tree(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("static"))
    s = make_production(root, small=True, seed=9, static="iron")
    mp = pytest.MonkeyPatch()
    for k, v in _env(root).items():
        mp.setenv(k, v)
    mp.delenv("DESI_ROOT_READONLY", raising=False)
    import desispec.io.meta
    mp.setattr(desispec.io.meta, "_desi_root_readonly", None)  # cached by other tests
    yield dict(root=root, s=s, prod=os.path.join(root, "spectro/redux/iron"))
    mp.undo()


def _healpix(static_tree):
    """(survey, program, healpix, path) of every HEALPix redrock file, by globbing."""
    out = []
    for p in sorted(glob.glob(os.path.join(static_tree["prod"], "healpix/*/*/*/*/redrock-*.fits"))):
        survey, program, group, pix = os.path.relpath(p, static_tree["prod"]).split(os.sep)[1:5]
        assert group == str(int(pix) // 100)
        out.append((survey, program, int(pix), p))
    return out


def test_static_files_found_and_read_by_desispec(static_tree):
    from desispec.io.meta import findfile
    from desispec.scripts.zcatalog import read_redrock
    assert _env(static_tree["root"])["SPECPROD"] == "iron"
    assert findfile("tiles", readonly=True).endswith("tiles-iron.fits")
    assert os.path.exists(findfile("tiles", readonly=True))
    assert not os.path.exists(findfile("tiles_csv", readonly=True))   # FITS only
    assert os.path.exists(findfile("exposures", readonly=True))
    files = _healpix(static_tree)
    assert {(s, p) for s, p, _, _ in files} >= {("main", "dark"), ("sv3", "dark"),
                                                ("main", "backup")}
    for survey, program, pix, path in files:
        for ft in ("redrock", "emline", "qso_mgii", "qso_qn"):
            p = findfile(f"{ft}_hp", survey=survey, faprogram=program, healpix=pix, readonly=True)
            assert os.path.exists(p), p
        assert findfile("redrock_hp", survey=survey, faprogram=program, healpix=pix,
                        readonly=True) == path
        data, expfm = read_redrock(path, group="healpix")
        assert len(data) > 0 and (data["HEALPIX"] == pix).all() and (data["SPGRPVAL"] == pix).all()
        assert "DESINAME" in data.colnames and "TILEID" not in data.colnames
        assert len(np.unique(data["TARGETID"])) == len(data)
        assert set(expfm["TARGETID"].tolist()) == set(data["TARGETID"].tolist())


def test_static_healpix_coadds_the_tiles_targets(static_tree):
    """Each HEALPix row is the coadd of the same target's rows on the production's tiles
    of its survey and program (those with EFFTIME_SPEC > 0), in its nside-64 pixel."""
    healpy = require("healpy")
    tiles = Table.read(os.path.join(static_tree["prod"], "tiles-iron.fits"), hdu="TILES")
    assert len(np.unique(tiles["TILEID"])) == len(tiles)          # one line per tile
    rows = {}
    for t in tiles[tiles["EFFTIME_SPEC"] > 0]:
        for p in sorted(glob.glob(os.path.join(static_tree["prod"], "tiles/cumulative",
                                               str(t["TILEID"]), str(t["LASTNIGHT"]),
                                               "redrock-*.fits"))):
            fm = fitsio.read(p, "FIBERMAP", columns=["TARGETID", "COADD_NUMEXP"])
            ts = fitsio.read(p, "TSNR2", columns=["TSNR2_LRG"])
            for tid, n, lrg in zip(fm["TARGETID"].tolist(), fm["COADD_NUMEXP"].tolist(),
                                   ts["TSNR2_LRG"].tolist()):
                rows.setdefault((t["SURVEY"], t["PROGRAM"], tid), []).append((n, lrg))
    seen = set()
    for survey, program, pix, path in _healpix(static_tree):
        fm = fitsio.read(path, "FIBERMAP")
        ts = fitsio.read(path, "TSNR2")
        assert np.array_equal(healpy.ang2pix(64, fm["TARGET_RA"], fm["TARGET_DEC"], nest=True,
                                             lonlat=True), np.full(len(fm), pix))
        for i, tid in enumerate(fm["TARGETID"].tolist()):
            mine = rows[(survey, program, tid)]
            seen.add((survey, program, tid))
            assert fm["COADD_NUMTILE"][i] == len(mine)
            assert fm["COADD_NUMEXP"][i] == sum(n for n, _ in mine)
            assert ts["TSNR2_LRG"][i] == pytest.approx(sum(x for _, x in mine), rel=1e-5)
    assert seen == set(rows)
    assert any(len(v) > 1 for v in rows.values())


def test_static_cannot_advance(static_tree):
    with pytest.raises(ValueError, match="static"):
        advance_production(static_tree["root"])
