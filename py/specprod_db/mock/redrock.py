"""Cumulative redrock files and their afterburners (datamodel.md §7); for a static
production also the HEALPix coadd redrock files (:func:`write_healpix`).

``tiles/cumulative/TILEID/LASTNIGHT/redrock-PETAL-TILEID-thruLASTNIGHT.fits`` with
REDSHIFTS, FIBERMAP, EXP_FIBERMAP, TSNR2, plus ``emline-``, ``qso_mgii-``, ``qso_qn-``
files row-matched to REDSHIFTS (required by desispec 0.70 ``read_redrock``).
Redshifts depend on (seed, TILEID, LASTNIGHT, PETAL): a new LASTNIGHT changes them.
"""
import os

import fitsio
import numpy as np

from specprod_db.mock import columns as C
from specprod_db.mock.layout import makedirs_for

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
        rz, st = _redshifts(rng, tid, rows["OBJTYPE"])
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
        _afterburners(rng, rz, st, lambda prefix: layout.tile_file(prefix, petal, tileid,
                                                                   lastnight),
                      [dict(name="SPGRP", value="cumulative"), dict(name="TILEID", value=tileid),
                       dict(name="PETAL", value=petal), dict(name="NIGHT", value=int(lastnight))])
        written.append(rr)
    return written


def _redshifts(rng, tid, objtype):
    """A REDSHIFTS HDU for targets ``tid`` (random fits); also the spectral classes."""
    n = len(tid)
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
    rz["ZWARN"][objtype == b"SKY"] |= 1                             # SKY
    rz["NPIXELS"] = 7900
    rz["NCOEFF"] = np.where(st == 2, 5, np.where(st == 1, 4, 10))
    rz["COEFF"] = rng.normal(0, 10, (n, 10)) * (np.arange(10)[None, :] < rz["NCOEFF"][:, None])
    rz["CHI2"] = rng.uniform(7000, 9000, n)
    rz["DELTACHI2"] = rng.uniform(0, 500, n)
    return rz, st


def _afterburners(rng, rz, st, path_of, header):
    """emline, qso_mgii, qso_qn files row-matched to REDSHIFTS ``rz``; ``path_of(prefix)``."""
    n, tid = len(rz), rz["TARGETID"]
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
        _write(path_of(prefix), [(data, ext)], header)


#: FIBERMAP columns a HEALPix coadd drops (desispec ``coadd_fibermap(onetile=False)``
#: removes the per-tile ones; FIRSTNIGHT/LASTNIGHT are tile-based cumulative columns).
HEALPIX_DROPPED = ("TILEID", "FIBER", "PRIORITY", "LAMBDA_REF", "FIBERASSIGN_X",
                   "FIBERASSIGN_Y", "PETAL_LOC", "DEVICE_LOC", "LOCATION", "MEAN_FIBER_X",
                   "MEAN_FIBER_Y", "FIRSTNIGHT", "LASTNIGHT")
HEALPIX_NSIDE = 64
_BITS = ("CMX_TARGET", "DESI_TARGET", "BGS_TARGET", "MWS_TARGET", "SCND_TARGET") + tuple(
    f"SV{i}_{k}_TARGET" for i in (1, 2, 3) for k in ("DESI", "BGS", "MWS", "SCND"))


def write_healpix(layout, survey, program, tile_files, seed):
    """The HEALPix coadd redrock files (and afterburners) of one survey and program.

    ``tile_files``: the cumulative redrock files of the production's tiles of that
    survey and program (their LASTNIGHT).  Each target's rows on those tiles become one
    coadd row in the nside-64 nested pixel of its TARGET_RA/DEC, as desispec coadds
    across tiles: COADD_NUMEXP/EXPTIME/NUMTILE summed, COADD_NUMNIGHT the distinct
    nights, MIN/MAX/MEAN_MJD over the exposures, COADD_FIBERSTATUS the AND, targeting
    bits the OR, TSNR2 summed, the per-tile columns dropped; EXP_FIBERMAP the tiles'
    exposure rows.  Redshifts are a new fit per (seed, survey, program, pixel).
    Returns the redrock paths written.
    """
    from specprod_db.extract.healpix import radec2pix
    parts = {"REDSHIFTS": [], "FIBERMAP": [], "EXP_FIBERMAP": [], "TSNR2": []}
    for path in tile_files:
        with fitsio.FITS(path) as f:
            for k in parts:
                parts[k].append(f[k].read())
    if not tile_files:
        return []
    fm_all = np.concatenate(parts["FIBERMAP"])
    ts_all = np.concatenate(parts["TSNR2"])
    ef_all = np.concatenate(parts["EXP_FIBERMAP"])
    order = np.argsort(fm_all["TARGETID"], kind="stable")
    fm_all, ts_all = fm_all[order], ts_all[order]
    tid_u, first, counts = np.unique(fm_all["TARGETID"], return_index=True, return_counts=True)
    fm_names = [c for c in fm_all.dtype.names if c not in HEALPIX_DROPPED]
    fm = np.zeros(len(tid_u), dtype=[(c, fm_all.dtype[c]) for c in fm_names])
    for c in fm_names:
        fm[c] = fm_all[c][first]
    for c in ("COADD_NUMEXP", "COADD_EXPTIME"):
        fm[c] = np.add.reduceat(fm_all[c], first)
    fm["COADD_NUMTILE"] = counts
    fm["COADD_FIBERSTATUS"] = np.bitwise_and.reduceat(fm_all["COADD_FIBERSTATUS"], first)
    for c in _BITS:
        if c in fm_names:
            fm[c] = np.bitwise_or.reduceat(fm_all[c], first)
    fm["MIN_MJD"] = np.minimum.reduceat(fm_all["MIN_MJD"], first)
    fm["MAX_MJD"] = np.maximum.reduceat(fm_all["MAX_MJD"], first)
    w = fm_all["COADD_NUMEXP"].astype(np.float64)
    fm["MEAN_MJD"] = np.add.reduceat(fm_all["MEAN_MJD"] * w, first) / np.maximum(
        np.add.reduceat(w, first), 1)
    pairs = np.unique(np.stack([ef_all["TARGETID"], ef_all["NIGHT"].astype(np.int64)], 1),
                      axis=0)
    nights = dict(zip(*np.unique(pairs[:, 0], return_counts=True)))
    fm["COADD_NUMNIGHT"] = [nights.get(t, 0) for t in tid_u.tolist()]
    ts = np.zeros(len(tid_u), dtype=ts_all.dtype)
    ts["TARGETID"] = tid_u
    for c in ts_all.dtype.names[1:]:
        ts[c] = np.add.reduceat(ts_all[c], first)
    pix = radec2pix(HEALPIX_NSIDE, fm["TARGET_RA"], fm["TARGET_DEC"])
    written = []
    for p in np.unique(pix).tolist():
        sel = pix == p
        rng = np.random.default_rng([int(seed), 5, int(p), len(survey), len(program),
                                     sum(map(ord, survey + program))])
        rz, st = _redshifts(rng, fm["TARGETID"][sel], fm["OBJTYPE"][sel])
        ef = ef_all[np.isin(ef_all["TARGETID"], fm["TARGETID"][sel])]
        ef = ef[np.argsort(ef["TARGETID"], kind="stable")]
        hdr = [dict(name="LONGSTRN", value="OGIP 1.0"), dict(name="RRVER", value="0.20.0"),
               dict(name="TEMNAM00", value="GALAXY"), dict(name="TEMVER00", value="2.6"),
               dict(name="TEMNAM01", value="QSO"), dict(name="TEMVER01", value="1.1"),
               dict(name="TEMNAM02", value="STAR:::K"), dict(name="TEMVER02", value="0.1"),
               dict(name="SPGRP", value="healpix"), dict(name="SPGRPVAL", value=int(p)),
               dict(name="HPXPIXEL", value=int(p)), dict(name="HPXNSIDE", value=HEALPIX_NSIDE),
               dict(name="HPXNEST", value=True), dict(name="SURVEY", value=survey),
               dict(name="PROGRAM", value=program)]
        rr = layout.healpix_file("redrock", survey, program, p)
        _write(rr, [(rz, "REDSHIFTS"), (fm[sel], "FIBERMAP"), (ef, "EXP_FIBERMAP"),
                    (ts[sel], "TSNR2")], hdr)
        _afterburners(rng, rz, st,
                      lambda prefix: layout.healpix_file(prefix, survey, program, p),
                      [dict(name="SPGRP", value="healpix"), dict(name="HPXPIXEL", value=int(p)),
                       dict(name="SURVEY", value=survey), dict(name="PROGRAM", value=program)])
        written.append(rr)
    return written
