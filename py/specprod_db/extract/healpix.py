"""Nested HEALPix pixel numbers in numpy (no healpy at run time).

Used to find the healpix-split desitarget files that hold a tile's targets (the loader)
and to write them (the mock production); equal to ``healpy.ang2pix(..., nest=True)``
(``desimodel.footprint.radec2pix``), as the tests check.
"""
import numpy as np


def radec2pix(nside, ra, dec):
    """Nested HEALPix pixel of (``ra``, ``dec``) in degrees, as healpy computes it.

    ``healpy.ang2pix(nside, radians(90 - dec), radians(ra), nest=True)`` (which is
    ``desimodel.footprint.radec2pix``), transcribed from HEALPix C++ ``loc2pix``.
    """
    nside = int(nside)
    if nside < 1 or nside & (nside - 1):
        raise ValueError(f"nside must be a power of 2, got {nside}")
    order = nside.bit_length() - 1
    theta = np.radians(90 - np.asarray(dec, dtype=np.float64))
    phi = np.radians(np.asarray(ra, dtype=np.float64))
    theta, phi = np.broadcast_arrays(np.atleast_1d(theta), np.atleast_1d(phi))
    z = np.cos(theta)
    za = np.abs(z)
    tt = np.mod(phi * 0.6366197723675813430755350534900574, 4.0)
    face = np.empty(z.shape, dtype=np.int64)
    ix = np.empty(z.shape, dtype=np.int64)
    iy = np.empty(z.shape, dtype=np.int64)

    eq = za <= 2.0 / 3.0
    t1 = nside * (0.5 + tt[eq])
    t2 = nside * (z[eq] * 0.75)
    jp = (t1 - t2).astype(np.int64)
    jm = (t1 + t2).astype(np.int64)
    ifp, ifm = jp >> order, jm >> order
    face[eq] = np.where(ifp == ifm, ifp | 4, np.where(ifp < ifm, ifp, ifm + 8))
    ix[eq] = jm & (nside - 1)
    iy[eq] = nside - (jp & (nside - 1)) - 1

    po = ~eq
    ntt = np.minimum(3, tt[po].astype(np.int64))
    tp = tt[po] - ntt
    zp, zap, thp = z[po], za[po], theta[po]
    have_sth = (thp < 0.01) | (thp > 3.14159 - 0.01)
    tmp = np.where((zap < 0.99) | ~have_sth, nside * np.sqrt(3 * (1 - zap)),
                   nside * np.sin(thp) / np.sqrt((1.0 + zap) / 3.0))
    jp = np.minimum((tp * tmp).astype(np.int64), nside - 1)
    jm = np.minimum(((1.0 - tp) * tmp).astype(np.int64), nside - 1)
    north = zp >= 0
    face[po] = np.where(north, ntt, ntt + 8)
    ix[po] = np.where(north, nside - jm - 1, jp)
    iy[po] = np.where(north, nside - jp - 1, jm)
    return (face << (2 * order)) + _spread(ix) + (_spread(iy) << 1)


def _spread(v):
    """Interleave a zero bit after each bit of ``v`` (< 2**30)."""
    v = v & 0x3FFFFFFF
    for shift, mask in ((16, 0x0000FFFF0000FFFF), (8, 0x00FF00FF00FF00FF),
                        (4, 0x0F0F0F0F0F0F0F0F), (2, 0x3333333333333333),
                        (1, 0x5555555555555555)):
        v = (v | (v << shift)) & mask
    return v
