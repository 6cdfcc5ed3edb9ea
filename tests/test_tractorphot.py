"""tractorphot_onebrick against desispec's gather_tractorphot, on tractor files written here.

The tractor files have exactly the 181 DR9 columns of desispec's own tractor datamodel
(``desispec.io.photo.tractorphot_datamodel``, what ``gather_tractorphot`` fills), in its
order and with its types; no copy of it is kept here.  Where desispec and design
decision 10 must agree (the targeting ID columns are given to both) the rows are compared
column by column; the decision-10 differences are tested on their own.
"""
import functools
import os

import fitsio
import numpy as np
import pytest
from astropy.table import Table
from desiutil.brick import Bricks

from conftest import require
from specprod_db import ids
from specprod_db.extract import tractorphot as tr
from specprod_db.paths import InputError, Paths
from specprod_db.schema import table

#: The columns desispec's datamodel adds after the catalog's own.
ADDED = ("LS_ID", "TARGETID")


@functools.lru_cache(maxsize=None)
def desispec_tractor_dtype():
    """desispec's DR9 tractor datamodel as a numpy dtype (its byte order and ``U``
    strings): the catalog's columns in order, then :data:`ADDED`."""
    meta = require("desispec.io.meta")
    photo = require("desispec.io.photo")
    # it looks up (and caches) $DESI_ROOT even when it reads no file: give it a dummy
    cached = meta._desi_root_readonly
    meta._desi_root_readonly = cached or "/nonexistent/unused"
    try:
        dm = photo.tractorphot_datamodel(from_file=False, datarelease="dr9")
    finally:
        meta._desi_root_readonly = cached
    return np.dtype([(c, dm[c].dtype, dm[c].shape[1:]) for c in dm.colnames])


def _tractor_dtype():
    """A DR9 tractor file's dtype: desispec's datamodel without :data:`ADDED`, native
    byte order, ``S`` strings (as fitsio reads them)."""
    dm = desispec_tractor_dtype()
    fields = []
    for name in dm.names[:-len(ADDED)]:
        base = dm[name].base
        base = (np.dtype(f"S{base.itemsize // 4}") if base.kind == "U"
                else base.newbyteorder("="))
        fields.append((name, base, dm[name].shape))
    return np.dtype(fields)


TRACTOR_DTYPE = _tractor_dtype()
ARCSEC = 1 / 3600.0


def test_tractor_dtype_is_desispecs():
    """What extract/tractorphot.py reads from a tractor file, and the photometry columns
    it fills, against desispec's own DR9 datamodel: every column exists there, and our
    column holds desispec's values without loss."""
    dm = desispec_tractor_dtype()
    assert dm.names[-len(ADDED):] == ADDED
    catalog = dm.names[:-len(ADDED)]
    assert len(catalog) == 181                           # the DR9 tractor catalog
    # matching columns (positional and ID paths)
    assert dm["RA"].base == dm["DEC"].base == np.dtype(">f8")
    assert dm["BRICK_PRIMARY"].base == np.dtype(bool)
    assert dm["OBJID"].base.kind == dm["BRICKID"].base.kind == "i"
    read = set(tr.TRACTOR_COLUMNS) | {"RA", "DEC", "BRICK_PRIMARY", "OBJID", "BRICKID"}
    assert read <= set(catalog), sorted(read - set(catalog))
    assert len(set(tr.TRACTOR_COLUMNS)) == len(tr.TRACTOR_COLUMNS)
    # DCHISQ: one photometry column per element (PSF, REX, DEV, EXP, SER: LS order)
    dchisq = [c for c in table("photometry").names if c.startswith("dchisq_")]
    assert dchisq == ["dchisq_" + t for t in ("psf", "rex", "dev", "exp", "ser")]
    assert dm["DCHISQ"].shape == (len(dchisq),)
    for col in table("photometry").columns:
        name = col.name.upper() if col.name in ("ls_id", "targetid") else \
            tr._tractor_name(col.name)
        theirs, ours = dm[name].base, col.dtype
        assert dm[name].shape == ((len(dchisq),) if name == "DCHISQ" else ()), name
        if theirs.kind == "U":
            assert ours.kind == "S" and ours.itemsize >= theirs.itemsize // 4, name
        elif theirs.kind in "fb":                      # stored as read (then finitized)
            assert ours == theirs.newbyteorder("="), (name, ours, theirs)
        else:                                          # uint8 masks in smallint columns
            assert np.can_cast(theirs, ours, "safe"), (name, ours, theirs)
    # LS_ID: desispec's (RELEASE << 40) | (BRICKID << 16) | OBJID, in its dtype
    release, brickid, objid = (np.array([v], dtype=dm[c].base) for v, c in
                               ((9011, "RELEASE"), (662174, "BRICKID"),
                                (2**16 - 1, "OBJID")))
    want = ((release.astype(np.int64) << 40) | (brickid.astype(np.int64) << 16)
            | objid.astype(np.int64))
    got = np.asarray(ids.ls_id(release, brickid, objid))
    assert got.dtype == dm["LS_ID"].base.newbyteorder("=") and (got == want).all()


@functools.lru_cache(maxsize=None)
def _bricks():
    return Bricks()                                     # 0.5 s to build: once


def _brick(ra, dec):
    b = _bricks()
    return str(b.brickname(ra, dec)), int(b.brickid(ra, dec)), tuple(float(np.squeeze(x)) for x in b.brick_radec(ra, dec))


def write_tractor(path, brickname, brickid, center, n, release, rng, lower=False):
    """A tractor file of ``n`` random sources around the brick centre."""
    t = np.zeros(n, dtype=TRACTOR_DTYPE)
    for name in t.dtype.names:
        col = t[name]
        if col.dtype.kind == "f":
            col[...] = rng.normal(size=col.shape)
        elif col.dtype.kind in "iu":
            col[...] = rng.integers(0, 100, size=col.shape)
        elif col.dtype.kind == "b":
            col[...] = rng.random(col.shape) < 0.5
    t["RELEASE"], t["BRICKID"], t["BRICKNAME"] = release, brickid, brickname
    t["OBJID"] = np.arange(n)
    t["BRICK_PRIMARY"] = True
    t["TYPE"] = rng.choice([b"PSF", b"REX", b"DEV", b"EXP", b"SER"], n)
    t["REF_CAT"] = b"G2"
    t["RA"] = center[0] + rng.uniform(-0.11, 0.11, n)
    t["DEC"] = center[1] + rng.uniform(-0.11, 0.11, n)
    t["DCHISQ"][1, 2] = np.nan
    t["FLUX_G"][2] = np.inf
    if lower:  # a new dtype: renaming t's would rename TRACTOR_DTYPE, which it shares
        t = t.view(np.dtype({"names": [nm.lower() for nm in t.dtype.names],
                             "formats": [t.dtype[nm] for nm in t.dtype.names]}))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fitsio.write(path, t, extname="CATALOG", clobber=True)
    return t


def _targets(n):
    return np.zeros(n, dtype=[("TARGETID", "i8"), ("RA", "f8"), ("DEC", "f8"),
                              ("RELEASE", "i2"), ("BRICKID", "i4"), ("BRICKNAME", "S8"),
                              ("BRICK_OBJID", "i4"), ("PHOTSYS", "S1")])


def _offset(ra, dec, arcsec, angle=0.7):
    """A position ``arcsec`` away from (ra, dec)."""
    d = arcsec * ARCSEC
    return ra + d * np.cos(angle) / np.cos(np.radians(dec)), dec + d * np.sin(angle)


@pytest.fixture
def sky(tmp_path, monkeypatch):
    """Three bricks: A (Dec 2.5, south only), B (Dec 32.5) and C (Dec 32.25) with both
    north and south files; targets on the ID and the positional paths."""
    root = tmp_path / "desi"
    for k, v in {"DESI_ROOT": root, "DESI_TARGET": root / "target",
                 "DESI_SURVEYOPS": root / "surveyops",
                 "FIBER_ASSIGN_DIR": root / "fa"}.items():
        monkeypatch.setenv(k, str(v))
    monkeypatch.delenv("DESI_ROOT_READONLY", raising=False)
    import desispec.io.meta
    monkeypatch.setattr(desispec.io.meta, "_desi_root_readonly", None)
    paths = Paths.from_environment()
    rng = np.random.default_rng(7)
    cats, rowsets = {}, []
    for label, (ra0, dec0), regions in (("A", (150.1, 2.5), ("south",)),
                                        ("B", (35.3, 32.5), ("north", "south")),
                                        ("C", (35.3, 32.25), ("north", "south"))):
        name, bid, center = _brick(ra0, dec0)
        for region in regions:
            release = 9011 if region == "north" else 9010
            cats[label, region] = write_tractor(paths.tractor_file(region, name), name, bid,
                                                center, 400, release, rng)
        cat = cats[label, regions[-1]]
        cat_n = cats[label, regions[0]]
        prim = np.flatnonzero(cat["BRICK_PRIMARY"] & (np.abs(cat["DEC"] - center[1]) < 0.1))
        prim = prim[prim > 0]                             # BRICK_OBJID 0 means "none"
        t = _targets(12)
        # 0-3: ID path (3: a source that is not BRICK_PRIMARY), PHOTSYS of the last region
        src = prim[:4]
        cat["BRICK_PRIMARY"][src[3]] = False
        t["RELEASE"][:4], t["BRICKID"][:4], t["BRICK_OBJID"][:4] = cat["RELEASE"][src], bid, src
        t["PHOTSYS"][:4] = b"S"
        t["BRICKNAME"][:4] = name
        t["RA"][:4], t["DEC"][:4] = _offset(cat["RA"][src], cat["DEC"][src], 0.3)
        # 4-5: 0.5" from a primary source of each file (the chosen one matches)
        for i, c in ((4, cat), (5, cat_n)):
            t["RA"][i], t["DEC"][i] = _offset(c["RA"][prim[10]], c["DEC"][prim[10]], 0.5)
        # 6-7: two targets on the same source; 8: 1.5" away; 9: 0.99"; 10: 1.01"
        for i, sep in ((6, 0.2), (7, 0.4), (8, 1.5), (9, 0.99), (10, 1.01)):
            j = prim[20 + (i if i > 7 else 0)]
            t["RA"][i], t["DEC"][i] = _offset(cat["RA"][j], cat["DEC"][j], sep, angle=i)
        # 11: near a non-primary source only
        j = prim[40]
        cat["BRICK_PRIMARY"][j] = False
        t["RA"][11], t["DEC"][11] = _offset(cat["RA"][j], cat["DEC"][j], 0.1)
        rewrite = {r: cats[label, r] for r in regions}
        for region, c in rewrite.items():
            fitsio.write(paths.tractor_file(region, name), c, extname="CATALOG",
                         clobber=True)
        t["TARGETID"] = 1000 * (ord(label) - 64) + np.arange(12)
        rowsets.append(t)
    return paths, cats, np.concatenate(rowsets)


def _desispec(targets, paths, ids=True):
    from desispec.io.photo import gather_tractorphot
    cat = Table()
    cat["TARGETID"] = targets["TARGETID"]
    cat["TARGET_RA"], cat["TARGET_DEC"] = targets["RA"], targets["DEC"]
    if ids:
        for c in ("RELEASE", "BRICKID", "BRICK_OBJID"):
            cat[c] = targets[c]
        for c in ("BRICKNAME", "PHOTSYS"):
            cat[c] = np.char.decode(targets[c], "ascii")
    return gather_tractorphot(cat, legacysurveydir=paths.legacysurvey)


def _ours(targets, paths, stats=None):
    """Photometry rows for all targets (zeros where unmatched) and the matched mask."""
    out = table("photometry").empty(len(targets))
    matched = np.zeros(len(targets), dtype=bool)
    names = tr.brick_names(targets)
    for brick in np.unique(names[names != b""]):
        idx = np.flatnonzero(names == brick)
        brick = brick.decode()
        prow, mask = tr.tractorphot_onebrick(brick, targets[idx], paths, stats)
        assert (prow["targetid"] == targets["TARGETID"][idx][mask]).all()
        out[idx[mask]] = prow
        matched[idx[mask]] = True
    return out, matched


def assert_rows_equal_desispec(ours, ref):
    """Photometry rows against desispec's tractor rows, column by column (§9.2 "T")."""
    special = {"brick_objid": "OBJID", "morphtype": "TYPE"}
    for name in ours.dtype.names:
        if name.startswith("dchisq_"):
            i = ["psf", "rex", "dev", "exp", "ser"].index(name[7:])
            want = np.asarray(ref["DCHISQ"])[:, i]
        else:
            want = np.asarray(ref[special.get(name, name.upper())])
        got = ours[name]
        if want.dtype.kind == "U":
            np.testing.assert_array_equal(np.char.decode(got, "ascii"), want, err_msg=name)
        elif want.dtype.kind == "f":
            np.testing.assert_array_equal(got, np.where(np.isfinite(want), want, -9999.0)
                                          .astype(got.dtype), err_msg=name)
        else:
            np.testing.assert_array_equal(got, want, err_msg=name)


def test_parity_with_gather_tractorphot(sky):
    paths, cats, targets = sky
    stats = {}
    ours, matched = _ours(targets, paths, stats)
    ref = _desispec(targets, paths)
    ref_matched = np.asarray(ref["BRICKNAME"]) != ""
    np.testing.assert_array_equal(matched, ref_matched)
    assert_rows_equal_desispec(ours[matched], ref[matched])
    # what the inputs were built for, per brick of 12 targets
    # (positional targets 6-11 sit near sources of the south file)
    expect = {"A": [1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 0, 0],          # south only
              "B": [1, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0],          # both: north chosen
              "C": [1, 1, 1, 1, 1, 0, 1, 1, 0, 1, 0, 0]}          # both: south chosen
    for k, label in enumerate("ABC"):
        np.testing.assert_array_equal(matched[12 * k:12 * k + 12], np.array(expect[label],
                                      dtype=bool), err_msg=label)
    assert ours["release"][12 + 5] == 9011 and ours["release"][24 + 4] == 9010
    assert stats["id_matched"] == 12
    assert stats["finitized"]


def test_nearest_within_equals_astropy():
    from astropy import units as u
    from astropy.coordinates import SkyCoord
    rng = np.random.default_rng(11)
    for ra0, dec0 in ((0.05, 0.0), (180.0, 45.0), (359.95, -30.0), (10.0, 89.8)):
        cra = (ra0 + rng.uniform(-0.15, 0.15, 3000)) % 360
        cdec = np.clip(dec0 + rng.uniform(-0.15, 0.15, 3000), -90, 90)
        pick = rng.integers(0, 3000, 2000)
        sep = rng.uniform(0, 2.0, 2000)
        ang = rng.uniform(0, 2 * np.pi, 2000)
        ra = (cra[pick] + sep * ARCSEC * np.cos(ang) / np.cos(np.radians(cdec[pick]))) % 360
        dec = np.clip(cdec[pick] + sep * ARCSEC * np.sin(ang), -90, 90)
        ours = tr.nearest_within(ra, dec, cra, cdec)
        idx, d2d, _ = SkyCoord(ra * u.deg, dec * u.deg).match_to_catalog_sky(
            SkyCoord(cra * u.deg, cdec * u.deg))
        ref = np.where(d2d < 1.0 * u.arcsec, idx, -1)
        np.testing.assert_array_equal(ours, ref)
        assert (ours >= 0).sum() > 500


def test_decision10_id_path_beats_positions(sky):
    """Without ID columns (the old daily loader) desispec matches by position only:
    the non-primary source of target 3 is missed; the ID path takes it."""
    paths, cats, targets = sky
    a = targets[:12]
    ours, matched = _ours(a, paths)
    old = _desispec(a, paths, ids=False)
    old_matched = np.asarray(old["BRICKNAME"]) != ""
    assert matched[3] and not old_matched[3]
    assert ours["brick_objid"][3] == a["BRICK_OBJID"][3]
    same = matched & old_matched
    assert_rows_equal_desispec(ours[same], old[same])


def test_id_rows_in_both_regions(sky):
    """A brick whose ID rows have PHOTSYS 'S' and 'N' reads both files (desispec
    asserts one PHOTSYS per brick)."""
    paths, cats, targets = sky
    b = targets[12:16].copy()
    north = cats["B", "north"]
    b["PHOTSYS"][0], b["RELEASE"][0] = b"N", 9011
    b["BRICK_OBJID"][0] = 5
    b["BRICKID"][0] = north["BRICKID"][5]
    prow, mask = tr.tractorphot_onebrick(b["BRICKNAME"][0].decode(), b, paths)
    assert mask.all()
    assert prow["release"][0] == 9011 and prow["ra"][0] == north["RA"][5]
    assert (prow["release"][1:] == 9010).all()


def test_id_errors(sky):
    paths, cats, targets = sky
    a = targets[:4].copy()
    brick = a["BRICKNAME"][0].decode()
    a["BRICK_OBJID"][0] = 99999                         # not in the file
    a["BRICKID"][1] += 1                                # BRICKID disagrees
    stats = {}
    prow, mask = tr.tractorphot_onebrick(brick, a, paths, stats)
    np.testing.assert_array_equal(mask, [False, False, True, True])
    assert stats["id_unmatched"] == 2
    a["PHOTSYS"][2] = b"N"                              # brick A has no north file
    with pytest.raises(InputError, match=rf"brick {brick}.*north.*does not exist"):
        tr.tractorphot_onebrick(brick, a, paths)
    a["PHOTSYS"][2] = b"G"                              # not S/N: positional path
    stats = {}
    prow, mask = tr.tractorphot_onebrick(brick, a, paths, stats)
    assert stats["id_bad_photsys"] == 1 and mask[2]


def test_corrupt_tractor_file(sky):
    paths, cats, targets = sky
    a = targets[:12]
    brick = a["BRICKNAME"][0].decode()
    path = paths.tractor_file("south", brick)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(InputError, match=rf"brick {brick}.*tractor-{brick}"):
        tr.tractorphot_onebrick(brick, a, paths)
    with open(path, "wb") as f:
        f.write(b"garbage")
    with pytest.raises(InputError, match=rf"brick {brick}.*tractor-{brick}"):
        tr.tractorphot_onebrick(brick, a, paths)


def test_lower_case_columns_and_no_match(tmp_path):
    paths = Paths.from_environment({"DESI_ROOT": str(tmp_path)})
    name, bid, center = _brick(200.0, -10.0)
    cat = write_tractor(paths.tractor_file("south", name), name, bid, center, 50, 9010,
                        np.random.default_rng(1), lower=True)
    t = _targets(3)
    t["TARGETID"] = [1, 2, 3]
    t["RA"], t["DEC"] = cat["ra"][:3], cat["dec"][:3]
    t["DEC"][2] += 0.01
    prow, mask = tr.tractorphot_onebrick(name, t, paths)
    np.testing.assert_array_equal(mask, [True, True, False])
    assert prow["ls_id"][1] == (9010 << 40) | (bid << 16) | 1
    assert prow["morphtype"][0] == cat["type"][0]
    # neither file: nothing matched, no error
    empty, mask = tr.tractorphot_onebrick("0001m002", t, paths)
    assert len(empty) == 0 and not mask.any()


def test_bricknames_and_grouping():
    from desiutil.brick import brickname
    ra = np.array([35.3339, 0.1, 35.3340, 150.0, np.nan])
    dec = np.array([31.4965, -0.2, 31.4966, 2.5, np.nan])
    np.testing.assert_array_equal(tr.bricknames(ra[:4], dec[:4]),
                                  np.char.encode(brickname(ra[:4], dec[:4]), "ascii"))
    t = _targets(5)
    t["RA"], t["DEC"] = ra, dec
    t["BRICKNAME"][3] = b"9999p999"                      # a given BRICKNAME wins
    names = tr.brick_names(t)
    assert set(names[names != b""]) == {b"0352p315", b"0001m002", b"9999p999"}
    np.testing.assert_array_equal(np.flatnonzero(names == b"0352p315"), [0, 2])
    assert names[4] == b""                               # NaN row has no brick


# --- the mock production (specprod_db.mock) -------------------------------------------

def test_mock_parity_with_gather_tractorphot(monkeypatch, tmp_path):
    """Every mock tile: the brick inputs come from targetphot_onetile; desispec gets the
    same ID columns; matches, LS_IDs and rows agree, and the mock's truth holds."""
    import json

    from specprod_db.extract import targetphot
    from specprod_db.mock import make_production
    from test_targetphot import mock_env, mock_tile_inputs
    summary = make_production(str(tmp_path), small=True, seed=5)
    with open(tmp_path / "mock-truth.json") as f:
        truth = json.load(f)
    paths = mock_env(monkeypatch, tmp_path)
    totals = {"id": 0, "position": 0, "targeting": 0}
    for tileid in summary["tiles"]:
        header, fa_targets = mock_tile_inputs(paths, tileid)
        tphot = targetphot.targetphot_onetile(tileid, header, fa_targets, paths)
        targets = _targets(len(tphot))
        targets["RA"], targets["DEC"] = fa_targets["RA"], fa_targets["DEC"]
        for c in ("TARGETID", "RELEASE", "BRICKID", "BRICKNAME", "BRICK_OBJID", "PHOTSYS"):
            targets[c] = tphot[c]
        stats = {}
        ours, matched = _ours(targets, paths, stats)
        ref = _desispec(targets, paths)
        np.testing.assert_array_equal(matched, np.asarray(ref["BRICKNAME"]) != "",
                                      err_msg=f"tile {tileid}")
        assert_rows_equal_desispec(ours[matched], ref[matched])
        np.testing.assert_array_equal(ours["ls_id"][matched], np.asarray(ref["LS_ID"])[matched])
        t = truth["tiles"][str(tileid)]
        tid = targets["TARGETID"]
        is_id = np.isin(tid, t["id"])
        assert matched[is_id].all()
        np.testing.assert_array_equal(
            ours["ls_id"][is_id], (tphot["RELEASE"][is_id].astype(np.int64) << 40)
            | (tphot["BRICKID"][is_id].astype(np.int64) << 16) | tphot["BRICK_OBJID"][is_id])
        pos = {int(k): v for k, v in t["position"].items()}
        is_pos = np.isin(tid, list(pos))
        assert matched[is_pos].all()
        assert ours["ls_id"][is_pos].tolist() == [pos[int(x)] for x in tid[is_pos]]
        assert not matched[np.isin(tid, t["targeting"])].any()
        totals["id"] += int(is_id.sum())
        totals["position"] += int(is_pos.sum())
        totals["targeting"] += int(np.isin(tid, t["targeting"]).sum())
    assert min(totals.values()) > 0, totals


def test_bricknames_non_finite():
    got = tr.bricknames([np.nan, 35.3339, 1.0], [1.0, 31.4965, np.inf])
    assert got.tolist() == [b"", b"0352p315", b""]
    assert tr.bricknames([], []).shape == (0,)


def test_bricknames_without_brick_table(monkeypatch):
    """Naming a few bricks builds no desiutil table of every brick (about a second per
    process); scalars come back as one-element arrays."""
    import desiutil.brick

    def no_table(*args, **kwargs):
        raise AssertionError("desiutil.brick.Bricks built")
    monkeypatch.setattr(desiutil.brick.Bricks, "__init__", no_table)
    monkeypatch.setattr(desiutil.brick, "_bricks", None)
    assert tr.bricknames(35.3339, 31.4965).tolist() == [b"0352p315"]
    got = tr.bricknames(np.array([0.1, 359.9999, 180.0]), np.float32(-0.2))
    assert got.dtype == np.dtype("S8") and got.tolist() == [b"0001m002", b"3598m002",
                                                            b"1801m002"]


def test_photometry_columns_from_one_or_more_files():
    """The matched targets' columns, whichever file each comes from: one file, two files
    of one column layout, two files whose column types differ (the types of the first
    file with a matched row, column by column), each column the values of its target's tractor row."""
    rng = np.random.default_rng(8)

    class Fake:
        def __init__(self, data):
            self.data = data

        def read(self, columns, rows=None):
            return self.data[list(columns)][rows]

    def catalog(n, type_width=3):
        dt = [(n_, "U" + str(type_width) if n_ == "TYPE" else TRACTOR_DTYPE[n_])
              for n_ in TRACTOR_DTYPE.names]
        cat = np.zeros(n, dtype=dt)
        for name in cat.dtype.names:
            col = cat[name]
            if col.dtype.kind == "f":
                cat[name] = rng.normal(size=col.shape)
            elif col.dtype.kind in "iu":
                cat[name] = rng.integers(0, 100, size=col.shape)
            elif col.dtype.kind == "U":
                cat[name] = rng.choice(["PSF", "REX", "DEV"], size=n)
        return cat

    def expected(cats, src_file, src_row, matched):
        m = np.flatnonzero(matched)
        out = {}
        for c in table("photometry").names:
            if c in ("ls_id", "targetid"):
                continue
            t = tr._tractor_name(c)
            first = cats[src_file[m].min()][t]  # the first file with a matched row
            vals = np.zeros((m.size,) + first.shape[1:], dtype=first.dtype)
            for i, j in enumerate(m):
                vals[i] = cats[src_file[j]][t][src_row[j]]
            out[c] = vals[:, tr._DCHISQ.index(c)] if c.startswith("dchisq_") else vals
        return out

    targets = np.zeros(7, dtype=[("TARGETID", "i8")])
    targets["TARGETID"] = np.arange(7) + 100
    for cats in ([catalog(20)], [catalog(20), catalog(15)],
                 [catalog(20, 4), catalog(15, 3)], [catalog(20, 3), catalog(15, 4)]):
        src_file = rng.integers(0, len(cats), 7)
        src_file[4:] = np.arange(3) % len(cats)  # every file takes a row
        src_row = np.array([rng.integers(0, len(cats[k])) for k in src_file])
        src_row[:2] = src_row[0]  # two targets, one row
        src_file[:2] = src_file[0]
        matched = np.ones(7, dtype=bool)
        matched[3] = False
        src_file[3] = src_row[3] = -1
        cols = tr._photometry_columns([Fake(c) for c in cats], targets, src_file, src_row,
                                      matched)
        want = expected(cats, src_file, src_row, matched)
        assert list(cols)[:len(want)] == [c for c in cols if c in want]
        for c, v in want.items():
            assert cols[c].dtype == v.dtype, c
            assert cols[c].tobytes() == np.ascontiguousarray(v).tobytes(), c
        assert cols["targetid"].tolist() == [100, 101, 102, 104, 105, 106]
        m = np.flatnonzero(matched)
        assert (cols["ls_id"] == ids.ls_id(cols["release"], cols["brickid"],
                                           cols["brick_objid"])).all()
        assert len(m) == len(cols["ra"])
    assert tr._photometry_columns([Fake(catalog(3))], targets, np.full(7, -1),
                                  np.full(7, -1), np.zeros(7, dtype=bool)) is None


def test_tractor_file_missing_columns(tmp_path):
    """A tractor file without a column the brick needs is an InputError naming the
    missing columns, every time it is read (the names asked are remembered per layout),
    while a file with them, of another layout, reads."""
    paths = Paths.from_environment({"DESI_ROOT": str(tmp_path)})
    short = str(tmp_path / "short.fits")
    fitsio.write(short, np.zeros(2, dtype=[("ra", "f8"), ("dec", "f8")]))
    for _ in range(2):
        tractor = tr._Tractor(short, "0001p000")
        with pytest.raises(InputError, match=r"brick 0001p000: cannot read tractor "
                           r"catalog .*short.fits: missing column\(s\) BRICK_PRIMARY$"):
            tractor.read(["RA", "DEC", "BRICK_PRIMARY"])
        assert tractor.read(["DEC", "RA"]).dtype.names == ("RA", "DEC")
        tractor.close()
    name, bid, center = _brick(10.0, 5.0)
    cat = write_tractor(paths.tractor_file("south", name), name, bid, center, 5, 9010,
                        np.random.default_rng(2))
    tractor = tr._Tractor(paths.tractor_file("south", name), name)
    got = tractor.read(["RA", "DEC", "BRICK_PRIMARY"], rows=[1, 3])
    assert got["RA"].tolist() == cat["RA"][[1, 3]].tolist()
    tractor.close()
