"""``fiberassign-TTTTTT.fits.gz`` files (datamodel.md §3).

A tile's positioners sit on a square grid in the tangent plane, N/10 per 36° petal
sector; each positioner reaches the targets within its patrol radius (several
potential targets per fiber, targets reachable by several fibers). Assignment is
priority-ordered, columnar, a few rounds; ~8% of fibers are reserved for sky, ~1% are
broken and ~1% stuck (negative TARGETIDs ``-(TILEID*10000 + LOCATION)``).
"""
import gzip
import os
import shutil
from functools import lru_cache

import fitsio
import numpy as np

from specprod_db.mock import columns as C
from specprod_db.mock import sky
from specprod_db.mock.layout import (SECONDARY_FILES, TARGET_DIRS, TOO_FILES,
                                     makedirs_for, obscon)
from specprod_db.mock.targets import photometry_rows, selected, target_bits

MM_PER_DEG = 256.0
DESIROOT_DESIGN = "/global/cfs/cdirs/desi"


@lru_cache(maxsize=8)
def focalplane(nfibers, radius):
    """Positioner table: dict of arrays petal, device, location, fiber, x, y (deg); grid."""
    nper = nfibers // 10
    d = radius * np.sqrt(np.pi / nfibers) * 0.97
    while True:
        m = int(np.ceil(radius / d)) + 1
        i, j = np.meshgrid(np.arange(-m, m + 1), np.arange(-m, m + 1), indexing="ij")
        i, j = i.ravel(), j.ravel()
        r = d * np.hypot(i, j)
        keep = r <= radius
        i, j, r = i[keep], j[keep], r[keep]
        petal = (np.floor(np.degrees(np.arctan2(j, i)) % 360 / 36.0)).astype(int) % 10
        counts = np.bincount(petal, minlength=10)
        if counts.min() >= nper:
            break
        d *= 0.97
    order = np.lexsort((np.arctan2(j, i), r, petal))
    sel = []
    for p in range(10):
        o = order[petal[order] == p][:nper]
        sel.append(o)
    sel = np.concatenate(sel)
    k = np.tile(np.arange(nper), 10)
    pet = np.repeat(np.arange(10), nper)
    fp = dict(petal=pet.astype(np.int16), device=k.astype(np.int32),
              location=(1000 * pet + k).astype(np.int32), fiber=(500 * pet + k).astype(np.int32),
              gi=i[sel], gj=j[sel], x=i[sel] * d, y=j[sel] * d, spacing=d, m=m)
    grid = np.full((2 * m + 1, 2 * m + 1), -1, np.int64)
    grid[fp["gi"] + m, fp["gj"] + m] = np.arange(nfibers)
    fp["grid"] = grid
    # fibre states: sky-reserved, broken, stuck (deterministic per focal plane)
    h = (fp["location"].astype(np.int64) * 2654435761) % 1000
    fp["wants_sky"] = h < 80
    fp["broken"] = (h >= 990)
    fp["stuck"] = (h >= 980) & (h < 990)
    return fp


def tangent(ra0, dec0, ra, dec):
    """Gnomonic projection (deg) of (ra, dec) about (ra0, dec0)."""
    a0, d0, a, d = map(np.radians, (ra0, dec0, ra, dec))
    cosc = np.sin(d0) * np.sin(d) + np.cos(d0) * np.cos(d) * np.cos(a - a0)
    x = np.cos(d) * np.sin(a - a0) / cosc
    y = (np.cos(d0) * np.sin(d) - np.sin(d0) * np.cos(d) * np.cos(a - a0)) / cosc
    return np.degrees(x), np.degrees(y)


def design(tile, pop, nfibers, radius):
    """Assign a tile. Returns (fp, tgt_idx, fiber_target, pairs) with indices into ``pop``.

    ``fiber_target[f]`` = index into pop of the target on fibre f, or -1.
    ``pairs`` = (target index, fibre index) of every potential assignment.
    """
    fp = focalplane(nfibers, radius)
    x, y = tangent(tile["ra"], tile["dec"], pop["ra"], pop["dec"])
    cand = selected(pop, tile["survey"], tile["program"]) & (np.hypot(x, y) < radius * 1.05)
    ci = np.where(cand)[0]
    x, y = x[ci], y[ci]
    d, m, grid = fp["spacing"], fp["m"], fp["grid"]
    gi, gj = np.rint(x / d).astype(np.int64), np.rint(y / d).astype(np.int64)
    pt, pf = [], []
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            ii, jj = gi + di + m, gj + dj + m
            ok = (ii >= 0) & (jj >= 0) & (ii < grid.shape[0]) & (jj < grid.shape[1])
            f = np.full(len(ci), -1, np.int64)
            f[ok] = grid[ii[ok], jj[ok]]
            ok &= f >= 0
            ok[ok] &= np.hypot(x[ok] - fp["x"][f[ok]], y[ok] - fp["y"][f[ok]]) < 0.75 * d
            pt.append(ci[ok])
            pf.append(f[ok])
    pt, pf = np.concatenate(pt), np.concatenate(pf)
    _, _, _, _, prio, _, _ = target_bits(pop, tile["program"])
    issky = pop["kind"] == sky.SKY
    fiber_target = np.full(nfibers, -1, np.int64)
    tdone = np.zeros(len(pop["kind"]), bool)
    usable = ~(fp["broken"] | fp["stuck"])
    for _ in range(4):
        ok = (fiber_target[pf] < 0) & usable[pf] & ~tdone[pt] & (issky[pt] == fp["wants_sky"][pf])
        t, f = pt[ok], pf[ok]
        if len(t) == 0:
            break
        o = np.lexsort((-pop["subpriority"][t], -prio[t], f))
        t, f = t[o], f[o]
        first = np.r_[True, f[1:] != f[:-1]]
        t, f = t[first], f[first]
        _, u = np.unique(t, return_index=True)
        fiber_target[f[u]] = t[u]
        tdone[t[u]] = True
    return fp, pt, pf, fiber_target


def header_cards(tile, n_toostaging=False):
    """PRIMARY/extension header keywords of a fiberassign file (§3.3)."""
    survey, program = tile["survey"], tile["program"]
    ob = obscon(program)
    root = "DESIROOT/"
    cards = [("TILEID", tile["tileid"]), ("TILERA", tile["ra"]), ("TILEDEC", tile["dec"]),
             ("FIELDROT", 0.02), ("FA_PLAN", "2022-07-01T00:00:00.000"), ("FA_HA", 0.0),
             ("FA_RUN", "2022-01-03T17:00:31+00:00"), ("FA_M_GFA", 0.4), ("FA_M_PET", 0.4),
             ("FA_M_POS", 0.05), ("REQRA", tile["ra"]), ("REQDEC", tile["dec"]),
             ("FIELDNUM", 0), ("FA_VER", "5.4.0"), ("FA_SURV", survey)]
    extra = [("FAFLAVOR", survey + program), ("DESIROOT", DESIROOT_DESIGN),
             ("GFA", root + "target/catalogs/dr9/1.1.1/gfas"),
             ("MTL", root + f"survey/ops/surveyops/trunk/mtl/{survey}/{ob}")]
    if (survey, ob) in SECONDARY_FILES:
        extra.append(("SCND", root + SECONDARY_FILES[(survey, ob)]))
        extra.append(("SCNDMTL", root + f"survey/ops/surveyops/trunk/mtl/{survey}/secondary/{ob}"))
    extra += [("SKY", root + "target/catalogs/dr9/1.1.1/skies"),
              ("SKYSUPP", root + "target/catalogs/gaiadr2/1.1.1/skies-supp"),
              ("TARG", root + TARGET_DIRS[(survey, ob)])]
    if tile.get("toostaging"):
        too = root + f"survey/ops/staging/mtl/{survey}/ToO/ToO.ecsv"
    else:
        too = root + TOO_FILES[survey]
    extra += [("TOO", too),
              ("FAARGS", f"--survey {survey} --program {program} --dr dr9"),
              ("OUTDIR", "/global/cfs/cdirs/desi/target/fiberassign/tiles/trunk"),
              ("SURVEY", survey), ("NOWTIME", "2022-01-14T10:13:28+00:00"),
              ("RUNDATE", "2022-01-03T17:00:31+00:00"), ("PMCORR", "n"),
              ("PMTIME", "2022-01-14T10:13:28+00:00"), ("FAPRGRM", program),
              ("MTLTIME", "2022-01-13T18:13:09+00:00"), ("OBSCON", "DARK|GRAY|BRIGHT|BACKUP"),
              ("GOALTIME", float(tile["goaltime"])), ("GOALTYPE", ob.upper()),
              ("EBVFAC", 1.084), ("SBPROF", "ELG" if ob == "dark" else "BGS"),
              ("MINTFRAC", 0.9), ("FASCRIPT", "fba_launch"), ("SVNDM", "138481"),
              ("SVNMTL", "1083")]
    return cards, extra


def fiberassign_rows(tile, pop, fp, fiber_target):
    """FIBERASSIGN HDU rows, one per fibre, sorted by FIBER."""
    survey = tile["survey"]
    dt = C.dtype(C.fiberassign_spec(survey))
    n = len(fiber_target)
    has = fiber_target >= 0
    idx = np.where(has, fiber_target, 0)
    p = sky.take(pop, idx)
    rows = photometry_rows(p, dt)
    desi, bgs, mws, scnd, prio, numobs, obscond = target_bits(p, tile["program"])
    bits, scndcol = C.bit_columns(survey)
    for col, v in zip(bits + [scndcol], (desi, bgs, mws, scnd)):
        rows[col] = v
    rows["PRIORITY_INIT"] = prio
    rows["NUMOBS_INIT"] = numobs
    rows["PRIORITY"] = prio
    rows["OBSCONDITIONS"] = obscond
    rows["TARGET_RA"] = p["ra"]
    rows["TARGET_DEC"] = p["dec"]
    rows["FA_TARGET"] = desi
    issky = p["kind"] == sky.SKY
    rows["FA_TYPE"] = np.where(issky, 4, np.where(p["isstd"], 3, 1))
    rows["OBJTYPE"] = np.where(issky, "SKY", "TGT")
    rows["LAMBDA_REF"] = 5400.0
    # unassigned / broken / stuck positioners: parked at the positioner
    ra_p, dec_p = untangent(tile["ra"], tile["dec"], fp["x"], fp["y"])
    blank = np.zeros(n, dtype=dt)
    rows[~has] = blank[~has]
    rows["TARGET_RA"][~has] = ra_p[~has]
    rows["TARGET_DEC"][~has] = dec_p[~has]
    rows["TARGETID"][~has] = -(tile["tileid"] * 10000 + fp["location"][~has].astype(np.int64))
    rows["FIBERSTATUS"] = np.where(fp["broken"], 5, np.where(fp["stuck"], 3,
                                                             np.where(has, 0, 1)))
    rows["PETAL_LOC"] = fp["petal"]
    rows["DEVICE_LOC"] = fp["device"]
    rows["LOCATION"] = fp["location"]
    rows["FIBER"] = fp["fiber"]
    rows["FIBERASSIGN_X"] = fp["x"] * MM_PER_DEG
    rows["FIBERASSIGN_Y"] = fp["y"] * MM_PER_DEG
    rows["PLATE_RA"] = rows["TARGET_RA"]
    rows["PLATE_DEC"] = rows["TARGET_DEC"]
    return rows


def untangent(ra0, dec0, x, y):
    """Inverse gnomonic projection (deg)."""
    x, y = np.radians(x), np.radians(y)
    a0, d0 = np.radians(ra0), np.radians(dec0)
    rho = np.hypot(x, y)
    c = np.arctan(rho)
    with np.errstate(invalid="ignore", divide="ignore"):
        dec = np.arcsin(np.cos(c) * np.sin(d0) + np.where(rho > 0, y * np.sin(c) * np.cos(d0) / rho, 0))
    ra = a0 + np.arctan2(x * np.sin(c), rho * np.cos(d0) * np.cos(c) - y * np.sin(d0) * np.sin(c))
    return np.degrees(ra) % 360, np.degrees(dec)


def write_fiberassign(layout, tile, pop, nfibers, radius):
    """Design and write one tile's fiberassign file; returns the FIBERASSIGN rows."""
    fp, pt, pf, fiber_target = design(tile, pop, nfibers, radius)
    fa = fiberassign_rows(tile, pop, fp, fiber_target)
    # TARGETS: every reachable target, unique, sorted by TARGETID
    ut = np.unique(pt)
    p = sky.take(pop, ut)
    desi, _, _, _, prio, _, obscond = target_bits(p, tile["program"])
    tg = np.zeros(len(ut), dtype=C.dtype(C.TARGETS_HDU))
    tg["TARGETID"], tg["RA"], tg["DEC"] = p["targetid"], p["ra"], p["dec"]
    tg["FA_TARGET"] = desi
    tg["FA_TYPE"] = np.where(p["kind"] == sky.SKY, 4, np.where(p["isstd"], 3, 1))
    tg["PRIORITY"], tg["SUBPRIORITY"], tg["OBSCONDITIONS"] = prio, p["subpriority"], obscond
    tg = tg[np.argsort(tg["TARGETID"])]
    pa = np.zeros(len(pt), dtype=C.dtype(C.POTENTIAL))
    pa["TARGETID"], pa["FIBER"], pa["LOCATION"] = pop["targetid"][pt], fp["fiber"][pf], fp["location"][pf]
    pa = pa[np.lexsort((pa["TARGETID"], pa["LOCATION"]))]
    skym = np.zeros(20, dtype=C.dtype(C.SKY_MONITOR))
    skym["FIBER"] = np.arange(20)
    skym["LOCATION"] = np.repeat(np.arange(10), 2) * 1000 + np.tile([541, 542], 10)
    skym["TARGET_RA"], skym["TARGET_DEC"] = tile["ra"], tile["dec"]
    skym["PETAL_LOC"] = np.repeat(np.arange(10), 2)
    gfa = np.zeros(50, dtype=C.dtype(C.GFA_TARGETS))
    gfa["TARGETID"] = np.arange(50) + 1
    gfa["TARGET_RA"], gfa["TARGET_DEC"] = tile["ra"], tile["dec"]
    gfa["URAT_ID"], gfa["URAT_SEP"] = -1, -1
    gfa["GFA_LOC"] = np.arange(50) % 10

    cards, extra = header_cards(tile)
    path = layout.fiberassign(tile["tileid"])
    makedirs_for(path)
    tmp = path[:-3] + ".tmp"
    if os.path.exists(tmp):
        os.remove(tmp)
    with fitsio.FITS(tmp, "rw", clobber=True) as f:
        f.write(None, header=[dict(name=k, value=v) for k, v in cards + extra])
        ext = [dict(name=k, value=v) for k, v in cards]
        f.write(fa, extname="FIBERASSIGN", header=ext)
        f.write(skym, extname="SKY_MONITOR", header=ext)
        f.write(gfa, extname="GFA_TARGETS", header=ext)
        f.write(tg, extname="TARGETS", header=ext)
        f.write(pa, extname="POTENTIAL_ASSIGNMENTS", header=ext)
    with open(tmp, "rb") as fin, open(path + ".tmp", "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=1, mtime=0) as gz:
            shutil.copyfileobj(fin, gz, 1 << 20)
    os.remove(tmp)
    os.replace(path + ".tmp", path)
    return fa, ut
