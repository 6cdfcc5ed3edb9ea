"""fitstable.BinTable reads what fitsio reads: values and dtypes of every column of the
mock tractor files and of a table of every supported type, any rows; what it does not
convert is refused (Unsupported, then fitsio), a damaged file is an error."""

import fitsio
import numpy as np
import pytest

from conftest import tractor_files
from specprod_db.extract.fitstable import BinTable, Unsupported


def same(a, b):
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    for n in a.dtype.names:
        assert a[n].tobytes() == b[n].tobytes(), n  # bit for bit (NaN too)


def fitsio_read(path, columns, rows=None):
    with fitsio.FITS(path) as f:
        hdu = next(h for h in f if h.get_exttype() != "IMAGE_HDU")
        return hdu.read(columns=columns, rows=rows, upper=True)


def row_choices(n, rng):
    yield None
    if n:
        yield np.array([0])
        yield np.array([n - 1])
        yield np.sort(rng.choice(n, size=min(n, 9), replace=False))
    yield np.array([], dtype=np.int64)


def test_mock_tractor_files_read_as_fitsio_reads_them(small_production):
    rng = np.random.default_rng(5)
    files = tractor_files(small_production[0])
    assert len(files) >= 5
    for path in files[:12]:
        table = BinTable(path)
        assert len(table.colnames) == 181
        for rows in row_choices(table.nrows, rng):
            same(table.read(table.colnames, rows), fitsio_read(path, table.colnames, rows))
        # the reader's usual requests, names in another case than the file's
        cols = ["ra", "Dec", "BRICK_PRIMARY", "objid", "BRICKID"]
        same(table.read(cols), fitsio_read(path, cols))


def every_type(n):
    rng = np.random.default_rng(3)
    data = np.zeros(n, dtype=[
        ("flag", "?"), ("u1", "u1"), ("i1", "i1"), ("i2", ">i2"), ("u2", "u2"),
        ("i4", "i4"), ("u4", "u4"), ("i8", "i8"), ("u8", "u8"), ("f4", "f4"),
        ("f8", ">f8"), ("name", "S5"), ("one", "S1"), ("vec", "f4", (3,)),
        ("ivec", "i2", (4,)), ("bvec", "?", (2,)), ("Mixed_Case", "i4")])
    for name in data.dtype.names:
        kind = data.dtype[name].base.kind
        shape = (n,) + data.dtype[name].shape
        if kind == "b":
            data[name] = rng.integers(0, 2, shape).astype(bool)
        elif kind in "iu":
            info = np.iinfo(data.dtype[name].base)
            data[name] = rng.integers(info.min, info.max, shape, dtype=data.dtype[name].base.newbyteorder("="),
                                      endpoint=True)
        elif kind == "f":
            data[name] = rng.normal(size=shape)
    data["f8"][:2] = [np.nan, np.inf][:n]
    words = [b"", b"a", b"ab c", b"abcde", b" lead"]
    data["name"] = [words[i % len(words)] for i in range(n)]
    data["one"] = [b"N" if i % 2 else b"" for i in range(n)]
    return data


@pytest.mark.parametrize("n", [0, 1, 57])
def test_every_supported_type(n, tmp_path):
    path = str(tmp_path / "t.fits")
    fitsio.write(path, every_type(n))
    table = BinTable(path)
    assert table.nrows == n
    rng = np.random.default_rng(n)
    for rows in row_choices(n, rng):
        same(table.read(table.colnames, rows), fitsio_read(path, table.colnames, rows))
    same(table.read(["I8", "flag"]), fitsio_read(path, ["I8", "flag"]))


def test_table_after_an_image_and_a_long_header(tmp_path):
    path = str(tmp_path / "t.fits")
    data = every_type(30)
    with fitsio.FITS(path, "rw") as f:
        f.write(np.arange(12, dtype="f4").reshape(3, 4), extname="IMG")
        f.write(data, extname="CAT",
                header=[{"name": f"KEY{i}", "value": "it's 'quoted'" if i % 2 else i}
                        for i in range(100)])
    table = BinTable(path)
    same(table.read(table.colnames), fitsio_read(path, table.colnames))


def test_what_it_leaves_to_fitsio(tmp_path):
    path = str(tmp_path / "t.fits")
    data = np.zeros(4, dtype=[("ok", "i4"), ("grid", "f4", (2, 3)), ("c", "c8")])
    fitsio.write(path, data)
    table = BinTable(path)
    same(table.read(["ok"]), fitsio_read(path, ["ok"]))
    for col in ("grid", "c"):  # a 2-D TDIM; complex
        with pytest.raises(Unsupported):
            table.read([col])
    ascii_path = str(tmp_path / "a.fits")
    fitsio.write(ascii_path, np.zeros(2, dtype=[("x", "i4")]), table_type="ascii")
    with pytest.raises(Unsupported):
        BinTable(ascii_path)
    scaled = str(tmp_path / "s.fits")
    fitsio.write(scaled, np.zeros(2, dtype=[("x", "i2")]))
    with open(scaled, "r+b") as f:  # TZERO1 = 5: a scaled column, not unsigned
        head = f.read(3 * 2880)
        at = head.index(b"END" + b" " * 77, head.index(b"XTENSION= 'BINTABLE'"))
        f.seek(at)
        f.write(b"TZERO1  =                    5".ljust(80) + b"END".ljust(80))
    with pytest.raises(Unsupported):
        BinTable(scaled).read(["x"])


def test_damaged_files_are_errors(tmp_path):
    path = str(tmp_path / "t.fits")
    fitsio.write(path, every_type(200))
    data = open(path, "rb").read()
    cut = str(tmp_path / "cut.fits")
    open(cut, "wb").write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        BinTable(cut)
    head = str(tmp_path / "head.fits")
    open(head, "wb").write(data[:1000])
    with pytest.raises(ValueError, match="inside a header"):
        BinTable(head)
    nokey = str(tmp_path / "nokey.fits")
    open(nokey, "wb").write(data.replace(b"TFORM3  =", b"TFORMX  =", 1))
    with pytest.raises(ValueError, match="no TFORM3 keyword"):
        BinTable(nokey)
    image = str(tmp_path / "image.fits")
    fitsio.write(image, np.zeros((2, 3), dtype="f4"))
    with pytest.raises(ValueError, match="no binary table HDU"):
        BinTable(image)
    other = str(tmp_path / "other.fits")
    open(other, "wb").write(b"x" * 2880)
    with pytest.raises(ValueError, match="not a FITS file"):
        BinTable(other)
    with pytest.raises(ValueError, match="no column"):
        BinTable(path).read(["nope"])


def test_non_ascii_strings_fail_as_with_fitsio(tmp_path):
    path = str(tmp_path / "t.fits")
    fitsio.write(path, np.array([(b"P\xff\xfe",)], dtype=[("TYPE", "S3")]))
    with pytest.raises(UnicodeDecodeError):
        fitsio_read(path, ["TYPE"])
    with pytest.raises(UnicodeDecodeError):
        BinTable(path).read(["TYPE"])


def test_tractor_reader_falls_back_to_fitsio(tmp_path):
    """What BinTable leaves to fitsio is read by fitsio, the same way, in the tractor
    reader: a column it does not convert, and a file whose table is ASCII."""
    from specprod_db.extract.tractorphot import _Tractor
    path = str(tmp_path / "t.fits")
    data = np.zeros(5, dtype=[("ra", "f8"), ("dec", "f8"), ("brick_primary", "?"),
                              ("grid", "f4", (2, 3))])
    data["ra"], data["grid"] = np.arange(5), np.arange(30).reshape(5, 2, 3)
    fitsio.write(path, data)
    tractor = _Tractor(path, "0001p000")
    assert tractor.fits is None  # BinTable
    same(tractor.read(["RA", "DEC"]), fitsio_read(path, ["ra", "dec"]))
    same(tractor.read(["GRID", "RA"], rows=[1, 3]),
         fitsio_read(path, ["grid", "ra"], rows=[1, 3]))
    assert tractor.fits is not None  # fitsio from then on
    same(tractor.read(["RA"]), fitsio_read(path, ["ra"]))
    tractor.close()
    ascii_path = str(tmp_path / "a.fits")
    table = np.zeros(3, dtype=[("ra", "f8")])
    table["ra"] = [1.5, 2.5, 3.5]
    fitsio.write(ascii_path, table, table_type="ascii")
    tractor = _Tractor(ascii_path, "0001p000")
    assert tractor.fits is not None
    same(tractor.read(["RA"]), fitsio_read(ascii_path, ["ra"]))
    tractor.close()


def test_named_tables_read_as_fitsio_reads_them(small_production, tmp_path):
    """fitstable.Tables (the redrock and afterburner readers' fast path): every HDU of
    the mock's petal files by name, names as in the file (mixed case too), any columns,
    the same arrays as fitsio; the cases it leaves to fitsio raise Unsupported."""
    import glob
    import os

    from specprod_db.extract.fitstable import Tables
    base = os.path.join(small_production[0], "spectro", "redux", "daily", "tiles",
                        "cumulative")
    files = sorted(glob.glob(os.path.join(base, "*", "*", "*-[01]-*.fits")))[:16]
    assert any("redrock" in f for f in files) and any("qso_qn" in f for f in files)
    for path in files:
        tables = Tables(path)
        with fitsio.FITS(path) as fx:
            for hdu in fx[1:]:
                name = hdu.get_extname()
                assert name in tables and name.lower() in tables
                cols = hdu.get_colnames()
                assert tables[name].get_colnames() == cols
                for pick in (cols, cols[::-1][:3]):
                    same(hdu.read(columns=pick), tables[name].read(columns=pick))
        assert "NO_SUCH_HDU" not in tables
    data = np.zeros(3, dtype=[("TARGETID", ">i8"), ("C_MgII", ">f4")])
    data["C_MgII"] = [1.5, np.nan, 2]
    path = str(tmp_path / "two.fits")
    fitsio.write(path, np.zeros((2, 2), np.float32))
    fitsio.write(path, data, extname="QN_RR")
    fitsio.write(path, data, extname="QN_RR")  # two HDUs of one name: fitsio decides
    with pytest.raises(Unsupported):
        Tables(path)
    path = str(tmp_path / "one.fits")
    fitsio.write(path, np.zeros((2, 2), np.float32), extname="IMG")
    fitsio.write(path, data, extname="QN_RR")
    tables = Tables(path)
    got = tables["qn_rr"].read(columns=["c_mgii", "TARGETID"])
    assert got.dtype.names == ("TARGETID", "C_MgII")
    same(fitsio.read(path, ext="QN_RR", columns=["c_mgii", "TARGETID"]), got)
    with pytest.raises(Unsupported):
        tables["IMG"]


@pytest.mark.parametrize("few, mapped", [(64, 1 << 20), (0, 0), (10 ** 6, 0)])
def test_row_subsets_at_random(few, mapped, tmp_path, monkeypatch):
    """Any rows, any columns, through each way of reading rows: one by one (up to
    FEW_ROWS of them), the whole table read (up to MAP_BYTES) or mapped."""
    from specprod_db.extract import fitstable
    monkeypatch.setattr(fitstable, "FEW_ROWS", few)
    monkeypatch.setattr(fitstable, "MAP_BYTES", mapped)
    path = str(tmp_path / "t.fits")
    fitsio.write(path, every_type(300))
    table = BinTable(path)
    rng = np.random.default_rng(11)
    for size in (1, 2, 3, 40, 64, 65, 200, 300):
        rows = np.sort(rng.choice(300, size=size, replace=False))
        cols = list(rng.choice(table.colnames, size=rng.integers(1, 8), replace=False))
        same(table.read(cols, rows), fitsio_read(path, cols, rows))
        same(table.read(table.colnames, rows), fitsio_read(path, table.colnames, rows))
    same(table.read(table.colnames), fitsio_read(path, table.colnames))
    with pytest.raises(IndexError):
        table.read(["i4"], [0, 300])


@pytest.mark.parametrize("few, mapped", [(64, 1 << 20), (0, 0)])
def test_file_cut_after_it_was_opened(few, mapped, tmp_path, monkeypatch):
    from specprod_db.extract import fitstable
    monkeypatch.setattr(fitstable, "FEW_ROWS", few)
    monkeypatch.setattr(fitstable, "MAP_BYTES", mapped)
    path = str(tmp_path / "t.fits")
    fitsio.write(path, every_type(100))
    table = BinTable(path)
    with open(path, "r+b") as f:
        f.truncate(table.offset + 50 * table.rowbytes)
    with pytest.raises(ValueError, match="truncated"):
        table.read(["i4"])
    with pytest.raises(ValueError, match="truncated"):
        table.read(["i4"], rows=[10, 99])


def _edit_header(path, old, new):
    """Replace card ``old`` (its first 8 bytes) of the table header by card ``new``."""
    data = bytearray(open(path, "rb").read())
    start = data.index(b"XTENSION= 'BINTABLE'")
    at = start
    while data[at:at + 8] != old.ljust(8).encode()[:8]:
        at += 80
    data[at:at + 80] = new.ljust(80).encode()
    open(path, "wb").write(bytes(data))


def _add_cards(path, cards):
    """Cards added before END of the table header (which must have room for them)."""
    data = bytearray(open(path, "rb").read())
    start = data.index(b"XTENSION= 'BINTABLE'")
    at = start
    while data[at:at + 80] != b"END".ljust(80):
        at += 80
    text = b"".join(c.ljust(80).encode() for c in cards) + b"END".ljust(80)
    assert data[at:at + len(text)].strip() == b"END"
    data[at:at + len(text)] = text
    open(path, "wb").write(bytes(data))


def test_tdim_scaled_and_keywords_in_values(tmp_path):
    """A 1-D TDIM equal to the repeat is read; a TSCAL is refused (then fitsio reads
    it); keyword-like text inside another card's value or comment is not a keyword."""
    data = np.zeros(6, dtype=[("vec", "f4", (3,)), ("x", "i2"), ("y", "i4")])
    data["vec"] = np.arange(18).reshape(6, 3)
    data["x"], data["y"] = np.arange(6), -np.arange(6)
    path = str(tmp_path / "t.fits")
    fitsio.write(path, data, header=[
        {"name": "NOTE", "value": "NAXIS2  = 99", "comment": "TFIELDS =  7 TTYPE1  = 'z'"}])
    _add_cards(path, ["TDIM1   = '(3)     '"])
    table = BinTable(path)
    assert table.nrows == 6 and table.colnames == ["vec", "x", "y"]
    with fitsio.FITS(path) as f:
        assert f[1].read_header()["TDIM1"].strip() == "(3)"
    same(table.read(["vec", "x", "y"]), fitsio_read(path, ["vec", "x", "y"]))
    same(table.read(["vec"], rows=[1, 4]), fitsio_read(path, ["vec"], rows=[1, 4]))
    scaled = str(tmp_path / "s.fits")
    fitsio.write(scaled, data)
    _add_cards(scaled, ["TSCAL2  =                  2.0", "TZERO2  =                  1.0"])
    table = BinTable(scaled)
    same(table.read(["y"]), fitsio_read(scaled, ["y"]))
    with pytest.raises(Unsupported):
        table.read(["x"])
    from specprod_db.extract.tractorphot import _Tractor
    tractor = _Tractor(scaled, "0001p000")
    got = tractor.read(["X", "Y"], rows=[2, 5])
    same(got, fitsio_read(scaled, ["x", "y"], rows=[2, 5]))
    assert tractor.fits is not None  # read by fitsio, as fitsio scales it
    tractor.close()


def test_layouts_are_told_apart(tmp_path):
    """Files whose column cards differ are read with their own layouts (the layouts are
    kept by their column cards' text), whatever was read before."""
    a = np.zeros(3, dtype=[("p", "i4"), ("q", "f4")])
    a["p"], a["q"] = [1, 2, 3], [0.5, 1.5, 2.5]
    paths = []
    for k, dt in enumerate([[("p", "i4"), ("q", "f4")], [("q", "i4"), ("p", "f4")],
                            [("p", "f4"), ("q", "i4")], [("p", "i2"), ("q", "i2"),
                                                         ("r", "i2")]]):
        path = str(tmp_path / f"t{k}.fits")
        data = np.zeros(3, dtype=dt)
        for name in data.dtype.names:
            data[name] = np.arange(3) + k
        fitsio.write(path, data, header=[{"name": "BRICK", "value": f"b{k}"}])
        paths.append(path)
    for _ in range(2):
        for path in paths:
            table = BinTable(path)
            cols = table.colnames
            same(table.read(cols), fitsio_read(path, cols))
            same(table.read(cols, rows=[2]), fitsio_read(path, cols, rows=[2]))
    # one column card changed (a TUNIT added elsewhere changes nothing)
    path = str(tmp_path / "u.fits")
    fitsio.write(path, a)
    _add_cards(path, ["TUNIT1  = 'deg     '"])
    same(BinTable(path).read(["p", "q"]), fitsio_read(path, ["p", "q"]))
    _edit_header(path, "TTYPE2", "TTYPE2  = 'Q2      '")
    table = BinTable(path)
    assert table.colnames == ["p", "Q2"]
    same(table.read(["p", "q2"]), fitsio_read(path, ["p", "q2"]))


def test_headers_longer_than_one_read(tmp_path):
    """A header of more cards than one read of the file holds (HEAD_READ), after an
    image; the same file cut inside that header, or with a non-ASCII byte in it."""
    from specprod_db.extract import fitstable
    path = str(tmp_path / "t.fits")
    data = every_type(20)
    cards = fitstable.HEAD_READ // 80 + 200
    with fitsio.FITS(path, "rw") as f:
        f.write(np.arange(3000, dtype="f8"), header=[
            {"name": f"P{i}", "value": i} for i in range(cards)])
        f.write(data, header=[{"name": f"KEY{i}", "value": f"v{i}"} for i in range(cards)])
    table = BinTable(path)
    assert table.offset > 2 * fitstable.HEAD_READ
    same(table.read(table.colnames), fitsio_read(path, table.colnames))
    same(table.read(["f8"], rows=[3, 19]), fitsio_read(path, ["f8"], rows=[3, 19]))
    raw = open(path, "rb").read()
    cut = str(tmp_path / "cut.fits")
    open(cut, "wb").write(raw[:table.offset - 2880 - 100])
    with pytest.raises(ValueError, match="inside a header"):
        BinTable(cut)
    bad = str(tmp_path / "bad.fits")
    at = raw.index(b"KEY700  = ")
    open(bad, "wb").write(raw[:at + 12] + b"\xe9" + raw[at + 13:])
    with pytest.raises(UnicodeDecodeError):
        BinTable(bad)


def test_tables_differing_in_rows_only(tmp_path):
    """Files whose headers differ only in NAXIS2 share a layout; each is read with its
    own number of rows, and a file with another column card has its own layout."""
    paths = []
    for n in (3, 8, 1):
        path = str(tmp_path / f"t{n}.fits")
        fitsio.write(path, every_type(n))
        paths.append(path)
    path = str(tmp_path / "other.fits")
    fitsio.write(path, every_type(8))
    _edit_header(path, "TTYPE3", "TTYPE3  = 'J1      '")
    paths.append(path)
    for _ in range(2):
        for path in paths:
            table = BinTable(path)
            same(table.read(table.colnames), fitsio_read(path, table.colnames))
    assert BinTable(paths[-1]).colnames[2] == "J1"
