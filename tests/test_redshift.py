"""ztile rows from cumulative redrock files, against desispec 0.70.0 ``read_redrock``.

Parity is checked column by column on the redrock files of a mock production (and on
edited copies exercising the quirks: missing TSNR2 columns, no FIRSTNIGHT/LASTNIGHT in
FIBERMAP, zbest fallback), then DESINAME (always computed, never the file's column:
desispec#2238; non-finite or out-of-range coordinates fail the tile, as in the old tool),
then the failure cases: a TILEID that differs from the path, a non-cumulative SPGRP,
missing petals, a directory holding none of the tile's files.
"""
import os
import shutil

import fitsio
import numpy as np
import pytest
from desispec.scripts.zcatalog import read_redrock
from desispec.zcatalog import find_primary_spectra
from desiutil.names import radec_to_desiname

from specprod_db.load import fingerprints
from specprod_db import ids, schema
from specprod_db.extract import rows
from specprod_db.extract import redshift, tile
from specprod_db.mock import make_production
from specprod_db.paths import InputError, Paths

PRIMARY = {"sv_nspec", "sv_primary", "main_nspec", "main_primary", "zcat_nspec",
           "zcat_primary"}


@pytest.fixture(scope="module")
def production(tmp_path_factory):
    out = tmp_path_factory.mktemp("mock")
    make_production(str(out), small=True, seed=11, tiles=3)
    paths = Paths.from_environment(env={"DESI_ROOT": str(out)})
    table, problems, bad_lines = tile.read_tiles_file(paths.tiles())
    assert problems == {} and bad_lines == 0
    latest = {}
    for line in table:                     # last line of a tile wins (test only)
        latest[int(line["TILEID"])] = line
    return paths, latest


def _expected(path, survey, program, tileid):
    """What the ztile rows of ``path`` must be, from desispec's ``read_redrock``."""
    data, expfm = read_redrock(path, group="cumulative", pertile=True)
    data = data[ids.no_sky(data["TARGETID"])]
    cols = {}
    for name in schema.ZTILE.names:
        up = name.upper()
        if name.startswith("coeff_"):
            cols[name] = np.asarray(data["COEFF"])[:, int(name[-1])]
        elif name in PRIMARY:
            continue  # below
        elif up in data.colnames:
            cols[name] = np.asarray(data[up])
    if "FIRSTNIGHT" not in data.colnames:      # the old loader: min NIGHT of this file
        cols["firstnight"] = np.full(len(data), expfm["NIGHT"].min())
    cols.update(survey=survey, program=program, spgrp="cumulative")
    cols["id"] = ids.ztile_id("cumulative", data["SPGRPVAL"], data["TILEID"],
                              data["TARGETID"])
    cols["targetphotid"] = ids.target_id(survey, tileid, data["TARGETID"])
    # staged as the only rows of their TARGETIDs: desispec's flags over this file alone
    # (one row per TARGETID in a tile), in the subsets the tile's survey is in
    nspec, primary = find_primary_spectra(data)
    for prefix, surveys in schema.PRIMARY_SUBSETS.items():
        member = surveys is None or survey in surveys
        cols[f"{prefix}_nspec"] = np.asarray(nspec) if member else 0
        cols[f"{prefix}_primary"] = np.asarray(primary) if member else False
    return rows.build("ztile", cols, n=len(data))


def _assert_same(got, exp):
    assert got.dtype == exp.dtype and len(got) == len(exp) > 0
    for name in schema.ZTILE.names:
        np.testing.assert_array_equal(got[name], exp[name], err_msg=name)


def test_parity_with_read_redrock_on_mock(production):
    paths, latest = production
    checked = 0
    for tileid, line in latest.items():
        if line["EFFTIME_SPEC"] <= 0:
            continue
        survey, program = str(line["SURVEY"]), str(line["PROGRAM"])
        got, info = redshift.ztile_rows(paths, tileid, line["LASTNIGHT"], survey, program)
        assert info["rows"] == len(got) and info["zbest_petals"] == []
        parts = [_expected(info["files"][p], survey, program, tileid)
                 for p in sorted(info["files"])]
        _assert_same(got, np.concatenate(parts))
        # DESINAME is desiutil's, and the flags those of a TARGETID's only spectrum
        assert got["desiname"].astype(str).tolist() == list(
            radec_to_desiname(*_radec(info["files"])))
        assert got["zcat_primary"].all() and (got["zcat_nspec"] == 1).all()
        checked += 1
    assert checked >= 2


def _radec(files):
    ra, dec = [], []
    for p in sorted(files):
        fm = fitsio.read(files[p], "FIBERMAP", columns=["TARGETID", "TARGET_RA",
                                                         "TARGET_DEC"])
        fm = fm[ids.no_sky(fm["TARGETID"])]
        ra.append(fm["TARGET_RA"])
        dec.append(fm["TARGET_DEC"])
    return np.concatenate(ra), np.concatenate(dec)


def test_missing_petal_is_reported(production):
    paths, latest = production
    tileid = next(t for t, l in latest.items()
                  if not os.path.exists(paths.redrock_file(t, l["LASTNIGHT"], 3)))
    line = latest[tileid]
    got, info = redshift.ztile_rows(paths, tileid, line["LASTNIGHT"], str(line["SURVEY"]),
                                    str(line["PROGRAM"]))
    assert 3 in info["missing_petals"] and 3 not in info["files"]
    assert len(got) > 0
    # no file at all (a LASTNIGHT without a directory): the tile fails, saying so
    with pytest.raises(InputError, match=f"tile {tileid}: no redrock or zbest file of tile "
                                         f"{tileid} in .*/{tileid}/20991231: the directory "
                                         "does not exist"):
        redshift.ztile_rows(paths, tileid, 20991231, "main", "dark")
    assert all(p is None for _, p in redshift.redrock_files(paths, tileid, 20991231))


def test_directory_of_another_tile_fails(production, tmp_path):
    """issue 20: a LASTNIGHT directory holding only another tile's petal files (a copy
    or link made by mistake) fails the tile, naming the directory and what it holds;
    an empty directory too.  (Before: no row and no error, so an UPDATE deleted the
    tile's ztile rows.)"""
    paths, latest = production
    (a, la), (b, lb) = [(t, int(l["LASTNIGHT"])) for t, l in sorted(latest.items())
                        if l["EFFTIME_SPEC"] > 0][:2]
    mine = Paths.from_environment(env={"DESI_ROOT": str(tmp_path)})
    dst = mine.cumulative_dir(a, la)
    os.makedirs(dst)
    with pytest.raises(InputError, match=f"tile {a}: .* in {dst}: the directory is empty"):
        redshift.ztile_rows(mine, a, la, "main", "dark")
    src = paths.cumulative_dir(b, lb)
    for name in os.listdir(src):
        shutil.copy(os.path.join(src, name), dst)
    with pytest.raises(InputError) as err:
        redshift.ztile_rows(mine, a, la, "main", "dark")
    message = str(err.value)
    assert message.startswith(f"tile {a}: no redrock or zbest file of tile {a} in {dst}: "
                              f"it holds {len(os.listdir(src))} file(s): ")
    assert f"petal files of tile(s) {b}" in message
    assert "..." in message and message.count(f"-{b}-thru{lb}.fits") == redshift.LISTED


# --- edited copies of one petal ------------------------------------------------------

def _one_petal(production, tmp_path):
    """A private copy of one petal (redrock + afterburners) of the first loaded tile."""
    paths, latest = production
    tileid, line = next((t, l) for t, l in latest.items() if l["EFFTIME_SPEC"] > 0)
    night = int(line["LASTNIGHT"])
    petal = next(p for p in range(10) if os.path.exists(paths.redrock_file(tileid, night, p)))
    mine = Paths.from_environment(env={"DESI_ROOT": str(tmp_path)})
    dst = mine.cumulative_dir(tileid, night)
    os.makedirs(dst)
    for prefix in ("redrock", "emline", "qso_mgii", "qso_qn"):
        shutil.copy(paths.redrock_file(tileid, night, petal, prefix), dst)
    return mine, tileid, night, petal, str(line["SURVEY"]), str(line["PROGRAM"])


def _rewrite(path, header=None, edit=None, drop=None, rename=None, out=None):
    """Rewrite a FITS file: header updates, per-HDU column edits/drops, HDU renames."""
    with fitsio.FITS(path) as fx:
        hdr = fx[0].read_header()
        hdus = [(h.get_extname(), h.read()) for h in fx[1:]]
    for k, v in (header or {}).items():
        if v is None:
            hdr.delete(k)
        else:
            hdr[k] = v
    out = out or path
    tmp = out + ".tmp"
    with fitsio.FITS(tmp, "rw", clobber=True) as f:
        f.write(None, header=hdr)
        for name, data in hdus:
            if drop and name in drop:
                keep = [n for n in data.dtype.names if n not in drop[name]]
                data = data[keep]
            if edit and name in edit:
                data = data.copy()
                edit[name](data)
            f.write(data, extname=(rename or {}).get(name, name))
    os.replace(tmp, out)
    if out != path:
        os.remove(path)


def _science(d):
    """Row numbers of the rows that load (not sky), in file order."""
    return np.flatnonzero(ids.no_sky(d["TARGETID"]))


def _run(mine, tileid, night, survey, program):
    return redshift.ztile_rows(mine, tileid, night, survey, program)


def test_quirks_match_read_redrock(production, tmp_path):
    mine, tileid, night, petal, survey, program = _one_petal(production, tmp_path)
    path = mine.redrock_file(tileid, night, petal)

    def edit_fm(d):
        d["COADD_EXPTIME"][_science(d)[2]] = np.nan        # finitized

    def edit_tsnr2(d):
        d["TSNR2_LRG"][_science(d)[0]] = np.nan

    _rewrite(path, header={"NIGHT": None},
             edit={"FIBERMAP": edit_fm, "TSNR2": edit_tsnr2},
             drop={"FIBERMAP": ["FIRSTNIGHT", "LASTNIGHT", "MEAN_PSF_TO_FIBER_SPECFLUX"],
                   "TSNR2": ["TSNR2_ELG", "TSNR2_QSO_Z"]})
    stats = {}
    got, info = redshift.ztile_rows(mine, tileid, night, survey, program, stats=stats)
    _assert_same(got, _expected(path, survey, program, tileid))
    assert (got["tsnr2_elg"] == 0).all() and (got["mean_psf_to_fiber_specflux"] == 0).all()
    assert stats["finitized"]["coadd_exptime"] == 1
    assert (got["lastnight"] == night).all()     # from the thruNIGHT of the file name


def _add_desiname(path, names):
    """Give a redrock file's FIBERMAP a DESINAME column (as files written since Jura
    have), ``names(fibermap)`` its values."""
    from numpy.lib import recfunctions
    with fitsio.FITS(path) as fx:
        hdr = fx[0].read_header()
        hdus = [(h.get_extname(), h.read_header(), h.read()) for h in fx[1:]]
    tmp = path + ".tmp"
    with fitsio.FITS(tmp, "rw", clobber=True) as f:
        f.write(None, header=hdr)
        for name, h, data in hdus:
            if name == "FIBERMAP":
                data = recfunctions.append_fields(data, "DESINAME", names(data),
                                                  dtypes="S22", usemask=False)
            f.write(data, extname=name)
    os.replace(tmp, path)


def test_desiutil_names_near_zero():
    """desiutil >= 3.5.0 (desiutil#211): a Dec in (-1, 0) keeps its sign."""
    from importlib.metadata import version
    assert tuple(int(x) for x in version("desiutil").split(".")[:2]) >= (3, 5)
    assert redshift.desinames([150.12345, 5.0, 359.99999, 10.0],
                              [-0.5, 2.25, -89.123456, -0.00005]).tolist() == [
        "DESI J150.1234-00.5000", "DESI J005.0000+02.2500", "DESI J359.9999-89.1234",
        "DESI J010.0000+00.0000"]


def test_desiname_is_computed_not_copied(production, tmp_path):
    """A FIBERMAP DESINAME column (Jura and later) is never loaded: some hold wrong names
    (desispec#2238).  Rows where it differs are counted, with an example."""
    mine, tileid, night, petal, survey, program = _one_petal(production, tmp_path)
    path = mine.redrock_file(tileid, night, petal)
    right, _ = _run(mine, tileid, night, survey, program)
    assert right["desiname"].tolist() == radec_to_desiname(
        *_radec({petal: path})).astype("S22").tolist()

    # the file's names all right: nothing counted
    _add_desiname(path, lambda fm: radec_to_desiname(fm["TARGET_RA"], fm["TARGET_DEC"]))
    stats = {}
    got, _ = redshift.ztile_rows(mine, tileid, night, survey, program, stats=stats)
    np.testing.assert_array_equal(got, right)
    assert "desiname_mismatch" not in stats and redshift.desiname_mismatch(stats) is None

    # two wrong names in the file (the first of them a sky row: not loaded, not counted)
    def wrong(fm):
        names = radec_to_desiname(fm["TARGET_RA"], fm["TARGET_DEC"]).astype("S22")
        sky = np.flatnonzero(~ids.no_sky(fm["TARGETID"]))
        names[sky[0]] = b"DESI J000.0000+00.0000"
        for k in _science(fm)[[3, 5]]:
            names[k] = b"DESI J999.9999+99.9999"
        return names
    _rewrite(path, drop={"FIBERMAP": ["DESINAME"]})
    _add_desiname(path, wrong)
    stats = {}
    got, _ = redshift.ztile_rows(mine, tileid, night, survey, program, stats=stats)
    np.testing.assert_array_equal(got, right)           # computed, whatever the file says
    assert stats["desiname_mismatch"] == 2
    n, message = redshift.desiname_mismatch(stats)
    tid = int(got["targetid"][3])
    assert n == 2 and message.startswith("2 row(s) whose FIBERMAP DESINAME differs")
    assert (f"e.g. TARGETID {tid} in {os.path.basename(path)}: file 'DESI J999.9999+99.9999', "
            f"computed '{got['desiname'][3].decode()}'") in message


@pytest.mark.parametrize("ra, dec", [(np.nan, 10.0), (10.0, np.inf), (360.0, 10.0),
                                     (10.0, -90.5), (-9999.0, -9999.0)])
def test_unnameable_coordinates_fail_the_tile(production, tmp_path, ra, dec):
    """desiutil raises on them, and the old tool (which finitized them to -9999 first)
    failed the tile: so does the loader, naming file, count and an example row."""
    mine, tileid, night, petal, survey, program = _one_petal(production, tmp_path)
    path = mine.redrock_file(tileid, night, petal)
    with fitsio.FITS(path) as fx:
        fm = fx["FIBERMAP"].read(columns=["TARGETID"])
    k = _science(fm)[4]

    def edit_fm(d):
        d["TARGET_RA"][k], d["TARGET_DEC"][k] = ra, dec
    _rewrite(path, edit={"FIBERMAP": edit_fm})
    with pytest.raises(InputError, match=(
            f"tile {tileid}: {path}: 1 row\\(s\\) with a non-finite or out-of-range "
            f"TARGET_RA/TARGET_DEC, e.g. TARGETID {fm['TARGETID'][k]}: RA {ra}, Dec {dec}; "
            "radec_to_desiname cannot name them")):
        _run(mine, tileid, night, survey, program)


def test_lost_petals():
    """Petals with a file when the tile was loaded, none now: named for the warning."""
    fp = fingerprints.Fingerprint((
        fingerprints.FileStamp("redrock-0-1000-thru20210505.fits", 10, 1, "a"),
        fingerprints.FileStamp("emline-0-1000-thru20210505.fits", 10, 1, "b"),
        fingerprints.FileStamp("petal-1"),
        fingerprints.FileStamp("zbest-2-1000-thru20210505.fits", 10, 1, "c"),
        fingerprints.FileStamp("redrock-3-1000-thru20210505.fits", 10, 1, "d")))
    assert redshift.lost_petals(fp.to_text(), [1, 2, 5]) == [2]
    assert redshift.lost_petals(fp.to_text(), []) == []
    assert redshift.lost_petals(None, [0, 1]) == [] == redshift.lost_petals("junk", [0])


def test_zbest_fallback(production, tmp_path):
    mine, tileid, night, petal, survey, program = _one_petal(production, tmp_path)
    path = mine.redrock_file(tileid, night, petal)
    expected = _expected(path, survey, program, tileid)
    zbest = mine.redrock_file(tileid, night, petal, prefix="zbest")
    _rewrite(path, rename={"REDSHIFTS": "ZBEST"}, out=zbest)
    got, info = _run(mine, tileid, night, survey, program)
    assert info["zbest_petals"] == [petal] and info["files"][petal] == zbest
    _assert_same(got, expected)
    assert dict(redshift.redrock_files(mine, tileid, night))[os.path.basename(zbest)] == zbest


@pytest.mark.parametrize("case, message", [
    ("header", "header TILEID 4242 differs from the tile of the path"),
    ("exp_fibermap", "EXP_FIBERMAP TILEID \\[4242\\] differs"),
    ("fibermap", "FIBERMAP TILEID \\[4242\\] differs"),
    ("spgrp", "SPGRP is 'pernight'"),
    ("rowmatch", "not row-matched"),
    ("truncated", "(cannot be read|no [A-Z0-9_]+ HDU)"),
])
def test_bad_petal_file_fails_the_tile(production, tmp_path, case, message):
    mine, tileid, night, petal, survey, program = _one_petal(production, tmp_path)
    path = mine.redrock_file(tileid, night, petal)

    def set_tileid(d):
        d["TILEID"][0] = 4242

    def swap(d):
        d["TARGETID"][[0, 1]] = d["TARGETID"][[1, 0]]
    if case == "header":
        _rewrite(path, header={"TILEID": 4242})
    elif case == "exp_fibermap":
        _rewrite(path, edit={"EXP_FIBERMAP": set_tileid})
    elif case == "fibermap":
        _rewrite(path, edit={"FIBERMAP": set_tileid})
    elif case == "spgrp":
        _rewrite(path, header={"SPGRP": "pernight"})
    elif case == "rowmatch":
        _rewrite(path, edit={"TSNR2": swap})
    else:
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(InputError, match=f"tile {tileid}: .*{os.path.basename(path)}: "
                                         f".*{message}"):
        _run(mine, tileid, night, survey, program)


def test_redrock_fingerprint_changes_with_a_file(production, tmp_path):
    mine, tileid, night, petal, survey, program = _one_petal(production, tmp_path)
    files = redshift.redrock_files(mine, tileid, night)
    before = fingerprints.hashed(files)
    assert sum(f.missing for f in before.files) == 9
    assert [f.name for f in before.files if not f.missing] == [
        os.path.basename(mine.redrock_file(tileid, night, petal, prefix))
        for prefix in ("redrock", "emline", "qso_mgii", "qso_qn")]
    assert fingerprints.hashed(redshift.redrock_files(mine, tileid, night)) == before
    _rewrite(mine.redrock_file(tileid, night, petal), header={"RRVER": "9.9"})
    after = fingerprints.hashed(redshift.redrock_files(mine, tileid, night))
    assert not after.same_content(before)
