"""Legacy Surveys DR9 ``tractor-BRICK.fits`` files (datamodel.md §5).

One file per brick with the exact 181 DR9 columns, in order. Sources are the ``LS`` and
``LSX`` objects of the brick (BRICK_PRIMARY) plus a few non-primary sources lying just
outside the brick. Bricks of the two Dec rows touching the north/south boundary
(32.375) exist in **both** regions, as in DR9; the copy in the other region carries
that region's RELEASE.
"""
import os

import fitsio
import numpy as np

from specprod_db.mock import columns as C
from specprod_db.mock import sky
from specprod_db.mock.layout import makedirs_for

DTYPE = C.dtype(C.TRACTOR)


def tractor_rows(pop, b, release, rng):
    """Rows of one brick's tractor file (numpy structured array)."""
    m = (pop["kind"] == sky.LS) | (pop["kind"] == sky.LSX)
    n = int(m.sum())
    nextra = 3
    out = np.zeros(n + nextra, dtype=DTYPE)
    out["RELEASE"] = release
    out["BRICKID"] = b["brickid"]
    out["BRICKNAME"] = b["name"]
    out["OBJID"] = np.arange(n + nextra)
    out["OBJID"][:n] = pop["objid"][m]
    out["BRICK_PRIMARY"][:n] = True
    out["TYPE"][:n] = sky.MORPH[pop["morph"][m]]
    out["TYPE"][n:] = "PSF"
    out["RA"][:n] = pop["ra"][m]
    out["DEC"][:n] = pop["dec"][m]
    # non-primary sources: just outside the brick's unique area
    out["RA"][n:] = b["ra2"] + rng.uniform(0.001, 0.005, nextra)
    out["DEC"][n:] = rng.uniform(b["dec1"], b["dec2"], nextra)
    out["RA_IVAR"] = 1e10
    out["DEC_IVAR"] = 1e10
    out["BX"] = rng.uniform(0, 3600, n + nextra)
    out["BY"] = rng.uniform(0, 3600, n + nextra)
    out["EBV"][:n] = pop["ebv"][m]
    out["MJD_MIN"] = 56000.0
    out["MJD_MAX"] = 58500.0
    out["REF_EPOCH"] = 2015.5
    out["DCHISQ"] = rng.uniform(0, 1000, (n + nextra, 5))
    for band, key in (("G", "flux_g"), ("R", "flux_r"), ("Z", "flux_z")):
        out[f"FLUX_{band}"][:n] = pop[key][m]
        out[f"FLUX_IVAR_{band}"] = 100.0
        out[f"FIBERFLUX_{band}"][:n] = pop[key][m] * 0.6
        out[f"FIBERTOTFLUX_{band}"][:n] = pop[key][m] * 0.7
        out[f"MW_TRANSMISSION_{band}"] = 0.9
        out[f"NOBS_{band}"] = 3
        out[f"PSFSIZE_{band}"] = 1.3
        out[f"PSFDEPTH_{band}"] = 2000.0
        out[f"GALDEPTH_{band}"] = 1500.0
    for w in ("W1", "W2", "W3", "W4"):
        out[f"MW_TRANSMISSION_{w}"] = 0.99
        out[f"NOBS_{w}"] = 100
    out["WISE_COADD_ID"] = "0000p000"
    out["SHAPE_R"][:n] = np.where(pop["morph"][m] > 0, 0.8, 0.0)
    return out


def write_brick(layout, pop, b, seed, overwrite=False):
    """Write the tractor file(s) of brick ``b`` from its population; returns the paths."""
    dec_c = (b["dec1"] + b["dec2"]) / 2
    home = "north" if dec_c >= sky.NORTH_DEC else "south"
    regions = [home]
    if abs(dec_c - sky.NORTH_DEC) < 0.25:           # the two boundary rows: both regions
        regions.append("south" if home == "north" else "north")
    paths = []
    for region in regions:
        path = layout.tractor(region, str(b["name"]))
        paths.append(path)
        if os.path.exists(path) and not overwrite:
            continue
        rng = np.random.default_rng([int(seed), int(b["brickid"]), 7])
        if region == home:
            release = sky.brick_release(int(b["brickid"]), dec_c)
        else:
            release = 9011 if region == "north" else 9010
        rows = tractor_rows(pop, b, release, rng)
        makedirs_for(path)
        tmp = path + ".tmp"
        fitsio.write(tmp, rows, clobber=True)
        os.replace(tmp, path)
    return paths
