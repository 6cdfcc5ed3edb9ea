"""Tiles file, exposures/frames and fiberassign extraction on real (small) FITS/CSV files."""
import datetime
import gzip
import os

import fitsio
import numpy as np
import pytest
from astropy.table import Table
from astropy.time import Time

from specprod_db import ids, schema
from specprod_db.extract import tile
from specprod_db.extract.faflavor import faflavor2program
from specprod_db.paths import InputError

SKY = 1 << 59


def _file_dtype(table, drop=(), extra=()):
    """Dtype of an input file holding ``table``'s columns (upper case) plus ``extra``."""
    out = [(c.name.upper(), c.dtype) for c in table.columns if c.name not in drop]
    return np.dtype(out + list(extra))


# --- tiles file -----------------------------------------------------------------------

def _tiles(n=4):
    t = np.zeros(n, dtype=_file_dtype(schema.TILE, extra=[("UPDATED", "S24")]))
    t["TILEID"] = 1000 + np.arange(n)
    t["SURVEY"], t["PROGRAM"], t["FAPRGRM"], t["FAFLAVOR"] = "main", "dark", "dark", "maindark"
    t["NEXP"] = 3
    t["EXPTIME"] = 3010.2
    t["TILERA"], t["TILEDEC"] = 150.25, -2.5
    t["EFFTIME_SPEC"] = 1000.5
    t["GOALTIME"] = 1000.0
    t["OBSSTATUS"], t["GOALTYPE"] = "obsend", "dark"
    t["MINTFRAC"] = 0.9
    t["LASTNIGHT"] = 20240101 + np.arange(n)
    t["UPDATED"] = "2024-10-07T14:05:33-0700"
    return t


def _write_csv(path, t, edit=None):
    Table(t).write(path, format="ascii.csv", overwrite=True)
    if edit:
        lines = open(path).read().splitlines()
        for i, line in edit.items():
            lines[i] = line
        open(path, "w").write("\n".join(lines) + "\n")


def test_tiles_csv_and_fits_agree(tmp_path):
    t = _tiles()
    t["EFFTIME_GFA"][1] = np.nan
    t["UPDATED"][2] = ""
    _write_csv(tmp_path / "tiles.csv", t)
    fitsio.write(str(tmp_path / "tiles.fits"), t, extname="TILES")
    a, pa, na = tile.read_tiles_file(str(tmp_path / "tiles.csv"))
    b, pb, nb = tile.read_tiles_file(str(tmp_path / "tiles.fits"))
    assert pa == {} and pb == {} and na == nb == 0
    assert a.dtype == b.dtype and a.dtype.names == tile.TILES_COLUMNS
    for name in a.dtype.names:
        if a.dtype[name].kind == "f":
            np.testing.assert_array_equal(a[name], b[name])
        else:
            assert a[name].tolist() == b[name].tolist(), name
    assert a["UPDATED"][2] == "" and a["SURVEY"][0] == "main"
    row = tile.tile_rows(a[1])
    assert row.dtype == schema.TILE.dtype and len(row) == 1
    assert row["efftime_gfa"][0] == -9999.0 and row["program"][0] == b"dark"


def test_tiles_csv_values_as_astropy_reads_them(tmp_path):
    """Our csv-module reader gives the values astropy's (what desispec writes and reads
    the tiles file with) gives: quoted fields, integers written as floats, NaN, empty
    fields, the mock's real file."""
    from astropy.io import ascii
    from specprod_db.mock import make_production
    t = _tiles()
    t["EFFTIME_GFA"][1] = np.nan
    t["UPDATED"][2] = ""
    _write_csv(tmp_path / "tiles.csv", t)
    lines = open(tmp_path / "tiles.csv").read().splitlines()
    i = lines[0].split(",").index("OBSSTATUS")
    fields = lines[1].split(",")
    fields[i] = '"obs,end"'  # a quoted comma: one field
    lines[1] = ",".join(fields)
    open(tmp_path / "tiles.csv", "w").write("\n".join(lines) + "\n")
    make_production(str(tmp_path / "mock"), small=True, seed=9)
    mock = str(tmp_path / "mock" / "spectro" / "redux" / "daily" / "tiles-daily.csv")
    for path in (str(tmp_path / "tiles.csv"), mock):
        ours, problems, nbad = tile.read_tiles_file(path)
        assert problems == {} and nbad == 0, problems
        ref = ascii.read(path, format="csv", guess=False)
        for name in ref.colnames:
            want = np.ma.filled(ref[name], np.nan if ref[name].dtype.kind == "f" else "")
            if ours.dtype[name.upper()].kind == "f":
                np.testing.assert_array_equal(ours[name.upper()], want.astype(float))
            else:
                assert [str(v).strip() for v in ours[name.upper()]] == \
                    [str(v).strip() for v in want], name


def test_tiles_fits_first_table_hdu(tmp_path):
    t = _tiles(2)
    fitsio.write(str(tmp_path / "tiles.fits"), t, extname="TILE_COMPLETENESS")
    a, problems, bad = tile.read_tiles_file(str(tmp_path / "tiles.fits"))
    assert problems == {} and bad == 0 and a["TILEID"].tolist() == [1000, 1001]


def test_tiles_csv_bad_lines_fail_only_their_tile(tmp_path):
    t = _tiles(6)
    path = tmp_path / "tiles.csv"
    _write_csv(path, t)
    lines = open(path).read().splitlines()
    f = lambda i: lines[i].split(",")  # noqa: E731
    l2 = f(2); l2[1] = ""                      # masked SURVEY
    l3 = f(3); l3[10] = "abc"                  # EFFTIME_SPEC not a number
    l4 = f(4); l4[0] = "x"                     # unreadable TILEID
    l5 = f(5) + ["extra"]                      # too many fields
    l6 = f(6); l6[11] = ""; l6[-1] = ""        # empty float and UPDATED: fine
    l6[2] = ""                                 # masked PROGRAM (desispec#2251): patched
    _write_csv(path, t, {2: ",".join(l2), 3: ",".join(l3), 4: ",".join(l4),
                         5: ",".join(l5), 6: ",".join(l6)})
    table, problems, bad = tile.read_tiles_file(str(path))
    assert set(problems) == {1001, 1002, 1004, None}
    assert bad == 4                                  # lines 3, 4, 5, 6; not line 7
    assert "SURVEY missing" in problems[1001] and "line 3" in problems[1001]
    assert "EFFTIME_SPEC not a number" in problems[1002]
    assert "TILEID" in problems[None] and "line 5" in problems[None]
    assert "fields" in problems[1004]
    assert table["TILEID"].tolist() == [1000, 1001, 1002, 1005]
    good = table[table["TILEID"] == 1005][0]
    assert np.isnan(good["EFFTIME_GFA"]) and good["UPDATED"] == ""
    assert good["PROGRAM"] == faflavor2program(good["FAFLAVOR"]) != ""


def test_tiles_csv_cut_mid_line(tmp_path):
    """A file cut inside its last line: astropy alone pads the short line with masked
    values without a word (a float column or UPDATED masked is not even a problem), so
    the reader counts the line as bad wherever the cut falls, and attributes it to its
    tile only when the TILEID is whole (a separator follows it)."""
    from astropy.io import ascii
    t = _tiles(4)
    path = tmp_path / "tiles.csv"
    _write_csv(path, t)
    whole = open(path).read()
    assert whole.endswith("\n")
    last = whole.splitlines()[-1]
    head = whole[: len(whole) - len(last) - 1]
    # astropy today: LASTNIGHT whole, UPDATED cut away -> a padded, masked row, no error
    cut = head + last[: last.rindex(",")]
    path.write_text(cut)
    raw = ascii.read(str(path), format="csv", guess=False)
    assert len(raw) == 4 and raw["UPDATED"].mask[-1] and raw["LASTNIGHT"][-1] == 20240104
    for k in range(1, len(last) + 1):          # k == len(last): only the newline is gone
        path.write_text(head + last[:k])
        table, problems, bad = tile.read_tiles_file(str(path))
        assert bad == 1, k
        assert table["TILEID"].tolist() == [1000, 1001, 1002], k
        key = 1003 if "," in last[:k] else None
        assert set(problems) == {key}, (k, problems)
        assert "line 5" in problems[key] and "fields, header has 22" in problems[key]
        assert "ends mid-line" in problems[key]
    # cut at a line boundary: nothing to see (the planner's mass-delete guard remains)
    path.write_text(head)
    table, problems, bad = tile.read_tiles_file(str(path))
    assert bad == 0 and problems == {} and len(table) == 3


def test_tiles_csv_bad_line_counts(tmp_path):
    """Every kind of unusable line counts once; blank lines do not count."""
    t = _tiles(6)
    path = tmp_path / "tiles.csv"
    _write_csv(path, t)
    lines = open(path).read().splitlines()
    f = lambda i: lines[i].split(",")  # noqa: E731
    l2 = f(2)[:15]                                  # fewer fields, mid-file
    l3 = f(3); l3[-1] = "2024-10-07T14:0"           # UPDATED cut short
    l4 = f(4); l4[20] = "20240105x"                 # LASTNIGHT not an integer
    l5 = f(5); l5[-1] = "2024-10-07T14:05:33"       # no offset: read as UTC, fine
    _write_csv(path, t, {2: ",".join(l2), 3: ",".join(l3), 4: ",".join(l4),
                         5: ",".join(l5)})
    with open(path, "a") as out:
        out.write("\n  \n")                         # blank lines: skipped, not bad
    table, problems, bad = tile.read_tiles_file(str(path))
    assert bad == 3 and set(problems) == {1001, 1002, 1003}
    assert "15 fields, header has 22" in problems[1001]
    assert "UPDATED '2024-10-07T14:0' not a timestamp" in problems[1002]
    assert "LASTNIGHT not an integer" in problems[1003]
    assert table["TILEID"].tolist() == [1000, 1002, 1003, 1004, 1005]
    # the same damage in a FITS file: rows, not lines
    bad_fits = t.copy()
    bad_fits["UPDATED"][1] = "garbage"
    fitsio.write(str(tmp_path / "tiles.fits"), bad_fits, extname="TILES")
    _, problems, bad = tile.read_tiles_file(str(tmp_path / "tiles.fits"))
    assert bad == 1 and "row 2" in problems[1001]


def test_tiles_file_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        tile.read_tiles_file(str(tmp_path / "nope.csv"))
    t = Table(_tiles(2))
    t.remove_column("GOALTYPE")
    t.write(tmp_path / "short.csv", format="ascii.csv")
    with pytest.raises(InputError, match="GOALTYPE"):
        tile.read_tiles_file(str(tmp_path / "short.csv"))
    (tmp_path / "bad.fits").write_bytes(b"SIMPLE  =  garbage")
    with pytest.raises(InputError, match="bad.fits"):
        tile.read_tiles_file(str(tmp_path / "bad.fits"))


def test_tile_row_string_too_long():
    t = _tiles(1)
    line = t.astype([(n, "U30" if t.dtype[n].kind == "S" else t.dtype[n])
                     for n in t.dtype.names])
    line["SURVEY"] = "x" * 21
    with pytest.raises(ValueError, match="too long"):
        tile.tile_rows(line[0])


# --- exposures ------------------------------------------------------------------------

def _exposures(tmp_path):
    exp = np.zeros(5, dtype=_file_dtype(schema.EXPOSURE, drop=("date_obs",)))
    exp["NIGHT"] = [20240101, 20240101, 20240102, 20240102, 20240103]
    exp["EXPID"] = [11, 12, 13, 14, 15]
    exp["TILEID"] = [1000, 1000, 1000, 2000, 1000]
    exp["MJD"] = [60310.1234567, 60310.2, 60311.5, 60311.6, 60312.000001]
    exp["EFFTIME_SPEC"] = [100.0, 0.0, 200.0, 300.0, np.nan]
    exp["SURVEY"], exp["PROGRAM"], exp["GOALTYPE"] = "main", "dark", "dark"
    exp["SKY_MAG_G_SPEC"][0] = np.nan
    frames = np.zeros(15, dtype=_file_dtype(schema.FRAME, drop=("frameid",),
                                            extra=[("TSNR2_ALPHA", "f4")]))
    frames["EXPID"] = np.repeat(exp["EXPID"], 3)
    frames["NIGHT"] = np.repeat(exp["NIGHT"], 3)
    frames["TILEID"] = np.repeat(exp["TILEID"], 3)
    frames["CAMERA"] = ["b0", "r5", "z9"] * 5
    path = str(tmp_path / "exposures-daily.fits")
    fitsio.write(path, exp, extname="EXPOSURES")
    fitsio.write(path, frames, extname="FRAMES")
    return path


def test_exposures_and_frames(tmp_path):
    path = _exposures(tmp_path)
    exposures, frames = tile.read_exposures_file(path)
    stats = {}
    e = tile.exposure_rows(exposures, 1000, stats=stats, path=path)
    assert e.dtype == schema.EXPOSURE.dtype
    assert e["expid"].tolist() == [11, 13]          # EFFTIME_SPEC > 0, this tile only
    assert stats["finitized"]["sky_mag_g_spec"] == 1
    f = tile.frame_rows(frames, e["expid"], tileid=1000, path=path)
    assert f.dtype == schema.FRAME.dtype
    assert f["frameid"].tolist() == [1100, 1115, 1129, 1300, 1315, 1329]
    assert f["camera"].tolist() == [b"b0", b"r5", b"z9"] * 2
    with pytest.raises(InputError, match=r"tile 3000: .*exposures-daily.fits: tile has "
                                         r"EFFTIME_SPEC>0 but no exposure"):
        tile.exposure_rows(exposures, 3000, path=path)
    with pytest.raises(InputError, match="no FRAMES row"):
        tile.frame_rows(frames, [99], tileid=1000)


def test_exposures_file_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        tile.read_exposures_file(str(tmp_path / "x.fits"))
    path = str(tmp_path / "e.fits")
    fitsio.write(path, np.zeros(2, dtype=[("EXPID", "i4")]), extname="EXPOSURES")
    with pytest.raises(InputError, match="lacks column"):
        tile.read_exposures_file(path)
    good = _exposures(tmp_path)
    data = open(good, "rb").read()
    truncated = str(tmp_path / "t.fits")
    open(truncated, "wb").write(data[:len(data) // 2])
    with pytest.raises(InputError, match="t.fits"):
        tile.read_exposures_file(truncated)


def test_date_obs_equals_astropy_to_the_microsecond():
    rng = np.random.default_rng(7)
    mjd = np.concatenate([rng.uniform(58800, 62000, 20000),            # DESI era
                          np.floor(rng.uniform(58800, 62000, 200)),   # midnights
                          [59000.5, 60310.1234567, 60000.999999999]])
    got = tile.mjd_to_pg_microseconds(mjd)
    epoch = datetime.datetime(2000, 1, 1)
    expected = np.array([(d - epoch) // datetime.timedelta(microseconds=1)
                         for d in Time(mjd, format="mjd").datetime], dtype=np.int64)
    np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError):
        tile.mjd_to_pg_microseconds([np.nan])


# --- fiberassign ----------------------------------------------------------------------

def _fiberassign(path, tileid=1000, header_tileid=None, gz=True):
    n = 12
    fa = np.zeros(n, dtype=_file_dtype(schema.FIBERASSIGN, drop=("id", "tileid"),
                                       extra=[("OBJTYPE", "S3"), ("PLATE_RA", "f8")]))
    fa["FIBER"] = np.arange(n)
    fa["PETAL_LOC"] = fa["FIBER"] // 500
    fa["DEVICE_LOC"] = np.arange(n) + 100
    fa["LOCATION"] = fa["PETAL_LOC"] * 1000 + fa["DEVICE_LOC"]
    fa["TARGETID"] = 39627000000 + np.arange(n)
    fa["TARGETID"][1] |= SKY                                  # sky
    fa["TARGETID"][2] = -(tileid * 10000 + fa["LOCATION"][2])  # unassigned
    fa["TARGET_RA"] = 150 + np.arange(n) * 0.01
    fa["PMRA"][3] = np.nan
    targets = np.zeros(6, dtype=[("TARGETID", "i8"), ("RA", "f8"), ("DEC", "f8"),
                                 ("FA_TYPE", "u1")])
    targets["TARGETID"] = [fa["TARGETID"][0], fa["TARGETID"][1], 5, 6, 7 | SKY, 8]
    targets["RA"] = np.arange(6)
    pot = np.zeros(5, dtype=[("TARGETID", "i8"), ("FIBER", "i4"), ("LOCATION", "i4")])
    pot["TARGETID"] = [fa["TARGETID"][0], fa["TARGETID"][1], 5, 5, 8]
    pot["LOCATION"] = [100, 100, 100, 101, 102]
    raw = str(path).removesuffix(".gz")
    hdr = {"TILEID": header_tileid or tileid, "TARG": "DESIROOT/target/x", "FAFLAVOR": "maindark"}
    fitsio.write(raw, None, header=hdr, clobber=True)
    fitsio.write(raw, fa, extname="FIBERASSIGN")
    fitsio.write(raw, np.zeros(2, dtype=[("FIBER", "i4")]), extname="SKY_MONITOR")
    fitsio.write(raw, np.zeros(2, dtype=[("TARGETID", "i8")]), extname="GFA_TARGETS")
    fitsio.write(raw, targets, extname="TARGETS")
    fitsio.write(raw, pot, extname="POTENTIAL_ASSIGNMENTS")
    if gz:
        with open(raw, "rb") as src, gzip.open(raw + ".gz", "wb") as dst:
            dst.write(src.read())
        os.remove(raw)
        return raw + ".gz", fa, targets, pot
    return raw, fa, targets, pot


def test_fiberassign_rows(tmp_path):
    path, fa, targets, pot = _fiberassign(tmp_path / "fiberassign-001000.fits.gz")
    stats = {}
    f, p, t, header = tile.fiberassign_rows(path, 1000, stats=stats)
    keep = ids.no_sky(fa["TARGETID"])
    assert keep.sum() == 10 and len(f) == 10
    assert f.dtype == schema.FIBERASSIGN.dtype and p.dtype == schema.POTENTIAL.dtype
    np.testing.assert_array_equal(f["targetid"], fa["TARGETID"][keep])
    assert (f["tileid"] == 1000).all()
    np.testing.assert_array_equal(
        f["id"], ids.fiberassign_id(fa["LOCATION"][keep], 1000, fa["TARGETID"][keep]))
    assert ids.to_int(f["id"][0])[0] == (100 << 96) | (1000 << 64) | int(fa["TARGETID"][0])
    assert stats["finitized"]["pmra"] == 1
    assert p["targetid"].tolist() == [fa["TARGETID"][0], 5, 5, 8]
    assert ids.to_int(p["id"][1])[0] == (100 << 96) | (1000 << 64) | 5
    assert t.dtype.names == ("TARGETID", "RA", "DEC")
    assert t["TARGETID"].tolist() == [fa["TARGETID"][0], 5, 6, 8]
    assert header["TILEID"] == 1000 and header["FAFLAVOR"] == "maindark"


def test_fiberassign_errors(tmp_path):
    with pytest.raises(InputError, match="tile 1000: fiberassign file .*does not exist"):
        tile.fiberassign_rows(str(tmp_path / "missing.fits.gz"), 1000)
    path, *_ = _fiberassign(tmp_path / "fiberassign-001000.fits.gz", header_tileid=999)
    with pytest.raises(InputError, match="header TILEID 999"):
        tile.fiberassign_rows(path, 1000)
    path, *_ = _fiberassign(tmp_path / "fiberassign-001001.fits.gz", tileid=1001)
    data = open(path, "rb").read()
    bad = str(tmp_path / "fiberassign-001001-trunc.fits.gz")
    open(bad, "wb").write(data[: len(data) // 3])
    with pytest.raises(InputError, match="tile 1001: fiberassign file .*trunc"):
        tile.fiberassign_rows(bad, 1001)


# --- on a mock production -------------------------------------------------------------

def test_mock_production(tmp_path):
    from specprod_db.mock import make_production
    from specprod_db.paths import Paths
    make_production(str(tmp_path), small=True, seed=5, tiles=6)
    paths = Paths.from_environment(env={"DESI_ROOT": str(tmp_path)})
    csv, p1, n1 = tile.read_tiles_file(paths.tiles())
    fits, p2, n2 = tile.read_tiles_file(paths.tiles().replace(".csv", ".fits"))
    assert p1 == {} and p2 == {} and n1 == n2 == 0
    for name in csv.dtype.names:
        if csv.dtype[name].kind == "f":
            np.testing.assert_array_equal(csv[name], fits[name])
        else:
            assert csv[name].tolist() == fits[name].tolist(), name
    exposures, frames = tile.read_exposures_file(paths.exposures())
    latest = {int(line["TILEID"]): line for line in csv}
    loaded = 0
    for tileid, line in latest.items():
        if line["EFFTIME_SPEC"] <= 0:
            with pytest.raises(InputError, match=f"tile {tileid}: .*no exposure"):
                tile.exposure_rows(exposures, tileid)
            continue
        tile_row = tile.tile_rows(line)
        assert tile_row["tileid"][0] == tileid
        e = tile.exposure_rows(exposures, tileid)
        assert (e["tileid"] == tileid).all() and (e["efftime_spec"] > 0).all()
        assert e["night"].max() == line["LASTNIGHT"]
        f = tile.frame_rows(frames, e["expid"], tileid=tileid)
        assert set(f["expid"].tolist()) == set(e["expid"].tolist())
        assert len(np.unique(f["frameid"])) == len(f)
        path = paths.fiberassign_file(tileid)
        fa, pot, targets, header = tile.fiberassign_rows(path, tileid)
        raw = fitsio.read(path, "FIBERASSIGN", columns=["TARGETID"])["TARGETID"]
        assert len(fa) == ids.no_sky(raw).sum() < len(raw)
        assert ids.no_sky(pot["targetid"]).all() and ids.no_sky(targets["TARGETID"]).all()
        assert set(fa["targetid"].tolist()) <= set(targets["TARGETID"].tolist())
        assert set(pot["targetid"].tolist()) <= set(targets["TARGETID"].tolist())
        assert header["TILEID"] == tileid
        loaded += 1
    assert loaded >= 4
