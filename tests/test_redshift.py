"""ztile rows from cumulative redrock files, against desispec 0.70.0 ``read_redrock``.

Parity is checked column by column on the redrock files of a mock production (and on
edited copies exercising the quirks: non-finite coordinates, missing TSNR2 columns,
no FIRSTNIGHT/LASTNIGHT in FIBERMAP, zbest fallback), then the failure cases: a TILEID
that differs from the path, a non-cumulative SPGRP, missing petals.
"""
import os
import shutil

import fitsio
import numpy as np
import pytest
from desispec.scripts.zcatalog import read_redrock
from desiutil.names import radec_to_desiname

from specprod_db import fingerprints, ids, rows, schema
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
            cols[name] = 0
        elif up in data.colnames:
            cols[name] = np.asarray(data[up])
    if "FIRSTNIGHT" not in data.colnames:      # the old loader: min NIGHT of this file
        cols["firstnight"] = np.full(len(data), expfm["NIGHT"].min())
    cols.update(survey=survey, program=program, spgrp="cumulative")
    cols["id"] = ids.ztile_id("cumulative", data["SPGRPVAL"], data["TILEID"],
                              data["TARGETID"])
    cols["targetphotid"] = ids.target_id(survey, tileid, data["TARGETID"])
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
        # DESINAME is desiutil's, and the flags start at zero
        assert got["desiname"].astype(str).tolist() == list(
            radec_to_desiname(*_radec(info["files"])))
        assert not got["zcat_primary"].any() and (got["zcat_nspec"] == 0).all()
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
    # no file at all (a LASTNIGHT without a directory): empty, every petal missing
    got, info = redshift.ztile_rows(paths, tileid, 20991231, "main", "dark")
    assert len(got) == 0 and info["missing_petals"] == list(range(10))
    assert all(p is None for _, p in redshift.redrock_files(paths, tileid, 20991231))


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
        i = _science(d)
        d["TARGET_RA"][i[0]] = np.nan             # non-finite: '-'*22 in both
        d["TARGET_DEC"][i[1]] = np.inf
        d["COADD_EXPTIME"][i[2]] = np.nan        # finitized

    def edit_tsnr2(d):
        d["TSNR2_LRG"][_science(d)[0]] = np.nan

    _rewrite(path, header={"NIGHT": None},
             edit={"FIBERMAP": edit_fm, "TSNR2": edit_tsnr2},
             drop={"FIBERMAP": ["FIRSTNIGHT", "LASTNIGHT", "MEAN_PSF_TO_FIBER_SPECFLUX"],
                   "TSNR2": ["TSNR2_ELG", "TSNR2_QSO_Z"]})
    stats = {}
    got, info = redshift.ztile_rows(mine, tileid, night, survey, program, stats=stats)
    _assert_same(got, _expected(path, survey, program, tileid))
    assert got["desiname"][:2].tolist() == [b"-" * 22] * 2
    assert info["dummy_desiname"] == 2
    assert (got["tsnr2_elg"] == 0).all() and (got["mean_psf_to_fiber_specflux"] == 0).all()
    assert stats["finitized"]["coadd_exptime"] == 1
    assert (got["lastnight"] == night).all()     # from the thruNIGHT of the file name


def test_out_of_range_coordinates_get_a_dummy_name(production, tmp_path):
    """desiutil raises (and read_redrock would fail the file); we name them '-'*22."""
    mine, tileid, night, petal, survey, program = _one_petal(production, tmp_path)

    def edit_fm(d):
        i = _science(d)
        d["TARGET_RA"][i[0]] = 360.0
        d["TARGET_DEC"][i[1]] = -90.5
    _rewrite(mine.redrock_file(tileid, night, petal), edit={"FIBERMAP": edit_fm})
    got, info = _run(mine, tileid, night, survey, program)
    assert info["dummy_desiname"] == 2
    assert got["desiname"][:2].tolist() == [b"-" * 22] * 2
    assert got["desiname"][2].startswith(b"DESI J")


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
