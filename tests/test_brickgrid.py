"""specprod_db.extract.brickgrid names bricks exactly as desiutil.brick does: every brick of the
sky, random points, and points on (and one ulp either side of) every brick edge."""
import numpy as np
import pytest
from desiutil.brick import Bricks

from specprod_db.extract import brickgrid as bg


@pytest.fixture(scope="module")
def bricks():
    return Bricks(bricksize=bg.BRICKSIZE)       # about a second: once for the module


def _desiutil(bricks, ra, dec):
    """desiutil's names (as S8) and BRICKIDs."""
    return (np.atleast_1d(bricks.brickname(ra, dec)).astype("S8"),
            np.atleast_1d(bricks.brickid(ra, dec)))


def assert_same(bricks, ra, dec):
    ra, dec = np.broadcast_arrays(np.asarray(ra, float), np.asarray(dec, float))
    ra, dec = ra.ravel(), dec.ravel()
    want_name, want_id = _desiutil(bricks, ra, dec)
    got_name, got_id = bg.brickname(ra, dec), bg.brickid(ra, dec)
    assert got_name.dtype == np.dtype("S8") and got_name.shape == ra.shape
    bad = np.flatnonzero((got_name != want_name) | (got_id != want_id))
    assert bad.size == 0, [(ra[i], dec[i], got_name[i], want_name[i], got_id[i], want_id[i])
                           for i in bad[:5]]


def test_grid_is_desiutils(bricks):
    np.testing.assert_array_equal(bg.ROW_DEC, bricks._center_dec)
    np.testing.assert_array_equal(bg.NCOL, bricks._ncol_per_row)
    assert bg.NROW == 721 and bg.NBRICK == 662174
    assert bg.NCOL[0] == bg.NCOL[-1] == 1 and (bg.NCOL[1:-1] % 2 == 0).all()
    np.testing.assert_array_equal(bg.FIRST_ID, np.cumsum(np.append(0, bg.NCOL))[:-1] + 1)


def test_every_brick(bricks):
    """The name of every (row, column), and the brick of every brick centre."""
    row = np.repeat(np.arange(bg.NROW), bg.NCOL)
    col = np.arange(bg.NBRICK) - (bg.FIRST_ID[row] - 1)
    want = np.concatenate([np.asarray(n) for n in bricks._brickname]).astype("S8")
    np.testing.assert_array_equal(bg.names(row, col), want)
    ra = np.concatenate(bricks._center_ra)
    dec = bricks._center_dec[row]
    np.testing.assert_array_equal(bg.brickname(ra, dec), want)
    np.testing.assert_array_equal(bg.brickid(ra, dec), np.arange(1, bg.NBRICK + 1))
    assert len(set(want.tolist())) == bg.NBRICK           # names are unique


def test_random_points(bricks):
    rng = np.random.default_rng(20241101)
    n = 200_000
    ra = rng.uniform(0, 360, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    assert_same(bricks, ra, dec)
    # RA outside [0, 360) is taken modulo 360; Dec beyond the poles is clipped
    assert_same(bricks, rng.uniform(-1080, 1080, n), rng.uniform(-91, 91, n))
    # float32 positions (as in some catalogs) are named as their float64 values
    ra32, dec32 = ra.astype(np.float32), dec.astype(np.float32)
    np.testing.assert_array_equal(bg.brickname(ra32, dec32),
                                  bg.brickname(ra32.astype(float), dec32.astype(float)))


def _around(x):
    """``x`` and the floats just below and above it."""
    x = np.asarray(x, float)
    return np.concatenate([np.nextafter(x, -np.inf), x, np.nextafter(x, np.inf)])


def test_dec_edges_and_poles(bricks):
    edges = _around(bricks._edges_dec)                     # -90, -89.875, ..., 89.875, 90
    edges = np.concatenate([edges, [-90.125, -90.2, -95, -180, 90.125, 90.2, 95, 180]])
    ra = np.array([0.0, 1e-9, 0.125, 45.0, 90.0, 179.999, 180.0, 270.0, 359.99, 360.0,
                   720.0, -360.0])
    assert_same(bricks, ra[:, None], edges[None, :])
    # the poles are one brick each
    assert set(bg.brickname(ra, np.full(ra.shape, 90.0)).tolist()) == {b"1800p900"}
    assert set(bg.brickname(ra, np.full(ra.shape, -90.0)).tolist()) == {b"1800m900"}
    assert set(bg.brickid(ra, np.full(ra.shape, -90.0)).tolist()) == {1}
    assert set(bg.brickid(ra, np.full(ra.shape, 90.0)).tolist()) == {bg.NBRICK}


def test_ra_edges_of_every_row(bricks):
    """Every RA edge of every row (0 and 360 included), one ulp either side, at the
    row's centre Dec and on its lower and upper Dec edges (one row at a time: desiutil
    loops over the rows it is given)."""
    for i in range(bg.NROW):
        e = _around(bricks._edges_ra[i])
        e = e[e >= 0]              # a tiny negative RA: desiutil fails (below)
        ra = np.tile(e, 3)
        dec = np.repeat([bricks._center_dec[i], bricks._edges_dec[i],
                         bricks._edges_dec[i + 1]], e.size)
        # where (ra % 360) / 360 * ncol rounds up to ncol, desiutil indexes past the row
        # (IndexError); compare the others, and those are in the row's last column
        row, col, ok = bg.row_col(ra, dec)
        past = (ra % 360) / 360.0 * bg.NCOL[row] >= bg.NCOL[row]
        assert ok.all()
        assert_same(bricks, ra[~past], dec[~past])
        np.testing.assert_array_equal(col[past], bg.NCOL[row[past]] - 1)
    # 0 and 360 are the same, the first column
    assert_same(bricks, [0.0, 360.0, 720.0], [10.0, 10.0, 10.0])
    assert bg.brickname(0.0, 10.0) == bg.brickname(360.0, 10.0) == b"0001p100"


def test_tiny_negative_ra():
    """-5e-324 % 360 == 360.0: desiutil indexes past the row; here it is the row's last
    brick (a hair west of RA 0)."""
    tiny = np.nextafter(0.0, -1.0)
    assert bg.brickname(tiny, 0.0) == bg.brickname(359.99, 0.0) == b"3598p000"
    assert bg.brickid(tiny, 0.0) == bg.FIRST_ID[360] + bg.NCOL[360] - 1


def test_examples_and_shapes():
    """datamodel.md §5.2's examples; scalars and arrays of any shape."""
    assert bg.brickname(35.3339, 31.4965) == b"0352p315"
    assert bg.brickid(35.3339, 31.4965) == 503252
    assert bg.brickname(0.1, -0.2) == b"0001m002"
    assert bg.brickname(35.3339, 31.4965).shape == ()
    got = bg.brickname(np.full((2, 3), 35.3339), 31.4965)
    assert got.shape == (2, 3) and (got == b"0352p315").all()
    assert bg.brickname([], []).shape == (0,) and bg.brickid([], []).shape == (0,)


def test_non_finite(recwarn):
    ra = [np.nan, 35.3339, 1.0, np.inf, -np.inf]
    dec = [1.0, 31.4965, np.inf, 0.0, np.nan]
    assert bg.brickname(ra, dec).tolist() == [b"", b"0352p315", b"", b"", b""]
    assert bg.brickid(ra, dec).tolist() == [0, 503252, 0, 0, 0]
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
