"""rows.build: the old tool's value rules, applied column by column from the schema."""
import numpy as np
import pytest

from specprod_db.extract import rows
from specprod_db import schema

TSNR2 = {c: 0 for c in schema.FRAME.names if c.startswith("tsnr2_")}


def _frame(**over):
    cols = {"frameid": [1, 2], "night": [20240101, 20240101], "expid": [3, 3],
            "tileid": [1000, 1000], "mjd": [60000.5, np.nan], "exptime": [900.0, np.inf],
            "ebv": np.ma.array([0.1, 0.2], mask=[False, True]), "camera": ["b0", "r1"]}
    cols.update(over)
    return cols


def test_build_finitizes_and_counts():
    stats = {}
    out = rows.build("frame", _frame(), defaults=TSNR2, stats=stats)
    assert out.dtype == schema.FRAME.dtype
    assert out["mjd"].tolist() == [60000.5, -9999.0]
    assert out["exptime"].tolist() == [900.0, -9999.0]
    assert out["ebv"][1] == -9999.0 and out["ebv"][0] == pytest.approx(0.1)
    assert out["camera"].tolist() == [b"b0", b"r1"]
    assert stats["finitized"] == {"mjd": 1, "exptime": 1, "ebv": 1}


def test_build_errors_name_table_and_column():
    with pytest.raises(rows.RowError, match="frame: no value for column tsnr2_"):
        rows.build("frame", _frame())
    with pytest.raises(rows.RowError, match=r"frame.camera: value too long for VARCHAR\(2\)"):
        rows.build("frame", _frame(camera=["b0", "r10"]), defaults=TSNR2)
    with pytest.raises(rows.RowError, match="frame.expid: value out of range"):
        rows.build("frame", _frame(expid=[1, 2**40]), defaults=TSNR2)
    with pytest.raises(rows.RowError, match="frame.night: masked"):
        rows.build("frame", _frame(night=np.ma.array([1, 2], mask=[0, 1])), defaults=TSNR2)
    with pytest.raises(rows.RowError, match="frame.night: non-integer"):
        rows.build("frame", _frame(night=[1.5, 2.0]), defaults=TSNR2)


def test_finitize_keeps_dtype_and_vectors():
    data, n = rows.finitize(np.array([[np.inf, 1.0], [np.nan, 2.0]], dtype="f4"))
    assert data.dtype == np.float32 and n == 2
    assert data.tolist() == [[-9999.0, 1.0], [-9999.0, 2.0]]
    source = np.array([np.nan])
    rows.finitize(source)
    assert np.isnan(source[0])  # the input is not modified
