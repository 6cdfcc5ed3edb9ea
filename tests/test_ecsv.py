"""Our ECSV reader against astropy's (what desispec's gather_targetphot uses)."""
import numpy as np
import pytest
from astropy.table import MaskedColumn, Table

from specprod_db.extract import ecsv
from specprod_db.mock import make_production


def _astropy(path):
    tab = Table.read(path, format="ascii.ecsv", guess=False)
    return {c: np.ma.filled(tab[c], 0) for c in tab.colnames}


def _same(ours, ref):
    assert list(ours) == list(ref)
    for name in ref:
        a, b = ours[name], np.asarray(ref[name])
        assert a.dtype.kind == b.dtype.kind, name
        if a.dtype.kind in "iuf":
            assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("delimiter", [" ", ","])
def test_equals_astropy_on_every_datatype(tmp_path, delimiter):
    rng = np.random.default_rng(3)
    n = 200
    t = Table()
    for dt in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"):
        info = np.iinfo(dt)
        t[dt] = rng.integers(info.min, info.max, n, dtype=dt, endpoint=True)
    t["int64"][:2] = [np.iinfo("int64").max, np.iinfo("int64").min]
    t["uint64"][0] = np.iinfo("uint64").max
    for dt in ("float16", "float32", "float64"):
        v = rng.normal(0, 1e3, n).astype(dt)
        v[:4] = [np.nan, np.inf, -np.inf, 0.1]
        t[dt] = v
    t["float32"][5] = np.float32(1.0000001)
    t["bool"] = rng.random(n) < 0.5
    t["text"] = [f"a b{i}" if i % 3 else ("" if i % 2 else 'q"uote') for i in range(n)]
    t["masked_f"] = MaskedColumn(rng.normal(size=n), mask=rng.random(n) < 0.3)
    t["masked_i"] = MaskedColumn(rng.integers(0, 100, n), mask=rng.random(n) < 0.3)
    t["masked_s"] = MaskedColumn([f"s{i}" for i in range(n)], mask=rng.random(n) < 0.3)
    t["masked_b"] = MaskedColumn(rng.random(n) < 0.5, mask=rng.random(n) < 0.3)
    t.meta["RELEASE"] = 9999
    path = tmp_path / "t.ecsv"
    t.write(path, format="ascii.ecsv", delimiter=delimiter)
    _same(ecsv.read(path), _astropy(path))
    some = ecsv.read(path, columns=["float32", "text", "absent"])
    assert list(some) == ["float32", "text"]


def test_equals_astropy_on_the_mock_too_ledgers(tmp_path):
    make_production(tmp_path / "prod", tiles=6, small=True)
    paths = sorted((tmp_path / "prod").rglob("*.ecsv"))
    assert paths
    for path in paths:
        _same(ecsv.read(path), _astropy(path))


def test_empty_table(tmp_path):
    t = Table({"TARGETID": np.zeros(0, np.int64), "RA": np.zeros(0)})
    path = tmp_path / "e.ecsv"
    t.write(path, format="ascii.ecsv")
    _same(ecsv.read(path), _astropy(path))


@pytest.mark.parametrize("text, message", [
    ("TARGETID RA\n1 2\n", "not an ECSV file"),
    ("# %ECSV 1.0\n# ---\n# meta: {a: 1}\nA\n1\n", "no 'datatype' list"),
    ("# %ECSV 1.0\n# ---\n# datatype: [{name: A, datatype: int64}\nA\n1\n",
     "YAML header cannot be parsed"),
    ("# %ECSV 1.0\n# ---\n# datatype:\n# - {name: A, datatype: int64}\nB\n1\n",
     "differ from its header"),
    ("# %ECSV 1.0\n# ---\n# datatype:\n# - {name: A, datatype: int64}\n"
     "# - {name: B, datatype: int64}\nA B\n1 2\n3\n", "data line 2 has 1 fields"),
    ("# %ECSV 1.0\n# ---\n# datatype:\n# - {name: A, datatype: int64}\nA\nx\n",
     r"column A \(int64\)"),
    ("# %ECSV 1.0\n# ---\n# datatype:\n# - {name: A, datatype: bool}\nA\nyes\n",
     "is not True or False"),
    ("# %ECSV 1.0\n# ---\n# datatype:\n# - {name: A, datatype: string, subtype: 'int64[2]'}"
     "\nA\n\"[1,2]\"\n", "subtype"),
    ("# %ECSV 1.0\n# ---\n# datatype:\n# - {name: A, datatype: int64}\n", "no line of column"),
])
def test_bad_files_say_why(tmp_path, text, message):
    path = tmp_path / "bad.ecsv"
    path.write_text(text)
    with pytest.raises(ecsv.ECSVError, match=message):
        ecsv.read(path)
