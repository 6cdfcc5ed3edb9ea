"""``tiles-daily.csv`` / ``tiles-daily.fits`` (datamodel.md §1).

Lines are dicts kept in the mock state. Each processed night recomputes the lines of the
tiles observed that night; they get the same new ``UPDATED`` (US/Pacific, the morning
after the night). Default: the new line replaces the tile's old line (desispec's
merge); with ``append_duplicates`` it is appended and the old line stays. Rows are then
stably sorted by LASTNIGHT. The FITS file is the CSV read back with astropy and written
with EXTNAME TILES, as desi_tsnr_afterburner does.
"""
import datetime
import os
import zoneinfo

import numpy as np
from astropy.table import Table

from specprod_db.mock import columns as C
from specprod_db.mock.layout import makedirs_for, obscon

PACIFIC = zoneinfo.ZoneInfo("America/Los_Angeles")
COLUMNS = C.names(C.TILES)


def updated_stamp(night, rng):
    """UPDATED string for the afterburner run the morning after ``night``."""
    d = datetime.date(night // 10000, night // 100 % 100, night % 100) + datetime.timedelta(days=1)
    t = datetime.datetime(d.year, d.month, d.day, 7 + int(rng.integers(0, 3)),
                          int(rng.integers(0, 60)), int(rng.integers(0, 60)), tzinfo=PACIFIC)
    return t.strftime("%Y-%m-%dT%H:%M:%S%z")


def _r1(x):
    return round(float(x), 1)


def tile_line(tile, exps, updated):
    """One tiles-daily line (dict) computed from all exposures of the tile."""
    ex = [e for e in exps if e["tileid"] == tile["tileid"]]
    eff = np.array([e["efftime"] for e in ex])
    ob = obscon(tile["program"])
    good = eff > 0
    nights = np.array([e["night"] for e in ex])
    lastnight = int(nights[good].max() if good.any() else nights.max())
    effsum = _r1(eff.sum())
    goal = float(tile["goaltime"])
    status = "obsend" if effsum > 0.9 * goal else ("obsstart" if effsum > 0 else "other")
    etc = np.array([e["etc"] for e in ex])
    gfa = np.array([e["gfa"] for e in ex])
    line = dict(
        TILEID=tile["tileid"], SURVEY=tile["survey"], PROGRAM=tile["program"],
        FAPRGRM=tile["program"], FAFLAVOR=tile["survey"] + tile["program"], NEXP=len(ex),
        EXPTIME=_r1(sum(e["exptime"] for e in ex)), TILERA=tile["ra"], TILEDEC=tile["dec"],
        EFFTIME_ETC=0.0 if np.any((etc == 0) & (eff > 0)) else _r1(etc.sum()),
        EFFTIME_SPEC=effsum,
        EFFTIME_GFA=0.0 if np.any((gfa == 0) & (eff > 0)) else _r1(gfa.sum()),
        GOALTIME=goal, OBSSTATUS=status,
        LRG_EFFTIME_DARK=_r1(eff.sum() if ob == "dark" else 0.8 * eff.sum()),
        ELG_EFFTIME_DARK=_r1(1.05 * eff.sum() if ob == "dark" else 0.8 * eff.sum()),
        BGS_EFFTIME_BRIGHT=_r1(eff.sum() if ob == "bright" else 1.2 * eff.sum()),
        LYA_EFFTIME_DARK=_r1(0.9 * eff.sum()),
        GOALTYPE=ob, MINTFRAC=0.9, LASTNIGHT=lastnight, UPDATED=updated)
    return line


def merge(lines, new_lines, append_duplicates):
    """Merge recomputed lines into the table lines; stable sort by LASTNIGHT."""
    out = list(lines)
    for nl in new_lines:
        if not append_duplicates:
            idx = [i for i, l in enumerate(out) if l["TILEID"] == nl["TILEID"]]
            if idx:
                out[idx[-1]] = nl
                continue
        out.append(nl)
    order = sorted(range(len(out)), key=lambda i: out[i]["LASTNIGHT"])
    return [out[i] for i in order]


def _fmt(v):
    if isinstance(v, float):
        return repr(v)
    return str(v)


def write_tiles(layout, lines, csv=True):
    """Write tiles-SPECPROD.csv and tiles-SPECPROD.fits (HDU TILES) from ``lines``; the
    FITS file only without ``csv`` (a static production)."""
    path = layout.tiles_csv()
    makedirs_for(path)
    with open(path + ".tmp", "w") as f:
        f.write(",".join(COLUMNS) + "\n")
        for l in lines:
            f.write(",".join(_fmt(l[c]) for c in COLUMNS) + "\n")
    t = Table.read(path + ".tmp", format="ascii.csv")
    if csv:
        os.replace(path + ".tmp", path)
    else:
        os.remove(path + ".tmp")
    t.meta["EXTNAME"] = "TILES"
    fits = layout.tiles_fits()
    t.write(fits + ".tmp", format="fits", overwrite=True)
    os.replace(fits + ".tmp", fits)
