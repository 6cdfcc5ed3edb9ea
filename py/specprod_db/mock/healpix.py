"""Nested HEALPix ``ang2pix`` in numpy (no healpy at run time).

Same result as ``healpy.ang2pix(nside, ra, dec, nest=True, lonlat=True)`` and
``desimodel.footprint.radec2pix``; checked against healpy in the tests.
"""
import numpy as np


def _spread_bits(v):
    """Interleave zeros between the bits of ``v`` (v < 2**29)."""
    v = v.astype(np.int64)
    out = np.zeros_like(v)
    for b in range(30):
        out |= ((v >> b) & 1) << (2 * b)
    return out


def radec2pix(nside, ra, dec):
    """Nested pixel number(s) of (ra, dec) in degrees at ``nside`` (a power of 2)."""
    ra = np.atleast_1d(np.asarray(ra, dtype=np.float64))
    dec = np.atleast_1d(np.asarray(dec, dtype=np.float64))
    z = np.sin(np.radians(dec))
    za = np.abs(z)
    tt = np.mod(np.radians(ra), 2 * np.pi) / (np.pi / 2)   # in [0, 4)
    nside = int(nside)
    face = np.zeros(ra.shape, dtype=np.int64)
    ix = np.zeros(ra.shape, dtype=np.int64)
    iy = np.zeros(ra.shape, dtype=np.int64)

    eq = za <= 2.0 / 3.0
    t1 = nside * (0.5 + tt[eq])
    t2 = nside * z[eq] * 0.75
    jp = (t1 - t2).astype(np.int64)
    jm = (t1 + t2).astype(np.int64)
    ifp = jp // nside
    ifm = jm // nside
    face[eq] = np.where(ifp == ifm, ifp | 4, np.where(ifp < ifm, ifp, ifm + 8))
    ix[eq] = jm & (nside - 1)
    iy[eq] = nside - (jp & (nside - 1)) - 1

    po = ~eq
    ntt = np.minimum(3, tt[po].astype(np.int64))
    tp = tt[po] - ntt
    tmp = nside * np.sqrt(3 * (1 - za[po]))
    jp = np.minimum((tp * tmp).astype(np.int64), nside - 1)
    jm = np.minimum(((1.0 - tp) * tmp).astype(np.int64), nside - 1)
    north = z[po] >= 0
    face[po] = np.where(north, ntt, ntt + 8)
    ix[po] = np.where(north, nside - jm - 1, jp)
    iy[po] = np.where(north, nside - jp - 1, jm)

    return face * nside * nside + _spread_bits(ix) + (_spread_bits(iy) << 1)
