"""Cumulative redrock files and their afterburners (datamodel.md §7).

``tiles/cumulative/TILEID/LASTNIGHT/redrock-PETAL-TILEID-thruLASTNIGHT.fits`` with
REDSHIFTS, FIBERMAP, EXP_FIBERMAP, TSNR2, plus ``emline-``, ``qso_mgii-``, ``qso_qn-``
files row-matched to REDSHIFTS (required by desispec 0.70 ``read_redrock``).
Redshifts depend on (seed, TILEID, LASTNIGHT, PETAL): a new LASTNIGHT changes them.
"""
import os

import fitsio
import numpy as np

from . import columns as C
from .layout import makedirs_for

SPECTYPES = np.array(["GALAXY", "QSO", "STAR"])


def _write(path, hdus, header=None):
    makedirs_for(path)
    tmp = path + ".tmp"
    if os.path.exists(tmp):
        os.remove(tmp)
    with fitsio.FITS(tmp, "rw", clobber=True) as f:
        f.write(None, header=header)
        for data, extname in hdus:
            f.write(data, extname=extname)
    os.replace(tmp, path)


def write_tile(layout, tile, fa, exps, lastnight, seed):
    """Write every petal's redrock + afterburner files of ``tile`` through ``lastnight``.

    ``fa`` is the FIBERASSIGN HDU of the tile; ``exps`` the tile's exposures (dicts) that
    enter the coadd. Petals in ``tile['missing_petals']`` get no files.
    """
    tileid = int(tile["tileid"])
    exps = sorted([e for e in exps if e["night"] <= lastnight], key=lambda e: e["expid"])
    survey = tile["survey"]
    fmdt = C.dtype(C.fibermap_spec(survey))
    written = []
    for petal in range(10):
        if petal in tile.get("missing_petals", []):
            continue
        rows = fa[fa["PETAL_LOC"] == petal]
        n = len(rows)
        if n == 0:
            continue
        rng = np.random.default_rng([int(seed), tileid, int(lastnight), petal])
        tid = rows["TARGETID"]
        # REDSHIFTS
        rz = np.zeros(n, dtype=C.dtype(C.REDSHIFTS))
        rz["TARGETID"] = tid
        st = rng.integers(0, 3, n)
        rz["SPECTYPE"] = SPECTYPES[st]
        rz["SUBTYPE"] = np.where(st == 2, "K", "")
        rz["Z"] = np.where(st == 0, rng.uniform(0.05, 1.6, n),
                           np.where(st == 1, rng.uniform(0.5, 4.0, n), rng.normal(0, 1e-4, n)))
        rz["ZERR"] = rng.uniform(1e-5, 1e-3, n)
        rz["ZWARN"] = np.where(rng.uniform(size=n) < 0.1, 4, 0)
        rz["ZWARN"][tid < 0] |= 1 << 7                                  # UNPLUGGED
        rz["ZWARN"][rows["OBJTYPE"] == b"SKY"] |= 1                     # SKY
        rz["NPIXELS"] = 7900
        rz["NCOEFF"] = np.where(st == 2, 5, np.where(st == 1, 4, 10))
        rz["COEFF"] = rng.normal(0, 10, (n, 10)) * (np.arange(10)[None, :] < rz["NCOEFF"][:, None])
        rz["CHI2"] = rng.uniform(7000, 9000, n)
        rz["DELTACHI2"] = rng.uniform(0, 500, n)
        # FIBERMAP (coadded)
        fm = np.zeros(n, dtype=fmdt)
        for c in fmdt.names:
            if c in rows.dtype.names:
                fm[c] = rows[c]
        fm["COADD_FIBERSTATUS"] = rows["FIBERSTATUS"]
        fm["TILEID"] = tileid
        fm["COADD_NUMEXP"] = len(exps)
        fm["COADD_EXPTIME"] = sum(e["exptime"] for e in exps)
        fm["COADD_NUMNIGHT"] = len({e["night"] for e in exps})
        fm["COADD_NUMTILE"] = 1
        mjds = np.array([e["mjd"] for e in exps])
        fm["MEAN_MJD"], fm["MIN_MJD"], fm["MAX_MJD"] = mjds.mean(), mjds.min(), mjds.max()
        fm["MEAN_FIBER_X"], fm["MEAN_FIBER_Y"] = rows["FIBERASSIGN_X"], rows["FIBERASSIGN_Y"]
        fm["MEAN_FIBER_RA"], fm["MEAN_FIBER_DEC"] = rows["TARGET_RA"], rows["TARGET_DEC"]
        fm["MEAN_PSF_TO_FIBER_SPECFLUX"] = 0.78
        fm["FIRSTNIGHT"] = min(e["night"] for e in exps)
        fm["LASTNIGHT"] = lastnight
        # EXP_FIBERMAP
        ne = len(exps)
        ef = np.zeros(n * ne, dtype=C.dtype(C.EXP_FIBERMAP))
        rep = np.tile(np.arange(n), ne)
        ei = np.repeat(np.arange(ne), n)
        for c in ("TARGETID", "PRIORITY", "SUBPRIORITY", "PETAL_LOC", "DEVICE_LOC", "LOCATION",
                  "FIBER", "FIBERSTATUS", "FIBERASSIGN_X", "FIBERASSIGN_Y", "LAMBDA_REF",
                  "PLATE_RA", "PLATE_DEC"):
            ef[c] = rows[c][rep]
        ef["NIGHT"] = np.array([e["night"] for e in exps])[ei]
        ef["EXPID"] = np.array([e["expid"] for e in exps])[ei]
        ef["MJD"] = mjds[ei]
        ef["EXPTIME"] = np.array([e["exptime"] for e in exps])[ei]
        ef["TILEID"] = tileid
        ef["NUM_ITER"] = 2
        ef["FIBER_X"], ef["FIBER_Y"] = ef["FIBERASSIGN_X"], ef["FIBERASSIGN_Y"]
        ef["FIBER_RA"], ef["FIBER_DEC"] = ef["PLATE_RA"], ef["PLATE_DEC"]
        ef["PSF_TO_FIBER_SPECFLUX"] = 0.78
        # TSNR2
        ts = np.zeros(n, dtype=C.dtype(C.TSNR2))
        ts["TARGETID"] = tid
        eff = sum(e["efftime"] for e in exps)
        for t in C.TSNR2_TRACERS:
            parts = rng.uniform(0.2, 0.4, (3, n)) * eff / 100.0 * (tid > 0)
            for b, v in zip("BRZ", parts):
                ts[f"TSNR2_{t}_{b}"] = v
            ts[f"TSNR2_{t}"] = parts.sum(axis=0)
        hdr = [dict(name="LONGSTRN", value="OGIP 1.0"), dict(name="RRVER", value="0.20.0"),
               dict(name="TEMNAM00", value="GALAXY"), dict(name="TEMVER00", value="2.6"),
               dict(name="TEMNAM01", value="QSO"), dict(name="TEMVER01", value="1.1"),
               dict(name="TEMNAM02", value="STAR:::K"), dict(name="TEMVER02", value="0.1"),
               dict(name="SPGRP", value="cumulative"), dict(name="SPGRPVAL", value=int(lastnight)),
               dict(name="TILEID", value=tileid), dict(name="SPECTRO", value=petal),
               dict(name="PETAL", value=petal), dict(name="NIGHT", value=int(lastnight))]
        rr = layout.tile_file("redrock", petal, tileid, lastnight)
        _write(rr, [(rz, "REDSHIFTS"), (fm, "FIBERMAP"), (ef, "EXP_FIBERMAP"), (ts, "TSNR2")], hdr)
        # afterburners, row-matched to REDSHIFTS
        em = np.zeros(n, dtype=C.dtype(C.EMLINE))
        em["TARGETID"] = tid
        em["OII_FLUX"] = rng.uniform(0, 20, n)
        em["OII_FLUX_IVAR"] = rng.uniform(0.1, 2, n)
        mg = np.zeros(n, dtype=C.dtype(C.MGII))
        mg["TARGETID"] = tid
        mg["IS_QSO_MGII"] = st == 1
        qn = np.zeros(n, dtype=C.dtype(C.QN))
        qn["TARGETID"] = tid
        qn["IS_QSO_QN_NEW_RR"] = (st == 1) & (rng.uniform(size=n) < 0.2)
        for c in ("C_LYA", "C_CIV", "C_CIII", "C_MgII", "C_Hbeta", "C_Halpha"):
            qn[c] = rng.uniform(0, 1, n)
        qn["Z_NEW"] = np.where(qn["IS_QSO_QN_NEW_RR"], rz["Z"], 0)
        qn["SPECTYPE_NEW"] = np.where(qn["IS_QSO_QN_NEW_RR"], "QSO", "")
        for prefix, data, ext in (("emline", em, "EMLINEFIT"), ("qso_mgii", mg, "MGII"),
                                  ("qso_qn", qn, "QN_RR")):
            _write(layout.tile_file(prefix, petal, tileid, lastnight), [(data, ext)],
                   [dict(name="SPGRP", value="cumulative"), dict(name="TILEID", value=tileid),
                    dict(name="PETAL", value=petal), dict(name="NIGHT", value=int(lastnight))])
        written.append(rr)
    return written
