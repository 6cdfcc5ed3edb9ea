"""The wave's photometry (:class:`specprod_db.load.photometry_rows.WavePhotometry`): one row
per TARGETID with the load's precedence, each tile's rows gathered straight from the
stage files' arrays, and ``first_per_targetid`` — checked against the plain resolution
(first row of each TARGETID in precedence order, row by row, sorted) on random stage
files and arrays, no database."""
from dataclasses import dataclass

import numpy as np

from specprod_db.load.photometry_rows import WavePhotometry, first_per_targetid
from specprod_db.schema import table as schema_table
from specprod_db.stage import StageFile


@dataclass
class _Result:
    stage: StageFile


def _rows(ids, tag):
    rows = np.zeros(len(ids), dtype=schema_table("photometry").dtype)
    rows["targetid"] = ids
    rows["ra"] = tag + np.arange(len(ids)) * 1e-3  # says which file and row it came from
    return rows


def _reference(parts, targetids):
    """Row by row, in order of precedence: the first row of each TARGETID wins (no
    numpy resolution shared with the code under test)."""
    first = {}
    for rows in parts:
        for r in rows:
            first.setdefault(int(r["targetid"]), r)
    wanted = set(int(t) for t in targetids)
    keep = [first[t] for t in sorted(first) if t in wanted]
    return np.array(keep, dtype=schema_table("photometry").dtype)


def test_first_per_targetid_equals_the_plain_resolution():
    rng = np.random.default_rng(19)
    for _ in range(30):
        pool = rng.choice(10**6, size=200, replace=False).astype(np.int64)
        parts = [_rows(rng.choice(pool, size=rng.integers(0, 80)), 10.0 * k)
                 for k in range(rng.integers(1, 5))]  # duplicates within an array too
        got = first_per_targetid(parts)
        ref = _reference(parts, pool)
        assert np.array_equal(got["targetid"], ref["targetid"])
        assert np.array_equal(got["ra"], ref["ra"])


def test_rows_for_equals_the_plain_resolution(tmp_path):
    rng = np.random.default_rng(18)
    for trial in range(20):
        pool = rng.choice(10**6, size=400, replace=False).astype(np.int64)
        parts, results = [], []
        for k in range(rng.integers(1, 6)):  # brick files, then two tile files
            ids = rng.choice(pool, size=rng.integers(0, 120), replace=False)
            parts.append(_rows(ids, 10.0 * k))
        tiles = [_rows(rng.choice(pool, size=rng.integers(0, 150), replace=False),
                       100.0 + 10 * k) for k in range(2)]
        for j, rows in enumerate(parts + tiles):
            results.append(_Result(StageFile(str(tmp_path / f"{trial}-{j}.h5")).write(
                {"photometry": rows}, key=f"{trial}-{j}")))
        wave = WavePhotometry(results[:len(parts)], results[len(parts):])
        for _ in range(5):
            want = np.unique(rng.choice(np.concatenate([pool, [-1, 2 * 10**6]]),
                                        size=rng.integers(0, 300)))
            got = wave.rows_for(want)
            ref = _reference(parts + tiles, want)
            assert np.array_equal(got["targetid"], ref["targetid"])
            assert np.array_equal(got["ra"], ref["ra"])  # the same file's row won
            assert got.dtype == schema_table("photometry").dtype
        assert len(wave.rows_for(None)) == 0
