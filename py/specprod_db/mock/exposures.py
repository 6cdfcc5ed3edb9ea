"""Exposures of the mock survey and ``exposures-daily.fits`` (datamodel.md §2).

An exposure is a small dict kept in the mock state (JSON); everything written to the
EXPOSURES and FRAMES HDUs is derived from it deterministically.
"""
import datetime
import os

import fitsio
import numpy as np

from specprod_db.mock import columns as C
from specprod_db.mock.layout import makedirs_for, obscon

CAMERAS = [f"{b}{p}" for p in range(10) for b in "brz"]


def night_to_mjd(night):
    d = datetime.date(night // 10000, night // 100 % 100, night % 100)
    return (d - datetime.date(1858, 11, 17)).days + 1.15     # ~03:36 UTC, i.e. evening in Arizona


def new_exposures(rng, tile, night, first_expid, bad=False):
    """1–3 exposures of ``tile`` on ``night`` (``bad``: never processed, EFFTIME_SPEC 0)."""
    ob = obscon(tile["program"])
    nexp = int(rng.integers(1, 4))
    base = {"dark": 1000.0, "bright": 300.0, "backup": 120.0}[ob]
    exps = []
    for k in range(nexp):
        exptime = round(float(base * rng.uniform(0.8, 1.2)), 1)
        eff = 0.0 if bad else round(float(exptime * rng.uniform(0.3, 0.7)), 3)
        exps.append(dict(expid=first_expid + k, night=int(night), tileid=int(tile["tileid"]),
                         mjd=night_to_mjd(night) + 0.015 * k, exptime=exptime, efftime=eff,
                         etc=round(eff * float(rng.uniform(0.9, 1.1)), 3),
                         gfa=round(eff * float(rng.uniform(0.9, 1.1)), 3),
                         airmass=0.0 if bad else round(float(rng.uniform(1.0, 1.6)), 3),
                         seeing=0.0 if bad else round(float(rng.uniform(0.8, 1.6)), 3),
                         ebv=round(float(rng.uniform(0.01, 0.1)), 4),
                         missing_petals=list(tile.get("missing_petals", []))))
    return exps


def exposure_rows(exps, tiles):
    """EXPOSURES HDU rows (sorted by EXPID)."""
    exps = sorted(exps, key=lambda e: e["expid"])
    tmap = {t["tileid"]: t for t in tiles}
    dt = C.dtype(C.EXPOSURES)
    rows = np.zeros(len(exps), dtype=dt)
    for name, key in (("NIGHT", "night"), ("EXPID", "expid"), ("TILEID", "tileid"),
                      ("MJD", "mjd"), ("EXPTIME", "exptime"), ("EFFTIME_SPEC", "efftime"),
                      ("AIRMASS", "airmass"), ("EBV", "ebv"), ("SEEING_ETC", "seeing"),
                      ("EFFTIME_ETC", "etc"), ("EFFTIME_GFA", "gfa")):
        rows[name] = [e[key] for e in exps]
    t = [tmap[e["tileid"]] for e in exps]
    rows["TILERA"] = [x["ra"] for x in t]
    rows["TILEDEC"] = [x["dec"] for x in t]
    rows["SURVEY"] = [x["survey"] for x in t]
    rows["PROGRAM"] = [x["program"] for x in t]
    rows["FAPRGRM"] = [x["program"] for x in t]
    rows["FAFLAVOR"] = [x["survey"] + x["program"] for x in t]
    rows["GOALTIME"] = [x["goaltime"] for x in t]
    goal = np.array([obscon(x["program"]) for x in t])
    rows["GOALTYPE"] = goal
    rows["MINTFRAC"] = 0.9
    eff = rows["EFFTIME_SPEC"]
    rows["LRG_EFFTIME_DARK"] = np.where(goal == "dark", eff, eff * 0.8)
    rows["ELG_EFFTIME_DARK"] = np.where(goal == "dark", eff * 1.05, eff * 0.8)
    rows["LYA_EFFTIME_DARK"] = eff * 0.9
    rows["BGS_EFFTIME_BRIGHT"] = np.where(goal == "bright", eff, eff * 1.2)
    rows["GPB_EFFTIME_DARK"] = eff
    rows["GPB_EFFTIME_BRIGHT"] = eff
    rows["GPB_EFFTIME_BACKUP"] = eff
    for tr, f in (("ELG", 0.2), ("QSO", 0.05), ("LRG", 0.15), ("LYA", 0.3), ("BGS", 3.0),
                  ("GPBDARK", 0.5), ("GPBBRIGHT", 1.2), ("GPBBACKUP", 2.0)):
        rows[f"TSNR2_{tr}"] = eff * f
    bad = rows["AIRMASS"] == 0
    for c in ("TRANSPARENCY_GFA", "FIBER_FRACFLUX_GFA", "FIBER_FRACFLUX_ELG_GFA",
              "FIBER_FRACFLUX_BGS_GFA", "FIBERFAC_GFA", "FIBERFAC_ELG_GFA", "FIBERFAC_BGS_GFA"):
        rows[c] = np.where(bad, 0.0, 0.9)
    rows["SEEING_GFA"] = rows["SEEING_ETC"]
    rows["AIRMASS_GFA"] = rows["AIRMASS"]
    rows["SKY_MAG_AB_GFA"] = np.where(bad, 0.0, 20.5)
    for b, v in (("G", 21.8), ("R", 20.9), ("Z", 19.8)):
        rows[f"SKY_MAG_{b}_SPEC"] = np.where(bad, np.nan, v)
    rows["EFFTIME_DARK_GFA"] = rows["EFFTIME_GFA"]
    rows["EFFTIME_BRIGHT_GFA"] = rows["EFFTIME_GFA"]
    rows["EFFTIME_BACKUP_GFA"] = rows["EFFTIME_GFA"]
    return rows


def frame_rows(exps, tiles):
    """FRAMES HDU rows: one per exposure x camera present, sorted by 'EXPID-CAMERA'."""
    er = exposure_rows(exps, tiles)
    exps = sorted(exps, key=lambda e: e["expid"])
    keys, src, cams = [], [], []
    for i, e in enumerate(exps):
        for cam in CAMERAS:
            if int(cam[1]) in e["missing_petals"]:
                continue
            keys.append(f"{e['expid']}-{cam}")
            src.append(i)
            cams.append(cam)
    order = np.argsort(np.array(keys), kind="stable")
    src, cams = np.array(src, dtype=np.int64)[order], np.array(cams)[order]
    fr = np.zeros(len(src), dtype=C.dtype(C.FRAMES))
    for name in fr.dtype.names:
        if name in er.dtype.names:
            fr[name] = er[name][src]
    fr["CAMERA"] = cams
    for tr in ("GPBDARK", "ELG", "GPBBRIGHT", "LYA", "BGS", "GPBBACKUP", "QSO", "LRG"):
        fr[f"TSNR2_{tr}"] = er[f"TSNR2_{tr}"][src] / 3.0
    fr["TSNR2_ALPHA"] = np.where(er["EFFTIME_SPEC"][src] > 0, 0.95, 0.0)
    return fr


def write_exposures(layout, exps, tiles):
    path = layout.exposures_fits()
    makedirs_for(path)
    tmp = path + ".tmp"
    with fitsio.FITS(tmp, "rw", clobber=True) as f:
        f.write(None)
        f.write(exposure_rows(exps, tiles), extname="EXPOSURES")
        f.write(frame_rows(exps, tiles), extname="FRAMES")
    os.replace(tmp, path)
