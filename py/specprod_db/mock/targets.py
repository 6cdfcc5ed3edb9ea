"""desitarget catalogues: healpix-split primary targets, secondary catalogues, ToO ledgers.

Written under ``$DESI_ROOT/target/catalogs/...`` and ``$DESI_SURVEYOPS/mtl/.../ToO``
(datamodel.md §4), from the brick populations of :mod:`.sky`.
"""
import os

import fitsio
import numpy as np
from astropy.table import Table

from specprod_db.extract.healpix import radec2pix
from specprod_db.mock import columns as C
from specprod_db.mock import sky
from specprod_db.mock.layout import (SECONDARY_FILES, TARGET_DIRS, TOO_FILES,
                                     makedirs_for, obscon)

FILENSID = 8        # nside of the file split (real DR9 files: see datamodel §11.9)
HPXNSIDE = 64       # nside of the HPXPIXEL column

# desi_mask / bgs_mask / mws_mask bits used by the mock (desitarget targetmask.yaml)
LRG, ELG, QSO, STD_FAINT, BGS_ANY, MWS_ANY, SCND_ANY = 0, 1, 2, 33, 60, 61, 62
PRIORITY = {LRG: 3200, ELG: 3000, QSO: 3400}


def selected(pop, survey, program):
    """Mask of the objects of ``pop`` that are potential targets of a tile."""
    k = pop["kind"]
    ob = obscon(program)
    if ob == "backup":
        return (k == sky.GAIA) | (k == sky.SKY)
    bit = 1 if ob == "dark" else 2
    sv = 0 if survey == "main" else 1
    return (((k == sky.LS) & ((pop["obsmask"] & bit) > 0)) |
            (((k == sky.SCND) | (k == sky.TOO)) & (pop["survey"] == sv) &
             ((pop["obsmask"] & bit) > 0)) |
            (k == sky.SKY))


def target_bits(pop, program):
    """(desi, bgs, mws, scnd, priority, numobs, obsconditions) for objects of ``pop``."""
    n = len(pop["kind"])
    k = pop["kind"]
    ob = obscon(program)
    desi = np.zeros(n, np.int64)
    bgs = np.zeros(n, np.int64)
    mws = np.zeros(n, np.int64)
    scnd = np.zeros(n, np.int64)
    prio = np.full(n, 2000, np.int64)
    tc = pop["tclass"]
    ls = k == sky.LS
    if ob == "dark":
        b = np.choose(np.clip(tc, 0, 2), [LRG, ELG, QSO])
        desi[ls] = np.int64(1) << b[ls].astype(np.int64)
        prio[ls] = np.choose(np.clip(tc, 0, 2), [3200, 3000, 3400])[ls]
        obscond = 1 | 2            # DARK|GRAY
    elif ob == "bright":
        desi[ls] = np.int64(1) << BGS_ANY
        bgs[ls] = np.where(tc[ls] % 2 == 0, 2, 1)      # BGS_BRIGHT / BGS_FAINT
        prio[ls] = np.where(tc[ls] % 2 == 0, 2100, 2000)
        obscond = 4                # BRIGHT
    else:
        obscond = 8                # BACKUP
    std = pop["isstd"]
    desi[std] |= np.int64(1) << STD_FAINT
    sc = (k == sky.SCND) | (k == sky.TOO)
    desi[sc] = np.int64(1) << SCND_ANY
    scnd[sc] = np.int64(1) << pop["scnd_bit"][sc].astype(np.int64)
    prio[sc] = 3500
    prio[k == sky.TOO] = 9900
    g = k == sky.GAIA
    desi[g] = np.int64(1) << MWS_ANY
    mws[g] = np.int64(1) << 19                         # GAIA_... backup bits
    prio[g] = 1000
    s = k == sky.SKY
    desi[s] = np.int64(1) << 32
    prio[s] = 0
    numobs = np.where(sc, 1, np.where(ls & (tc == 2), 4, 1)).astype(np.int64)
    return desi, bgs, mws, scnd, prio, numobs, np.full(n, obscond | (8 if ob == "backup" else 0), np.int64)


def photometry_rows(pop, dt):
    """Fill the targeting-photometry columns of dtype ``dt`` for objects of ``pop``."""
    n = len(pop["kind"])
    out = np.zeros(n, dtype=dt)
    names = dt.names
    isls = pop["kind"] == sky.LS
    for col, val in (("RA", pop["ra"]), ("DEC", pop["dec"]), ("TARGETID", pop["targetid"]),
                     ("FLUX_G", pop["flux_g"]), ("FLUX_R", pop["flux_r"]),
                     ("FLUX_Z", pop["flux_z"]), ("PMRA", pop["pmra"]), ("PMDEC", pop["pmdec"]),
                     ("SUBPRIORITY", pop["subpriority"])):
        if col in names:
            out[col] = val
    if "RELEASE" in names:
        out["RELEASE"] = np.where(isls, pop["release"], 0)
        out["BRICKID"] = np.where(isls | (pop["kind"] == sky.GAIA), pop["brickid"], 0)
        out["BRICKNAME"] = np.where(isls | (pop["kind"] == sky.GAIA), pop["brickname"], "")
        out["BRICK_OBJID"] = np.where(isls, pop["objid"], 0)
        out["MORPHTYPE"] = np.where(isls, sky.MORPH[pop["morph"]],
                                    np.where(pop["kind"] == sky.GAIA, "GPSF", ""))
        out["PHOTSYS"] = pop["photsys"]
        out["EBV"] = pop["ebv"]
        for b in "GRZ":
            for col, val in ((f"FLUX_IVAR_{b}", np.where(isls, 100.0, 0.0)),
                             (f"MW_TRANSMISSION_{b}", np.where(isls, 0.9, 0.0)),
                             (f"NOBS_{b}", np.where(isls, 3, 0)),
                             (f"FIBERFLUX_{b}", out[f"FLUX_{b}"] * 0.6),
                             (f"FIBERTOTFLUX_{b}", out[f"FLUX_{b}"] * 0.7)):
                if col in names:
                    out[col] = val
        out["REF_EPOCH"] = np.where(isls | (pop["kind"] == sky.GAIA), 2015.5, 0)
    if "REF_EPOCH" in names and "RELEASE" not in names:
        out["REF_EPOCH"] = 2015.5
    return out


def _write_fits(path, data, extname, header):
    makedirs_for(path)
    tmp = path + ".tmp"
    if os.path.exists(tmp):
        os.remove(tmp)
    with fitsio.FITS(tmp, "rw", clobber=True) as f:
        f.write(None)
        f.write(data, extname=extname, header=header)
        if extname == "TARGETS":
            f.write(np.zeros(1, dtype=[("FILENAME", "S88"), ("SHA256", "S64")]), extname="INFILES")
    os.replace(tmp, path)


def write_primary(layout, pop, survey, ob, seed):
    """Healpix-split primary target files for (survey, obscon); returns the file list."""
    if ob == "backup":
        m = pop["kind"] == sky.GAIA
    else:
        m = (pop["kind"] == sky.LS) & ((pop["obsmask"] & (1 if ob == "dark" else 2)) > 0)
    p = sky.take(pop, np.where(m)[0])
    spec = C.targets_spec("main" if ob == "backup" else survey)
    dt = C.dtype(spec)
    rows = photometry_rows(p, dt)
    bits, scndcol = C.bit_columns("main" if ob == "backup" else survey)
    desi, bgs, mws, scnd, prio, numobs, obscond = target_bits(p, ob)
    for col, v in zip(bits + [scndcol], (desi, bgs, mws, scnd)):
        rows[col] = v
    rows["PRIORITY_INIT"] = prio
    rows["NUMOBS_INIT"] = numobs
    rows["OBSCONDITIONS"] = obscond
    rows["HPXPIXEL"] = radec2pix(HPXNSIDE, rows["RA"], rows["DEC"])
    filepix = radec2pix(FILENSID, rows["RA"], rows["DEC"])
    order = np.lexsort((rows["TARGETID"], filepix))
    rows, filepix = rows[order], filepix[order]
    files = []
    for pix in np.unique(filepix):
        sel = rows[filepix == pix]
        hdr = [dict(name="OBSCON", value=ob.upper()), dict(name="HPXNSIDE", value=HPXNSIDE),
               dict(name="HPXNEST", value=True), dict(name="SUBPSEED", value=int(seed)),
               dict(name="SURVEY", value=survey), dict(name="RESOLVE", value=True),
               dict(name="MASKBITS", value=True), dict(name="BACKUP", value=ob == "backup"),
               (dict(name="GAIADR", value=2) if ob == "backup" else dict(name="DR", value=9)),
               dict(name="FILENSID", value=FILENSID), dict(name="FILENEST", value=True),
               dict(name="FILEHPX", value=int(pix))]
        path = layout.target_file(survey, ob, int(pix))
        _write_fits(path, sel, "TARGETS", hdr)
        files.append(path)
    return files


def write_secondary(layout, pop, survey, ob, seed):
    m = ((pop["kind"] == sky.SCND) & (pop["survey"] == (0 if survey == "main" else 1)) &
         ((pop["obsmask"] & (1 if ob == "dark" else 2)) > 0))
    p = sky.take(pop, np.where(m)[0])
    dt = C.dtype(C.secondary_spec(survey))
    rows = photometry_rows(p, dt)
    bits, scndcol = C.bit_columns(survey)
    desi, _, _, scnd, prio, numobs, obscond = target_bits(p, ob)
    rows[bits[0]] = desi
    rows[scndcol] = scnd
    rows["SCND_ORDER"] = np.arange(len(rows))
    rows["PRIORITY_INIT"] = prio
    rows["NUMOBS_INIT"] = numobs
    rows["OBSCONDITIONS"] = obscond
    rows = rows[np.argsort(rows["TARGETID"], kind="stable")]
    hdr = [dict(name="SURVEY", value=survey), dict(name="SEP", value=1.0),
           dict(name="OBSCON", value=ob.upper()), dict(name="SUBPSEED", value=int(seed)),
           dict(name="MASKED", value=True)]
    _write_fits(layout.path(SECONDARY_FILES[(survey, ob)]), rows, "SCND_TARGETS", hdr)


def write_too(layout, pop, survey):
    m = (pop["kind"] == sky.TOO) & (pop["survey"] == (0 if survey == "main" else 1))
    p = sky.take(pop, np.where(m)[0])
    dt = C.dtype(C.TOO)
    rows = photometry_rows(p, dt)
    desi, _, _, scnd, prio, numobs, _ = target_bits(p, "dark")
    rows["DESI_TARGET"] = desi
    rows["SCND_TARGET"] = scnd
    rows["PRIORITY_INIT"] = prio
    rows["NUMOBS_INIT"] = numobs
    rows["OBSCONDITIONS"] = 15
    rows["CHECKER"] = "AM"
    rows["TOO_TYPE"] = "FIBER"
    rows["TOO_PRIO"] = "HI"
    rows["OCLAYER"] = "BRIGHT"
    rows["MJD_BEGIN"] = 60000.0
    rows["MJD_END"] = 70000.0
    rows["TOOID"] = np.arange(len(rows))
    rows["TIMESTAMP"] = "2024-01-01T00:00:00+00:00"
    rows = rows[np.argsort(rows["TARGETID"], kind="stable")]
    t = Table(rows)
    for c in t.colnames:
        if t[c].dtype.kind == "S":
            t[c] = t[c].astype(str)
    t.meta["RELEASE"] = 9999
    path = layout.path(TOO_FILES[survey])
    makedirs_for(path)
    t.write(path, format="ascii.ecsv", overwrite=True)


def write_all(layout, pop, seed):
    """(Re)write every targeting catalogue from the full population ``pop``."""
    for (survey, ob) in TARGET_DIRS:
        write_primary(layout, pop, survey, ob, seed)
    for (survey, ob) in SECONDARY_FILES:
        write_secondary(layout, pop, survey, ob, seed)
    for survey in TOO_FILES:
        write_too(layout, pop, survey)
