"""The Legacy Surveys DR9 brick grid (datamodel.md §5.2): the brick holding a position,
its BRICKNAME and BRICKID, computed in numpy from the 721 rows alone.

The grid is :class:`desiutil.brick.Bricks` with bricksize 0.25°: rows of constant Dec
centred on -90, -89.75, ... +90 (each covers centre ± 0.125°, clipped at the poles); row
``i`` is cut into ``NCOL[i]`` equal RA columns, an even number (1 for the polar rows) so
that no brick is wider than 0.25° on its side nearest the equator.  Names are
``RRRR[pm]DDD`` from the brick centre; BRICKIDs run from 1 at the south pole, row by row,
in increasing RA.

desiutil formats the names of all 662,174 bricks to look one up (about a second per
process); here only the bricks asked for are named.  Every floating-point step is
desiutil's, in the same order, so that results agree on brick edges too
(``tests/test_brickgrid.py`` compares every brick, the edges, the poles and RA 0/360).
Positions are taken as float64.  Differences, both where desiutil has no answer:
non-finite positions get ``b''`` and BRICKID 0 (desiutil fails or returns garbage), and a
tiny negative RA whose ``ra % 360`` rounds to 360.0 is in the last column of its row
(desiutil raises IndexError for the name and returns the next row's first BRICKID).
"""
import numpy as np

BRICKSIZE = 0.25

#: Centre Dec of each row, south to north (exact multiples of 0.25).
ROW_DEC = np.arange(-90.0, 90.0 + BRICKSIZE / 2, BRICKSIZE)
ROW_DEC[-1] = min(90.0, ROW_DEC[-1])
NROW = len(ROW_DEC)


def _ncol():
    # the widest part of a brick is at the Dec closest to the equator
    declo = np.maximum(0, np.abs(ROW_DEC) - BRICKSIZE / 2)
    n = 360 / BRICKSIZE * np.cos(np.deg2rad(declo))
    ncol = (np.ceil(n / 2) * 2).astype(np.int64)
    ncol[0] = 1
    if ROW_DEC[-1] == 90.0:
        ncol[-1] = 1
    return ncol


#: Number of bricks (RA columns) in each row.
NCOL = _ncol()
#: BRICKID of the first brick (column 0) of each row.
FIRST_ID = np.concatenate([[1], 1 + np.cumsum(NCOL)[:-1]])
#: Number of bricks of the sky (the largest BRICKID).
NBRICK = int(NCOL.sum())

_DIGITS4 = np.array([1000, 100, 10, 1])
_DIGITS3 = _DIGITS4[1:]


def row_col(ra, dec):
    """Row and column of the brick holding each (``ra``, ``dec``) (degrees, broadcast),
    and whether the position is finite: ``(row, col, ok)``, int64 arrays and a bool
    array; row 0, column 0 where not ``ok``.

    desiutil's rule: ``row = int((dec + 90 + 0.125) / 0.25)`` clipped to [0, 720],
    ``col = int((ra % 360) / 360 * NCOL[row])``.
    """
    ra, dec = np.broadcast_arrays(np.asarray(ra, dtype=np.float64),
                                  np.asarray(dec, dtype=np.float64))
    ok = np.isfinite(ra) & np.isfinite(dec)
    if not ok.all():
        ra, dec = np.where(ok, ra, 0.0), np.where(ok, dec, 0.0)
    ra = ra % 360
    # clipped before the cast: a huge |dec| would overflow int64
    row = np.clip((dec + 90.0 + BRICKSIZE / 2) / BRICKSIZE, 0, NROW - 1).astype(np.int64)
    ncol = NCOL[row]
    col = np.minimum((ra / 360.0 * ncol).astype(np.int64), ncol - 1)
    return row, col, ok


def names(row, col):
    """BRICKNAME (``S8``) of the bricks at ``row``, ``col``.

    As desiutil: the centre RA is the middle of the column's edges
    ``np.linspace(0, 360, NCOL + 1)``; ``RRRR`` = first 4 digits of
    ``'%07.0f' % (10000 * ra_centre)``, ``p`` if the centre Dec >= 0 else ``m``, ``DDD`` =
    first 3 digits of ``'%06.0f' % (10000 * |dec_centre|)``.  Both numbers have exactly
    that many digits on the grid, so the digits are ``round(x) // 1000`` (``'%.0f'`` and
    ``np.rint`` both round half to even).
    """
    row, col = np.broadcast_arrays(np.asarray(row, dtype=np.int64),
                                   np.asarray(col, dtype=np.int64))
    shape = row.shape
    row, col = row.ravel(), col.ravel()
    ncol = NCOL[row]
    step = 360.0 / ncol                           # linspace: k * step, last edge = 360
    ra1 = col * step
    ra2 = np.where(col + 1 == ncol, 360.0, (col + 1) * step)
    ra_c = 0.5 * (ra1 + ra2)
    dec_c = ROW_DEC[row]
    rrrr = np.rint(ra_c * 10000).astype(np.int64) // 1000
    ddd = np.rint(np.abs(dec_c) * 10000).astype(np.int64) // 1000
    chars = np.empty((row.size, 8), dtype=np.uint8)
    chars[:, :4] = ord("0") + rrrr[:, None] // _DIGITS4 % 10
    chars[:, 4] = np.where(dec_c >= 0, ord("p"), ord("m"))
    chars[:, 5:] = ord("0") + ddd[:, None] // _DIGITS3 % 10
    return chars.view("S8").reshape(shape)


def brickname(ra, dec):
    """BRICKNAME (``S8``) of the brick holding each (``ra``, ``dec``); ``b''`` where the
    position is not finite.  Same names as ``desiutil.brick.brickname`` (bytes, not str)."""
    row, col, ok = row_col(ra, dec)
    out = names(row, col)
    out[~ok] = b""
    return out


def brickid(ra, dec):
    """BRICKID (int64) of the brick holding each (``ra``, ``dec``); 0 where the position
    is not finite.  Same as ``desiutil.brick.Bricks().brickid``."""
    row, col, ok = row_col(ra, dec)
    return np.where(ok, FIRST_ID[row] + col, 0)
