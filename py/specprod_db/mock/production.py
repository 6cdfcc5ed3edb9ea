"""Make a mock daily production and advance it night by night.

The whole survey history lives in ``OUTDIR/mock-state.json`` (tiles, exposures,
tiles-daily lines, options); every file is a deterministic function of that state and
the seed, so ``--seed`` gives byte-identical trees and ``advance`` is reproducible.
``OUTDIR/mock-truth.json`` lists what a test should expect (see :func:`truth_entry`).
"""
import datetime
import json
import os

import numpy as np

from specprod_db.mock import exposures as X
from specprod_db.mock import fiberassign as FA
from specprod_db.mock import redrock as RR
from specprod_db.mock import sky
from specprod_db.mock import targets as TG
from specprod_db.mock import tiles as TL
from specprod_db.mock import tractor as TR
from specprod_db.mock.layout import Layout

FULL = dict(fibers=5000, radius=1.6, nights=3, targets_per_fiber=2.5)
SMALL = dict(fibers=150, radius=0.3, nights=3, targets_per_fiber=2.5)
FIRST_NIGHT = 20241030        # advancing crosses the PDT -> PST switch of 2024-11-03
TILEID_BASE = {("main", "dark"): 1000, ("main", "bright"): 20000, ("main", "backup"): 40000,
               ("main", "dark1b"): 50000, ("main", "bright1b"): 60000,
               ("sv3", "dark"): 100, ("sv3", "bright"): 400}
GOALTIME = {"dark": 1000.0, "bright": 180.0, "backup": 60.0, "dark1b": 1000.0, "bright1b": 180.0}


class Mock:
    """State + writers of one mock tree."""

    def __init__(self, outdir, state):
        self.layout = Layout(outdir, state.get("specprod"))
        self.s = state
        self._pops = {}
        self._fa = {}
        self.truth = {}

    # --- state helpers -------------------------------------------------------------
    @classmethod
    def load(cls, outdir):
        with open(Layout(outdir).state_file) as f:
            m = cls(outdir, json.load(f))
        if os.path.exists(m.layout.truth_file):
            with open(m.layout.truth_file) as f:
                m.truth = json.load(f)
        return m

    def tile(self, tileid):
        return next(t for t in self.s["tiles"] if t["tileid"] == tileid)

    def new_tile(self, survey, program, ra, dec, **special):
        key = (survey, program)
        n = sum(1 for t in self.s["tiles"] if (t["survey"], t["program"]) == key)
        tid = TILEID_BASE[key] + n
        t = dict(tileid=int(tid), survey=survey, program=program, ra=round(float(ra) % 360, 6),
                 dec=round(float(dec), 6), goaltime=GOALTIME[program], **special)
        self.s["tiles"].append(t)
        return t

    def population(self, tile):
        b = sky.bricks_in_disk(tile["ra"], tile["dec"], self.s["radius"] * 1.06)
        pops = []
        for i in range(len(b["brickid"])):
            bid = int(b["brickid"][i])
            if bid not in self._pops:
                bb = {k: v[i] for k, v in b.items()}
                self._pops[bid] = (bb, sky.brick_population(self.s["seed"], bb, self.s["density"]))
            pops.append(self._pops[bid][1])
        if str(tile["tileid"]) not in self.s["bricks"]:
            self.s["bricks"][str(tile["tileid"])] = [int(x) for x in b["brickid"]]
        return sky.concat(pops)

    # --- one night -----------------------------------------------------------------
    def design_tile(self, tile):
        pop = self.population(tile)
        fa, ut = FA.write_fiberassign(self.layout, tile, pop, self.s["fibers"], self.s["radius"])
        self._fa[tile["tileid"]] = fa
        self.truth.setdefault("tiles", {})[str(tile["tileid"])] = truth_entry(tile, pop, ut)

    def fiberassign_rows(self, tileid):
        if tileid not in self._fa:
            import fitsio
            self._fa[tileid] = fitsio.read(self.layout.fiberassign(tileid), ext="FIBERASSIGN")
        return self._fa[tileid]

    def observe(self, night, tileids, new_tiles=(), withdraw=None, dup_tiles=()):
        """Process ``night``: design new tiles, take exposures, coadd, merge tiles lines."""
        rng = np.random.default_rng([self.s["seed"], 2, night])
        for t in new_tiles:
            self.design_tile(t)
        changed = []
        for tid in tileids:
            t = self.tile(tid)
            exps = X.new_exposures(rng, t, night, self.s["next_expid"], bad=t.get("efftime_zero", False))
            self.s["next_expid"] += len(exps) + int(rng.integers(0, 3))
            self.s["exposures"].extend(exps)
            changed.append(tid)
        if withdraw is not None:
            for e in self.s["exposures"]:
                if e["tileid"] == withdraw:
                    e.update(efftime=0.0, etc=0.0, gfa=0.0)
            self.tile(withdraw)["withdrawn"] = True
            changed.append(withdraw)
        stamp = TL.updated_stamp(night, rng)
        new_lines = []
        for tid in changed:
            t = self.tile(tid)
            line = TL.tile_line(t, self.s["exposures"], stamp)
            new_lines.append(line)
            if tid in tileids:
                exps = [e for e in self.s["exposures"] if e["tileid"] == tid and
                        (e["efftime"] > 0 or t.get("efftime_zero"))]
                RR.write_tile(self.layout, t, self.fiberassign_rows(tid), exps,
                              line["LASTNIGHT"], self.s["seed"])
        lines = self.s["lines"]
        if dup_tiles:       # keep a stale copy of these tiles' current line (duplicate lines)
            lines = lines + [dict(l) for l in lines if l["TILEID"] in dup_tiles]
        self.s["lines"] = TL.merge(lines, new_lines, self.s["append_duplicates"])
        self.s["nights"].append(int(night))
        return changed

    # --- global files ----------------------------------------------------------------
    def finish(self):
        """(Re)write target catalogues, new tractor bricks, exposures, tiles, state, truth."""
        allb = sorted({b for v in self.s["bricks"].values() for b in v})
        missing = [b for b in allb if b not in self._pops]
        if missing:
            for t in self.s["tiles"]:
                if any(b in missing for b in self.s["bricks"].get(str(t["tileid"]), [])):
                    self.population(t)
        pops = []
        for bid in allb:
            bb, pop = self._pops[bid]
            TR.write_brick(self.layout, pop, bb, self.s["seed"])
            pops.append(pop)
        TG.write_all(self.layout, sky.concat(pops), self.s["seed"])
        X.write_exposures(self.layout, self.s["exposures"], self.s["tiles"])
        static = self.s.get("specprod", "daily") != "daily"
        TL.write_tiles(self.layout, self.s["lines"], csv=not static)
        if static:
            self.write_healpix()
        self.layout.write_env()
        self.truth["special"] = self.s["special"]
        self.truth["env"] = self.layout.env()
        self.truth["legacysurvey_dir"] = self.layout.legacysurvey_dir
        for path, obj in ((self.layout.state_file, self.s), (self.layout.truth_file, self.truth)):
            with open(path + ".tmp", "w") as f:
                json.dump(obj, f, indent=1, sort_keys=True)
            os.replace(path + ".tmp", path)


    def write_healpix(self):
        """A static production's HEALPix coadds, from the cumulative redrock files of
        its tiles with EFFTIME_SPEC > 0 (those a load keeps), per survey and program."""
        groups = {}
        for line in self.s["lines"]:
            if line["EFFTIME_SPEC"] <= 0:
                continue
            t = self.tile(line["TILEID"])
            files = [self.layout.tile_file("redrock", p, t["tileid"], line["LASTNIGHT"])
                     for p in range(10)]
            groups.setdefault((t["survey"], t["program"]), []).extend(
                f for f in files if os.path.exists(f))
        pixels = {}
        for (survey, program), files in sorted(groups.items()):
            written = RR.write_healpix(self.layout, survey, program, sorted(files),
                                       self.s["seed"])
            pixels[f"{survey}/{program}"] = len(written)
        self.truth["healpix"] = pixels


def truth_entry(tile, pop, ut):
    """Expected photometry source of every potential (non-sky) target of a tile.

    ``id``: LS target (RELEASE/BRICKID/BRICK_OBJID/PHOTSYS in targeting) — tractor row by
    ID (and by position); ``position``: {TARGETID: LS_ID} secondary/ToO with no
    BRICK_OBJID sitting < 0.5" from a BRICK_PRIMARY tractor source; ``targeting``: no
    LS counterpart, photometry from the targeting catalogues. ``nan_pm``: targets whose
    PMRA/PMDEC are NaN in targeting and fiberassign files.
    """
    p = sky.take(pop, ut)
    k = p["kind"]
    tid = p["targetid"]
    pos = ((k == sky.SCND) | (k == sky.TOO)) & (p["match_lsid"] > 0)
    targ = (((k == sky.SCND) | (k == sky.TOO)) & (p["match_lsid"] == 0)) | (k == sky.GAIA)
    return dict(survey=tile["survey"], program=tile["program"],
                id=sorted(int(x) for x in tid[k == sky.LS]),
                position={str(int(a)): int(b) for a, b in zip(tid[pos], p["match_lsid"][pos])},
                targeting=sorted(int(x) for x in tid[targ]),
                sky=sorted(int(x) for x in tid[k == sky.SKY]),
                nan_pm=sorted(int(x) for x in tid[(k == sky.LS) & np.isnan(p["pmra"])]))


def _options(small, fibers, radius, nights):
    base = dict(SMALL if small else FULL)
    if fibers:
        base["fibers"] = int(fibers)
    if radius:
        base["radius"] = float(radius)
    if nights:
        base["nights"] = int(nights)
    if base["fibers"] % 10 or not 10 <= base["fibers"] <= 5000:
        raise ValueError("fibers per tile must be a multiple of 10 in [10, 5000]")
    return base


def make_production(outdir, tiles=None, seed=1, small=False, fibers_per_tile=None,
                    nights=None, radius=None, append_duplicates=False, first_night=FIRST_NIGHT,
                    static=None):
    """Write a new mock production under ``outdir``; returns a summary dict.

    ``static``: the name of a static (named) production, e.g. ``'fuji'``, instead of
    ``daily``: ``tiles-NAME.fits`` (no CSV), ``exposures-NAME.fits``, the same tiles'
    cumulative redrock files and their HEALPix coadd redrock files
    (``healpix/SURVEY/PROGRAM/PIX//100/PIX/redrock-SURVEY-PROGRAM-PIX.fits``); one line
    per tile; it cannot be advanced.

    Summary keys: ``outdir``, ``tiles`` (TILEIDs in tiles-daily), ``new_tiles``,
    ``changed_tiles`` (TILEIDs with a new line on the last night), ``withdrawn``,
    ``night`` (last night), ``special`` (the special-case tiles, see mock-truth.json).
    """
    o = _options(small, fibers_per_tile, radius, nights)
    ntiles = int(tiles if tiles is not None else (6 if small else 30))
    R = o["radius"]
    state = dict(version=1, seed=int(seed), fibers=o["fibers"], radius=R,
                 density=o["targets_per_fiber"] * o["fibers"] / (np.pi * R * R),
                 append_duplicates=bool(append_duplicates), tiles=[], exposures=[], lines=[],
                 nights=[], bricks={}, next_expid=100000, special={}, small=bool(small),
                 specprod=static or "daily")
    if static is not None and (not static or static == "daily" or "/" in static):
        raise ValueError(f"a static production needs a name other than 'daily': {static!r}")
    os.makedirs(outdir, exist_ok=True)
    m = Mock(outdir, state)
    rng = np.random.default_rng([int(seed), 1])
    ra0 = float(rng.uniform(120, 240))
    dec0 = sky.NORTH_DEC
    c = R / np.cos(np.radians(dec0))
    specs = [("main", "dark", ra0, dec0 + 0.05 * R, {}),
             ("main", "dark", ra0 + 0.5 * c, dec0 + 0.2 * R,
              {"missing_petals": [3], "toostaging": True}),
             ("sv3", "dark", ra0 - 0.4 * c, dec0 - 0.3 * R, {}),
             ("main", "bright1b", ra0 + 0.1 * c, dec0 + 0.6 * R, {}),
             ("main", "backup", ra0 + 0.3 * c, dec0 - 0.5 * R, {}),
             ("main", "bright", ra0 - 0.6 * c, dec0 + 0.4 * R, {"efftime_zero": True})]
    tl = []
    for i in range(ntiles):
        if i < len(specs):
            sv, pg, ra, dec, extra = specs[i]
        else:
            sv = "sv3" if rng.uniform() < 0.15 else "main"
            pg = str(rng.choice(["dark", "bright"] if sv == "sv3" else
                                ["dark", "dark", "bright", "backup", "dark1b"]))
            if rng.uniform() < 0.6 and tl:        # overlap an existing tile
                ref = tl[int(rng.integers(0, len(tl)))]
                ra = ref["ra"] + rng.uniform(-0.8, 0.8) * R / np.cos(np.radians(ref["dec"]))
                dec = float(np.clip(ref["dec"] + rng.uniform(-0.8, 0.8) * R, -20, 70))
            else:
                ra, dec = rng.uniform(100, 260), rng.uniform(-10, 60)
            extra = {}
        tl.append(m.new_tile(sv, pg, ra, dec, **extra))
    sp = state["special"]
    names = ["north_south", "missing_petal", "sv3", "dark1b_bright1b", "backup", "efftime_zero"]
    for nm, t in zip(names, tl):
        sp[nm] = t["tileid"]
    if len(tl) > 1:
        sp["toostaging"] = tl[1]["tileid"]
        sp["overlapping"] = [tl[0]["tileid"], tl[1]["tileid"]]
    K = o["nights"]
    night = first_night
    first = {}
    for i, t in enumerate(tl):
        first.setdefault(i * K // max(ntiles, 1), []).append(t)
    for k in range(K):
        new = first.get(k, [])
        obs = [t["tileid"] for t in new]
        dup = ()
        if k == K - 1 and K > 1:
            again = [t["tileid"] for t in tl if t not in new and not t.get("efftime_zero")
                     and (t is tl[0] or rng.uniform() < 0.2)]
            obs += again
            if not append_duplicates and tl and not static:
                dup = (tl[0]["tileid"],)
                sp["duplicate_lines"] = [tl[0]["tileid"]]
        m.observe(night, obs, new_tiles=new, dup_tiles=dup)
        night = next_night(night)
    if K > 1:                       # lines written before UPDATED existed: empty
        for l in state["lines"]:
            if l["LASTNIGHT"] == first_night:
                l["UPDATED"] = ""
        sp["empty_updated"] = sorted(l["TILEID"] for l in state["lines"] if l["UPDATED"] == "")
    m.finish()
    return _summary(m, [t["tileid"] for t in tl], m.s["nights"][-1])


def next_night(night):
    d = datetime.date(night // 10000, night // 100 % 100, night % 100) + datetime.timedelta(days=1)
    return int(d.strftime("%Y%m%d"))


def advance_production(outdir, new_tiles=2, reobserve=2, withdraw=False):
    """Move the tree in ``outdir`` to the next night; returns a summary dict (see make)."""
    m = Mock.load(outdir)
    s = m.s
    if s.get("specprod", "daily") != "daily":
        raise ValueError(f"{outdir} is the static production {s['specprod']}: a static "
                         f"production is written once and never advanced")
    night = next_night(s["nights"][-1])
    rng = np.random.default_rng([s["seed"], 3, night])
    R = s["radius"]
    live = [t for t in s["tiles"] if not t.get("withdrawn") and not t.get("efftime_zero")]
    pick = [live[i] for i in rng.permutation(len(live))[:reobserve]]
    new = []
    for _ in range(new_tiles):
        ref = live[int(rng.integers(0, len(live)))] if live else dict(ra=180.0, dec=30.0)
        sv, pg = ("main", str(rng.choice(["dark", "bright", "dark1b"])))
        ra = ref["ra"] + rng.uniform(-0.9, 0.9) * R / np.cos(np.radians(ref["dec"]))
        dec = float(np.clip(ref["dec"] + rng.uniform(-0.9, 0.9) * R, -20, 70))
        new.append(m.new_tile(sv, pg, ra, dec))
    wd = None
    if withdraw:
        specials = {v for v in s["special"].values() if isinstance(v, int)}
        cands = ([t["tileid"] for t in live if t not in pick and t["tileid"] not in specials] or
                 [t["tileid"] for t in live if t not in pick and
                  t["tileid"] != s["special"].get("north_south")])
        if cands:
            wd = int(cands[int(rng.integers(0, len(cands)))])
            s["special"].setdefault("withdrawn", []).append(wd)
    obs = [t["tileid"] for t in pick] + [t["tileid"] for t in new]
    m.observe(night, obs, new_tiles=new, withdraw=wd)
    m.finish()
    sm = _summary(m, [t["tileid"] for t in new], night)
    sm["withdrawn"] = [wd] if wd is not None else []
    sm["changed_tiles"] = sorted(set(obs) | set(sm["withdrawn"]))
    return sm


def _summary(m, new, night):
    lines = m.s["lines"]
    return dict(outdir=m.layout.root, tiles=sorted({l["TILEID"] for l in lines}),
                new_tiles=sorted(new), night=int(night),
                changed_tiles=sorted({l["TILEID"] for l in lines
                                      if l["UPDATED"] and l["LASTNIGHT"] >= 0 and
                                      l["UPDATED"] == max(x["UPDATED"] for x in lines)}),
                withdrawn=[], special=dict(m.s["special"]))
