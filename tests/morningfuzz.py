"""A differential fuzzer of daily mornings: after any morning, the schema equals a fresh
load of the same tree by the same version, or the run says which tiles it held back.

How it works (``tests/test_fuzz.py`` runs a few seeds, ``bench/fuzz.py`` many):

1. A seed makes a small mock production (``make_production(small=True, seed=SEED)``,
   6 tiles of 150 fibres with every special case) and loads it into schema A.
2. Each *morning* (step) draws 1-3 random changes from everything a real daily tree
   does (:data:`KINDS`): new and re-observed tiles (``advance_production``); new lines
   for known tiles with a field changed (SURVEY, PROGRAM, FAPRGRM, LASTNIGHT forwards and
   backwards, EFFTIME_SPEC to 0 and back, UPDATED in other time zones, exact and stale
   duplicates); tiles leaving the file and returning; re-reduced tiles (a new LASTNIGHT
   directory, petals dropped or added, redrock rows changed, an afterburner file gone);
   exposures added, withdrawn and restored; fiberassign files rewritten or touched;
   damaged files (a truncated FITS file, a tiles line cut or holding a bad value, a NaN
   exposure, a LASTNIGHT directory holding another tile's files) and their repair.
   Files are written with the mock's writers or fitsio, so DESI's readers read every
   well-formed one. Each change is drawn as a concrete JSON *spec* (``{"kind": ...}``)
   and then applied, so a morning can be replayed, shrunk, and kept as a regression
   test (:data:`tests.test_fuzz.KNOWN`) without the random generator.
3. The morning's load runs as the operator runs it (``mpiexec -n RANKS specprod-db
   load``, the same stage directory every morning) into A; a refused mass delete is
   checked to have written nothing and is run again with ``--allow-mass-delete``, as an
   operator would. Then a fresh schema B gets ``init`` and a 1-rank load of the same
   tree, and every data table of A and B is compared row for row, every column
   (``tile_state``, ``load_run`` and ``tile_history`` aside: they are the runs' own
   bookkeeping).

The rule of comparison
----------------------
*Held back* by a run: the tiles its ``tile_history`` records for that run as
``failed``, ``internal_error`` or ``skipped`` (a delete suspended by a damaged tiles
file, refused by a guard), each with its reason. H_A is A's morning run's set, H_B the
fresh load's.

* A exits 0: H_A must be empty, and A equals B exactly.
* A exits 1: every tile of H_A is named (its TILEID in the run's stdout or stderr) with
  a non-empty reason; exit 1 with nothing held back is allowed only when the run
  reports a damaged tiles file (a bad line whose TILEID cannot be read). The same two
  rules hold for the fresh load B.
* A exits 2 (the run refused to start): A must be unchanged from the morning before and
  the refusal said on stderr; B is not loaded (nothing to compare with a run that did
  nothing).
* Any other exit (3 database lost, 4 a bug, a signal), or an ``internal_error`` tile in
  A or in B, is a finding.
* A fresh load of a damaged tree fails the damaged tiles too, and holds no rows for
  them, while A keeps their older rows (or, for a SKIP, rows it was told to delete). So
  the tables are compared restricted to the tiles outside X = H_A | H_B: per-tile
  tables without the rows of X; ``photometry`` without the TARGETIDs referenced only by
  X tiles' rows (in A or B); the primary-spectrum columns (``*_nspec``, ``*_primary``)
  of ``ztile`` rows whose TARGETID also has a ztile row on an X tile are not compared
  (they count the held-back tile's rows).
* A tile in H_B but not in H_A whose rows differ is a finding (the incremental run kept
  or loaded rows a fresh load refuses, and said nothing), except when the fresh load's
  reason names a Legacy Surveys or targeting-catalog file: those the planner does not
  watch by design (doc/daily.md), so A's rows were read while the file was whole.
* A tile in H_A but not in H_B (the incremental run fails what a fresh load loads) is
  reported as a note (``asymmetric``), not a divergence: the invariant allows it, but it
  is worth a look.
* Not differential, but checked on the way: after a run that exits 0 on a tree without
  damage, ``specprod-db verify`` of its schema finds nothing; a tiles file with a bad
  line never gives exit 0; an exposure whose EFFTIME_SPEC is NaN is never left out
  without its EXPID in the log.

A divergence prints the seed, the morning, the specs applied so far and the first
differing rows per table, only the differing columns; :func:`shrink` removes specs while
the divergence persists. Reproduce: ``pytest tests/test_fuzz.py --fuzz-seed=S
[--fuzz-steps N] [--fuzz-ranks R]`` or ``bench/fuzz.py --seed S``.
"""
import datetime as _dt
import glob
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import zoneinfo
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import CLI, dump_schema, mock_env  # noqa: E402

PACIFIC = zoneinfo.ZoneInfo("America/Los_Angeles")
LOAD_TIMEOUT = 300
PROGRAMS = ["dark", "bright", "backup", "dark1b", "bright1b"]
SURVEYS = ["main", "sv3", "sv1", "special", "cmx"]
PRIMARY_COLUMNS = ("sv_nspec", "sv_primary", "main_nspec", "main_primary", "zcat_nspec",
                   "zcat_primary")
#: Tables whose rows name a TARGETID that needs a photometry row.
TARGETID_TABLES = ("fiberassign", "potential", "target", "ztile", "zpix")
#: Inputs the planner does not watch (doc/daily.md): a fresh load may fail on them.
UNWATCHED = ("legacysurvey", "/target/catalogs/")
OFFSETS = [None, None, None, 0, -5, 9, 5.5, -3]      # None: US/Pacific (DESI's)


# --- the tree ---------------------------------------------------------------------------

def _parse_updated(value):
    """For choosing a tile's current line only (the loader has its own parser)."""
    value = (value or "").strip()
    for fmt in ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S.%f%z"):
        try:
            return _dt.datetime.strptime(value, fmt)
        except ValueError:
            pass
    return _dt.datetime.min.replace(tzinfo=_dt.timezone.utc)


def winner(lines: list, tileid: int) -> int | None:
    """Index of a tile's winning line (latest UPDATED, ties: the last), else None."""
    best = None
    for i, line in enumerate(lines):
        if line["TILEID"] == tileid:
            key = _parse_updated(line.get("UPDATED", ""))
            if best is None or key >= best[0]:
                best = (key, i)
    return None if best is None else best[1]


def stamp(when: _dt.datetime, offset: float | None) -> str:
    """``when`` (aware) as an UPDATED string in US/Pacific (``offset`` None) or at a UTC
    offset of ``offset`` hours."""
    tz = PACIFIC if offset is None else _dt.timezone(_dt.timedelta(hours=offset))
    return when.astimezone(tz).strftime("%Y-%m-%dT%H:%M:%S%z")


class NoOp(Exception):
    """A spec that cannot apply to the tree as it is (it does nothing)."""


def _sha(data):
    return hashlib.sha256(data).hexdigest()


class Tree:
    """A mock tree under ``root`` and what the fuzzer did to it: ``journal`` maps each
    damaged file (path relative to ``root``) to its whole bytes and the damaged bytes'
    hash, so :meth:`apply` can repair it and knows when a writer already has."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.journal = {}
        self.clock = None

    # -- mock state helpers
    def mock(self):
        from specprod_db.mock.production import Mock
        return Mock.load(self.root)

    def save(self, m):
        path = m.layout.state_file
        with open(path + ".tmp", "w") as f:
            json.dump(m.s, f, indent=1, sort_keys=True)
        os.replace(path + ".tmp", path)

    def abspath(self, rel):
        return os.path.join(self.root, rel)

    def rel(self, path):
        return os.path.relpath(path, self.root)

    def tick(self, rng_or_minutes, lines=None):
        """The next UPDATED instant: a few minutes after the latest of the tiles file."""
        latest = max([_parse_updated(l.get("UPDATED", "")) for l in (lines or [])]
                     + ([self.clock] if self.clock else [])
                     + [_dt.datetime(2024, 10, 31, 8, tzinfo=PACIFIC)])
        minutes = (rng_or_minutes if isinstance(rng_or_minutes, (int, float))
                   else int(rng_or_minutes.integers(1, 30)))
        self.clock = latest + _dt.timedelta(minutes=minutes)
        return self.clock

    def refresh_journal(self):
        """Forget damages a writer has since overwritten (the file's bytes moved)."""
        for rel in list(self.journal):
            path = self.abspath(rel)
            try:
                with open(path, "rb") as f:
                    now = _sha(f.read())
            except FileNotFoundError:
                now = None                  # a file removed on purpose: bad is None
            except OSError:
                now = "unreadable"
            if now != self.journal[rel]["bad"]:
                del self.journal[rel]

    def damage(self, rel, bad_bytes, **what):
        """Write ``bad_bytes`` over ``rel``, keeping its whole bytes to repair it;
        ``what`` (kind, expid ...) is kept for the checks of :func:`morning_check`."""
        path = self.abspath(rel)
        kinds = []
        if rel in self.journal:                     # keep the whole bytes of the first
            orig = self.journal[rel]["orig"]
            kinds = self.journal[rel]["what"]
        else:
            with open(path, "rb") as f:
                orig = f.read()
        if bad_bytes is None:               # the file removed
            os.remove(path)
        else:
            tmp = path + ".fuzz-tmp"
            with open(tmp, "wb") as f:
                f.write(bad_bytes)
            os.replace(tmp, path)
        self.journal[rel] = dict(orig=orig, bad=None if bad_bytes is None else _sha(bad_bytes),
                                 bad_bytes=bad_bytes, what=kinds + ([what] if what else []))

    def damages(self) -> list:
        """``[(file, what)]`` of the damages in place now (a bad tiles line only while
        the file still holds it: a later cut may have taken it away)."""
        self.refresh_journal()
        out = []
        for rel, ent in sorted(self.journal.items()):
            for w in ent["what"]:
                if w.get("kind") == "tiles":
                    text = (ent["bad_bytes"] or b"").decode("utf-8", "replace")
                    if "tail" in w and not (text.endswith(w["tail"]) and
                                            not text.endswith("\n")):
                        continue
                    if "line" in w and w["line"] not in text.split("\n"):
                        continue
                out.append((rel, w))
        return out

    def restore(self, rel):
        ent = self.journal.pop(rel)
        path = self.abspath(rel)
        tmp = path + ".fuzz-tmp"
        with open(tmp, "wb") as f:
            f.write(ent["orig"])
        os.replace(tmp, path)

    def fiberassign_rows(self, m, tileid):
        rel = self.rel(m.layout.fiberassign(tileid))
        import fitsio
        if rel in self.journal:
            tmp = self.abspath(rel) + ".fuzz-read.fits.gz"
            with open(tmp, "wb") as f:
                f.write(self.journal[rel]["orig"])
            try:
                return fitsio.read(tmp, ext="FIBERASSIGN")
            finally:
                os.remove(tmp)
        return fitsio.read(self.abspath(rel), ext="FIBERASSIGN")

    def write_tiles(self, m):
        """tiles-daily.csv from the state's lines (the FITS copy too when astropy can
        read the CSV back, as the mock does)."""
        from specprod_db.mock import tiles as TL
        try:
            TL.write_tiles(m.layout, m.s["lines"])
        except Exception:           # a value astropy cannot type: the CSV alone
            path = m.layout.tiles_csv()
            with open(path + ".tmp", "w") as f:
                f.write(",".join(TL.COLUMNS) + "\n")
                for l in m.s["lines"]:
                    f.write(",".join(TL._fmt(l[c]) for c in TL.COLUMNS) + "\n")
            os.replace(path + ".tmp", path)

    def write_exposures(self, m):
        from specprod_db.mock import exposures as X
        X.write_exposures(m.layout, m.s["exposures"], m.s["tiles"])

    def tile_exposures(self, m, tid):
        t = m.tile(tid)
        return [e for e in m.s["exposures"] if e["tileid"] == tid and
                (e["efftime"] > 0 or t.get("efftime_zero"))]

    def petal_files(self, m, tid, night, petal):
        d = m.layout.cumulative_dir(tid, night)
        return sorted(glob.glob(os.path.join(d, f"*-{petal}-{tid}-thru{night}.fits")))

    def broken_tiles(self, m):
        """Tiles whose winning line names a LASTNIGHT directory without redrock files
        of the tile (a line moved to a night not reduced, a foreign directory)."""
        out = []
        for tid in sorted({l["TILEID"] for l in m.s["lines"]}):
            line = m.s["lines"][winner(m.s["lines"], tid)]
            night = line["LASTNIGHT"]
            if isinstance(night, int) and float(line["EFFTIME_SPEC"]) > 0 and \
                    any(e["tileid"] == tid for e in m.s["exposures"]) and \
                    not self.present_petals(m, tid, night):
                out.append(tid)
        return out

    def nights_of(self, m, tid):
        """The tile's cumulative directories (nights), sorted."""
        top = os.path.dirname(m.layout.cumulative_dir(tid, 0))
        return sorted(int(x) for x in os.listdir(top) if x.isdigit()) \
            if os.path.isdir(top) else []

    def present_petals(self, m, tid, night):
        return [p for p in range(10)
                if os.path.exists(m.layout.tile_file("redrock", p, tid, night))]

    def write_redrock(self, m, tid, night, seed, petals=None):
        """The tile's redrock (+ afterburner) files in ``night``'s directory, for
        ``petals`` (default: those present now, else the tile's own)."""
        from specprod_db.mock import redrock as RR
        t = dict(m.tile(tid))
        if petals is None:
            petals = self.present_petals(m, tid, night) or [
                p for p in range(10) if p not in t.get("missing_petals", [])]
        t["missing_petals"] = [p for p in range(10) if p not in petals]
        exps = [e for e in self.tile_exposures(m, tid) if e["night"] <= night]
        if not exps:
            exps = [e for e in m.s["exposures"] if e["tileid"] == tid
                    and e["night"] <= night][:1]
        if not exps:
            raise NoOp(f"tile {tid} has no exposure up to {night}")
        RR.write_tile(m.layout, t, self.fiberassign_rows(m, tid), exps, night, seed)

    def recompute_line(self, m, tid, when, how="replace"):
        """The tile's line recomputed from its exposures (as the daily pipeline does)."""
        from specprod_db.mock import tiles as TL
        line = TL.tile_line(m.tile(tid), m.s["exposures"], stamp(when, None))
        put_line(m.s["lines"], line, how)
        return line

    # -- applying one spec
    def apply(self, spec: dict) -> str:
        """Apply ``spec`` to the tree; returns what was done (or ``no-op: why``)."""
        self.refresh_journal()
        fn = getattr(self, "_do_" + spec["kind"])
        try:
            return fn(**{k: v for k, v in spec.items() if k != "kind"})
        except NoOp as why:
            return f"no-op: {why}"

    def _do_advance(self, new, reobserve, withdraw):
        from specprod_db.mock import advance_production
        # advance reads fiberassign files of the tiles it re-observes: whole ones
        held = {rel: ent for rel, ent in self.journal.items() if "fiberassign" in rel}
        for rel in held:
            self.restore(rel)
        s = advance_production(self.root, new_tiles=new, reobserve=reobserve,
                               withdraw=withdraw)
        for rel, ent in held.items():     # the damage stays where advance did not write
            path = self.abspath(rel)
            with open(path, "rb") as f:
                if f.read() == ent["orig"]:
                    self.damage(rel, ent["bad_bytes"])
                    self.journal[rel]["what"] = ent["what"]
        m = self.mock()
        self.tick(1, m.s["lines"])
        return (f"advance to night {s['night']}: new {s['new_tiles']}, changed "
                f"{s['changed_tiles']}, withdrawn {s['withdrawn']}")

    def _do_line(self, tile, set=None, updated=None, how="append", base=None):
        """A new line for ``tile``: its winning line (or line ``base``) with ``set``
        applied, UPDATED ``updated`` (None: unchanged); appended or replacing."""
        m = self.mock()
        lines = m.s["lines"]
        i = winner(lines, tile) if base is None else base
        if i is None or i >= len(lines) or lines[i]["TILEID"] != tile:
            return f"no-op: tile {tile} has no line"
        line = dict(lines[i], **(set or {}))
        if updated is not None:
            line["UPDATED"] = updated
        if how == "replace":
            lines[i] = line
        else:
            lines.append(line)
        self.write_tiles(m)
        self.save(m)
        return f"tile {tile}: line {'replaced' if how == 'replace' else 'appended'} with {set or {}} UPDATED {line['UPDATED']!r}"

    def _do_recompute(self, tile, updated, how="append"):
        """The tile's line recomputed from its exposures, as the pipeline writes it
        (EFFTIME_SPEC back, LASTNIGHT its last good night, NEXP ...)."""
        from specprod_db.mock import tiles as TL
        m = self.mock()
        if not any(e["tileid"] == tile for e in m.s["exposures"]):
            return f"no-op: tile {tile} has no exposures"
        line = TL.tile_line(m.tile(tile), m.s["exposures"], updated)
        put_line(m.s["lines"], line, how)
        self.write_tiles(m)
        self.save(m)
        return f"tile {tile}: line recomputed from exposures ({how}), EFFTIME_SPEC " \
               f"{line['EFFTIME_SPEC']}"

    def _do_remove(self, tile):
        m = self.mock()
        n = len(m.s["lines"])
        m.s["lines"] = [l for l in m.s["lines"] if l["TILEID"] != tile]
        if len(m.s["lines"]) == n:
            return f"no-op: tile {tile} has no line"
        self.write_tiles(m)
        self.save(m)
        return f"tile {tile}: its {n - len(m.s['lines'])} line(s) removed from the file"

    def _do_reobserve(self, tile, night, salt):
        """New exposures on ``night``, the cumulative directory of that night, the line
        recomputed (a withdrawn tile returns this way)."""
        from specprod_db.mock import exposures as X
        m = self.mock()
        t = m.tile(tile)
        rng = np.random.default_rng([salt, 7])
        exps = X.new_exposures(rng, t, night, m.s["next_expid"])
        m.s["next_expid"] += len(exps) + 1
        m.s["exposures"].extend(exps)
        t.pop("withdrawn", None)
        self.write_redrock(m, tile, night, m.s["seed"],
                           petals=[p for p in range(10) if p not in t.get("missing_petals", [])])
        line = self.recompute_line(m, tile, self.tick(rng), how="replace")
        self.write_exposures(m)
        self.write_tiles(m)
        self.save(m)
        return f"tile {tile}: re-observed on {night} ({len(exps)} exposures), LASTNIGHT " \
               f"{line['LASTNIGHT']}"

    def _do_redrock(self, tile, night, how, salt=0, petals=(), rows=()):
        """Re-reduction of one LASTNIGHT directory: ``rewrite`` (new redshifts),
        ``drop`` / ``add`` petals, ``edit`` rows of one petal (Z, ZWARN), ``afterburner``
        (a petal's emline file removed), ``afterburner_edit`` (OII_FLUX of a few rows)."""
        m = self.mock()
        d = m.layout.cumulative_dir(tile, night)
        if not os.path.isdir(d):
            return f"no-op: no directory {self.rel(d)}"
        if how == "rewrite":
            self.write_redrock(m, tile, night, salt)
            return f"tile {tile}: redrock files of {night} rewritten (seed {salt})"
        if how == "drop":
            gone = []
            for p in petals:
                for path in self.petal_files(m, tile, night, p):
                    os.remove(path)
                    gone.append(p)
            return f"tile {tile}: petal(s) {sorted(set(gone))} removed from {night}"
        if how == "add":
            now = self.present_petals(m, tile, night)
            self.write_redrock(m, tile, night, m.s["seed"], petals=sorted(set(now) | set(petals)))
            return f"tile {tile}: petal(s) {list(petals)} written in {night}"
        if how == "afterburner_edit":
            p = petals[0]
            path = m.layout.tile_file("emline", p, tile, night)
            if not os.path.exists(path):
                return f"no-op: no {self.rel(path)}"

            def edit_em(ext, data):
                if ext == "EMLINEFIT" and len(data):
                    data["OII_FLUX"][[r % len(data) for r in rows]] += 1.0
                return data
            rewrite_fits(path, edit_em)
            return f"tile {tile}: emline petal {p} of {night}: OII_FLUX of rows {list(rows)} changed"
        if how == "afterburner":
            done = []
            for p in petals:
                path = m.layout.tile_file("emline", p, tile, night)
                if os.path.exists(path):
                    os.remove(path)
                    done.append(p)
            return f"tile {tile}: emline file of petal(s) {done} removed from {night}"
        if how == "edit":
            p = petals[0]
            path = m.layout.tile_file("redrock", p, tile, night)
            if not os.path.exists(path):
                return f"no-op: no {self.rel(path)}"

            def edit(ext, data):
                if ext == "REDSHIFTS" and len(data):
                    idx = [r % len(data) for r in rows]
                    data["Z"][idx] = data["Z"][idx] + 0.01
                    data["ZWARN"][idx] ^= 4
                return data
            rewrite_fits(path, edit)
            return f"tile {tile}: redrock petal {p} of {night}: Z, ZWARN of rows {list(rows)} changed"
        raise ValueError(how)

    def _do_exposure(self, tile, how, redo, expid=None, salt=0):
        """``add`` an exposure to the tile's LASTNIGHT, ``withdraw`` one (EFFTIME_SPEC
        0), ``remove`` one from the file, ``restore`` a withdrawn one, change a
        ``field`` (AIRMASS, SEEING_ETC, EBV, MJD or EXPTIME), drop or restore a petal's
        ``cameras`` (its FRAMES rows); ``redo``:
        ``none`` (exposures file only), ``line`` (the tile's line recomputed), ``all``
        (and its redrock files)."""
        from specprod_db.mock import exposures as X
        m = self.mock()
        t = m.tile(tile)
        i = winner(m.s["lines"], tile)
        night = m.s["lines"][i]["LASTNIGHT"] if i is not None else None
        if not isinstance(night, int):
            return f"no-op: tile {tile} has no usable LASTNIGHT"
        mine = [e for e in m.s["exposures"] if e["tileid"] == tile]
        if how == "add":
            rng = np.random.default_rng([salt, 8])
            new = X.new_exposures(rng, t, night, m.s["next_expid"])[:1]
            m.s["next_expid"] += 2
            m.s["exposures"].extend(new)
            what = f"exposure {new[0]['expid']} added on {night}"
        else:
            e = next((e for e in mine if e["expid"] == expid), None)
            if e is None:
                return f"no-op: no exposure {expid}"
            if how == "withdraw":
                e.setdefault("fuzz_efftime", [e["efftime"], e["etc"], e["gfa"]])
                e.update(efftime=0.0, etc=0.0, gfa=0.0)
            elif how == "restore":
                if "fuzz_efftime" not in e:
                    return f"no-op: exposure {expid} was not withdrawn"
                e["efftime"], e["etc"], e["gfa"] = e.pop("fuzz_efftime")
            elif how == "remove":
                if len(mine) < 2:
                    return f"no-op: exposure {expid} is the tile's last"
                m.s["exposures"].remove(e)
            elif how == "field":               # a value recomputed, EFFTIME_SPEC kept
                rng = np.random.default_rng([salt, 9])
                key = ("airmass", "seeing", "ebv", "mjd", "exptime")[int(rng.integers(0, 5))]
                e[key] = round(float(e[key]) * 1.01 + 0.001, 4)
                how = f"field {key}"
            elif how == "cameras":             # frames of a petal gone (or back)
                rng = np.random.default_rng([salt, 10])
                p = int(rng.integers(0, 10))
                mp = set(e.get("missing_petals", []))
                mp ^= {p}
                e["missing_petals"] = sorted(mp)
                how = f"cameras of petal {p} {'dropped' if p in mp else 'back'}"
            what = f"exposure {expid} {how}"
        if redo in ("line", "all"):
            if not any(x["efftime"] > 0 for x in m.s["exposures"] if x["tileid"] == tile) \
                    and not t.get("efftime_zero"):
                redo = "none"
            else:
                self.recompute_line(m, tile, self.tick(1, m.s["lines"]), how="replace")
                i = winner(m.s["lines"], tile)
                if m.s["lines"][i]["LASTNIGHT"] != night:     # keep its directory
                    m.s["lines"][i]["LASTNIGHT"] = night
        if redo == "all":
            self.write_redrock(m, tile, night, m.s["seed"])
        self.write_exposures(m)
        self.write_tiles(m)
        self.save(m)
        return f"tile {tile}: {what} (redo {redo})"

    def _do_fiberassign(self, tile, how):
        """``touch``: same bytes, new mtime; ``rewrite``: a header card changed."""
        m = self.mock()
        path = m.layout.fiberassign(tile)
        if not os.path.exists(path) or self.rel(path) in self.journal:
            return f"no-op: fiberassign of {tile} absent or damaged"
        if how == "touch":
            st = os.stat(path)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
            return f"tile {tile}: fiberassign file touched (same bytes)"
        import gzip
        import fitsio
        tmp = path + ".fuzz.fits"
        with fitsio.FITS(path) as fin, fitsio.FITS(tmp, "rw", clobber=True) as fout:
            for hdu in fin:
                hdr, data = hdu.read_header(), hdu.read()
                if hdu.get_extnum() == 0:
                    hdr["REVISION"] = f"fuzz-{secrets.token_hex(2)}"
                    fout.write(data, header=hdr)
                else:
                    fout.write(data, header=hdr, extname=hdu.get_extname())
        with open(tmp, "rb") as f, gzip.open(path + ".fuzz-gz", "wb") as g:
            shutil.copyfileobj(f, g)
        os.replace(path + ".fuzz-gz", path)
        os.remove(tmp)
        return f"tile {tile}: fiberassign file rewritten (header REVISION)"

    def _do_truncate(self, file, keep):
        """Damage: the file cut to ``keep`` (a fraction) of its size."""
        path = self.abspath(file)
        if not os.path.exists(path):
            return f"no-op: no {file}"
        with open(path, "rb") as f:
            data = f.read()
        self.damage(file, data[:int(len(data) * keep)], kind="truncate")
        return f"damaged: {file} truncated to {keep:.0%}"

    def _do_cut_tiles(self, how, line=None, at=0.5):
        """Damage to tiles-daily.csv: ``last`` (the file ends mid-line, no newline),
        ``fields`` (line ``line`` loses its last fields), ``lines`` (cut at a line
        boundary, keeping a fraction ``at`` of the lines: a well-formed file that only
        the mass-delete guard can catch)."""
        m = self.mock()
        path = m.layout.tiles_csv()
        if not os.path.exists(path):
            return "no-op: no tiles CSV"
        with open(path, "rb") as f:
            text = f.read().decode()
        rows = text.splitlines()
        if len(rows) < 3:
            return "no-op: tiles file too short"
        if how == "last":
            last = rows[-1]
            rows[-1] = bad = last[:max(1, int(len(last) * at))]
            data = "\n".join(rows)
            self.damage(self.rel(path), data.encode(), kind="tiles", how=how, tail=bad)
            return f"damaged: tiles file cut (last line, at {at:.2f})"
        elif how == "lines":            # cut at a line boundary: a well-formed file
            data = "\n".join(rows[:1 + max(1, int((len(rows) - 1) * at))]) + "\n"
            self.damage(self.rel(path), data.encode(), kind="tiles_short", how=how)
            return f"tiles file cut after {max(1, int((len(rows) - 1) * at))} whole lines"
        else:
            k = 1 + line % (len(rows) - 1)
            parts = rows[k].split(",")
            rows[k] = ",".join(parts[:max(1, int(len(parts) * at))])
            data = "\n".join(rows) + "\n"
        self.damage(self.rel(path), data.encode(), kind="tiles", how=how, line=rows[k])
        return f"damaged: tiles file cut ({how}, at {at:.2f})"

    def _do_bad_value(self, tile, column, value, updated=None):
        """Damage: a new line for ``tile`` in tiles-daily.csv (only: the next tiles
        write by the mock repairs it) with ``column`` set to ``value`` (blank, nan, a
        bad date ...)."""
        from specprod_db.mock import tiles as TL
        m = self.mock()
        i = winner(m.s["lines"], tile)
        if i is None:
            return f"no-op: tile {tile} has no line"
        line = dict(m.s["lines"][i])
        if updated is not None:
            line["UPDATED"] = updated
        text = [TL._fmt(line[c]) for c in TL.COLUMNS]
        text[TL.COLUMNS.index(column)] = value
        path = m.layout.tiles_csv()
        if not os.path.exists(path):
            return "no-op: no tiles CSV"
        with open(path, "rb") as f:
            data = f.read()
        if not data.endswith(b"\n"):
            data += b"\n"
        self.damage(self.rel(path), data + (",".join(text) + "\n").encode(), kind="tiles",
                    how=f"{column}={value!r}", line=",".join(text))
        return f"damaged: tile {tile} line with {column}={value!r}"

    def _do_nan_exposure(self, expid):
        """Damage: EFFTIME_SPEC NaN for one row of exposures-daily.fits."""
        m = self.mock()
        path = m.layout.exposures_fits()
        rel = self.rel(path)
        if rel in self.journal:
            return "no-op: exposures file already damaged"

        def edit(ext, data):
            if ext == "EXPOSURES":
                data["EFFTIME_SPEC"][data["EXPID"] == expid] = np.nan
            return data
        tmp = path + ".fuzz-nan.fits"
        shutil.copyfile(path, tmp)
        rewrite_fits(tmp, edit)
        with open(tmp, "rb") as f:
            bad = f.read()
        os.remove(tmp)
        tile = next((e["tileid"] for e in m.s["exposures"] if e["expid"] == expid), None)
        self.damage(rel, bad, kind="nan_exposure", expid=int(expid), tile=tile)
        return f"damaged: exposure {expid} EFFTIME_SPEC NaN in the exposures file"

    def _do_foreign_dir(self, tile, other, night, updated):
        """Damage: a LASTNIGHT directory of ``tile`` holding only ``other``'s redrock
        files (a copy made by mistake), and a line of ``tile`` pointing at it."""
        m = self.mock()
        j = winner(m.s["lines"], other)
        if j is None or winner(m.s["lines"], tile) is None:
            return "no-op: a tile has no line"
        src = m.layout.cumulative_dir(other, m.s["lines"][j]["LASTNIGHT"])
        dst = m.layout.cumulative_dir(tile, night)
        if not os.path.isdir(src) or os.path.exists(dst):
            return f"no-op: {self.rel(src)} absent or {self.rel(dst)} exists"
        os.makedirs(dst)
        for path in glob.glob(os.path.join(src, "*.fits")):
            shutil.copy2(path, dst)
        return self._do_line(tile, set={"LASTNIGHT": night}, updated=updated,
                             how="append") + f"; {self.rel(dst)} holds tile {other}'s files"

    def _do_fits_only(self):
        """tiles-daily.csv removed: the loader reads tiles-daily.fits (astropy's copy of
        the CSV, int64 integers) until the next tiles write."""
        m = self.mock()
        path = m.layout.tiles_csv()
        if not os.path.exists(path) or not os.path.exists(m.layout.tiles_fits()):
            return "no-op: no CSV or no FITS tiles file"
        self.damage(self.rel(path), None, kind="fits_only")
        return "tiles-daily.csv removed (the FITS file is read)"

    def _do_repair(self, file):
        if file not in self.journal:
            return f"no-op: {file} not damaged (or rewritten since)"
        self.restore(file)
        return f"repaired: {file}"


def put_line(lines, line, how):
    """Put ``line`` in ``lines``: ``replace`` the tile's winning line, else append."""
    i = winner(lines, line["TILEID"])
    if how == "replace" and i is not None:
        lines[i] = line
    else:
        lines.append(line)


def rewrite_fits(path, edit):
    """Rewrite a FITS file HDU by HDU, ``edit(extname, data) -> data`` on each table."""
    import fitsio
    tmp = path + ".fuzz-rw"
    with fitsio.FITS(path) as fin, fitsio.FITS(tmp, "rw", clobber=True) as fout:
        for hdu in fin:
            hdr, data = hdu.read_header(), hdu.read()
            if hdu.get_extnum() == 0:
                fout.write(data, header=hdr)
            else:
                fout.write(edit(hdu.get_extname(), data), header=hdr,
                           extname=hdu.get_extname())
    os.replace(tmp, path)


# --- drawing random mornings -----------------------------------------------------------

#: Kinds of change and their weights (the damage kinds are the last group).
KINDS = {
    "advance": 14, "line_field": 14, "line_lastnight": 6, "line_withdraw": 6,
    "line_return": 5, "line_updated": 5, "line_duplicate": 4, "line_stale": 4,
    "remove": 2, "reobserve": 5, "redrock": 9, "exposure": 7, "fiberassign": 3,
    "fits_only": 2, "truncate": 5, "cut_tiles": 3, "bad_value": 3, "nan_exposure": 2, "foreign_dir": 2,
    "repair": 0,          # weight: 4 per damaged file
    "heal": 0,            # weight: 4 per tile whose line names a directory without its files
}
FIELD_CHOICES = ["PROGRAM", "PROGRAM", "SURVEY", "FAPRGRM", "FAFLAVOR", "OBSSTATUS",
                 "GOALTYPE", "NEXP", "EXPTIME", "GOALTIME", "TILERA", "TILEDEC",
                 "EFFTIME_SPEC", "EFFTIME_ETC", "EFFTIME_GFA", "LRG_EFFTIME_DARK",
                 "BGS_EFFTIME_BRIGHT", "MINTFRAC"]
BAD_VALUES = {"EFFTIME_SPEC": ["", "nan", "inf", "-nan", "abc"],
              "LASTNIGHT": ["", "20241399", "2024110", "20240230", "x"],
              "UPDATED": ["2024-02-30T08:00:00-0800", "2024-11-02T99:00:00-0700",
                          "2024-11-02T08:20:57.1234567-0700", "yesterday"],
              "PROGRAM": ["d\u00f6rk", "darkbrightbackup"], "SURVEY": ["", "m\u00e4in"],
              "TILEID": ["", "12x"], "FAFLAVOR": [""], "OBSSTATUS": ["", "obs\x01end"],
              "NEXP": ["1.5", "x"]}
#: Values a line may hold (doc/daily.md "A bad line"): an empty PROGRAM (desispec#2251,
#: taken from FAFLAVOR), NaN or blank in a float column the plan does not read.
ODD_BUT_VALID = {"PROGRAM": [""], "EFFTIME_ETC": ["nan", ""], "EFFTIME_GFA": ["nan"],
                 "LRG_EFFTIME_DARK": [""], "EXPTIME": ["nan"]}


def _other(rng, choices, current):
    rest = [c for c in choices if c != current]
    return str(rng.choice(rest))


def draw(tree: Tree, rng: np.random.Generator) -> dict:
    """One random change (a spec) for the tree as it is now."""
    m = tree.mock()
    lines = m.s["lines"]
    tiles = sorted({l["TILEID"] for l in lines})
    broken = tree.broken_tiles(m)
    weights = dict(KINDS, repair=4 * len(tree.journal), heal=4 * len(broken))
    if not tiles:
        weights = {"advance": 1}
    kinds = list(weights)
    p = np.array([weights[k] for k in kinds], dtype=float)
    kind = str(rng.choice(kinds, p=p / p.sum()))
    pick = lambda seq: seq[int(rng.integers(0, len(seq)))]   # noqa: E731
    night = m.s["nights"][-1]
    tid = pick(tiles) if tiles else None
    cur = lines[winner(lines, tid)] if tiles else None

    def upd(offset=None):
        return stamp(tree.tick(rng, lines), pick(OFFSETS) if offset == "any" else offset)

    if kind == "advance":
        spec = dict(kind="advance", new=int(rng.integers(0, 3)), reobserve=int(rng.integers(0, 3)),
                    withdraw=bool(rng.uniform() < 0.3))
        if not (spec["new"] or spec["reobserve"] or spec["withdraw"]):
            spec["new"] = 1
        return spec
    if kind == "line_field":
        col = pick(FIELD_CHOICES)
        v = cur[col]
        if col in ODD_BUT_VALID and rng.uniform() < 0.25:
            v = pick(ODD_BUT_VALID[col])
        elif col == "PROGRAM" or col == "FAPRGRM":
            v = _other(rng, PROGRAMS, v)
        elif col == "SURVEY":
            v = _other(rng, SURVEYS, v)
        elif col == "FAFLAVOR":
            v = _other(rng, ["maindark", "mainbright", "sv3dark", "mainbackup", "specialdark"], v)
        elif col == "OBSSTATUS":
            v = _other(rng, ["obsend", "obsstart", "other", "unknown"], v)
        elif col == "GOALTYPE":
            v = _other(rng, ["dark", "bright", "backup", "other"], v)
        elif col == "NEXP":
            v = int(v) + int(rng.integers(1, 3))
        elif col in ("TILERA", "TILEDEC"):
            v = round(float(v) + 1e-4, 6)
        elif col == "EFFTIME_SPEC" and not float(v) > 0:
            v = 100.0
        else:
            try:
                v = round(float(v) * float(rng.uniform(0.8, 1.2)) + 0.5, 1)
            except ValueError:                  # an odd value before: a number again
                v = 1.5
        return dict(kind="line", tile=tid, set={col: v}, updated=upd("any"),
                    how=pick(["append", "replace"]))
    if kind == "line_lastnight":
        back = [d for d in tree.nights_of(m, tid) if d != cur["LASTNIGHT"]]
        from specprod_db.mock.production import next_night
        u = rng.uniform()
        if back and u < 0.7:
            v = pick(back)                                     # another real directory
        elif not back and u < 0.6:                             # nothing to go back to
            return dict(kind="line", tile=tid, set={}, updated=upd("any"), how="append")
        elif rng.uniform() < 0.5:
            v = next_night(int(cur["LASTNIGHT"]))              # forwards, no directory
        else:
            v = int(cur["LASTNIGHT"]) - 1 if int(cur["LASTNIGHT"]) % 100 > 1 else 20241015
        return dict(kind="line", tile=tid, set={"LASTNIGHT": int(v)}, updated=upd("any"),
                    how=pick(["append", "replace"]))
    if kind == "line_withdraw":
        return dict(kind="line", tile=tid, set={"EFFTIME_SPEC": 0.0}, updated=upd("any"),
                    how=pick(["append", "replace"]))
    if kind == "line_return":
        gone = [l["TILEID"] for l in lines if l is lines[winner(lines, l["TILEID"])]
                and not float(l["EFFTIME_SPEC"]) > 0]
        gone += [t["tileid"] for t in m.s["tiles"] if t["tileid"] not in tiles]
        if not gone:
            return dict(kind="recompute", tile=tid, updated=upd(), how="append")
        return dict(kind="recompute", tile=pick(sorted(set(gone))), updated=upd("any"),
                    how=pick(["append", "replace"]))
    if kind == "line_updated":
        same = rng.uniform() < 0.5
        when = _parse_updated(cur["UPDATED"]) if same and cur["UPDATED"] else tree.tick(rng, lines)
        return dict(kind="line", tile=tid, set={}, updated=stamp(when, pick(OFFSETS[3:])),
                    how=pick(["append", "replace"]))
    if kind == "line_duplicate":
        return dict(kind="line", tile=tid, set={}, updated=None, how="append")
    if kind == "line_stale":
        col = pick(["PROGRAM", "EFFTIME_SPEC", "LASTNIGHT", "NEXP"])
        v = {"PROGRAM": _other(rng, PROGRAMS, cur["PROGRAM"]), "EFFTIME_SPEC": 0.0,
             "LASTNIGHT": 20241015, "NEXP": 99}[col]
        old = _parse_updated(cur["UPDATED"])
        if old.year < 2000:
            return dict(kind="line", tile=tid, set={col: v}, updated="", how="append")
        # earlier instant, written at an offset that sorts later as a string
        return dict(kind="line", tile=tid, set={col: v},
                    updated=stamp(old - _dt.timedelta(hours=1), 9), how="append")
    if kind == "remove":
        return dict(kind="remove", tile=tid)
    if kind == "reobserve":
        cand = sorted({l["TILEID"] for l in lines if isinstance(l["LASTNIGHT"], int)
                       and l["LASTNIGHT"] < night} - {m.s["special"].get("efftime_zero")})
        if not cand:
            return dict(kind="advance", new=0, reobserve=1, withdraw=False)
        return dict(kind="reobserve", tile=pick(cand), night=night,
                    salt=int(rng.integers(0, 2**31)))
    if kind == "redrock":
        how = pick(["rewrite", "drop", "add", "edit", "afterburner", "afterburner_edit"])
        present = tree.present_petals(m, tid, cur["LASTNIGHT"])
        if how == "drop" and present:
            k = int(rng.integers(1, 3))
            petals = sorted(int(x) for x in rng.choice(present, size=min(k, len(present)),
                                                       replace=False))
        elif how == "add":
            petals = [int(x) for x in rng.choice(10, size=2, replace=False)]
        else:
            petals = [pick(present)] if present else [0]
        return dict(kind="redrock", tile=tid, night=int(cur["LASTNIGHT"]), how=how,
                    salt=int(rng.integers(0, 2**31)), petals=petals,
                    rows=sorted(int(x) for x in rng.integers(0, 50, 3)))
    if kind == "exposure":
        mine = [e["expid"] for e in m.s["exposures"] if e["tileid"] == tid]
        how = pick(["add", "add", "withdraw", "remove", "restore", "field", "cameras"])
        withdrawn = [e["expid"] for e in m.s["exposures"] if "fuzz_efftime" in e]
        if how == "restore" and withdrawn:
            e = pick(withdrawn)
            tid = next(x["tileid"] for x in m.s["exposures"] if x["expid"] == e)
        else:
            e = pick(mine) if mine else None
            how = how if how != "restore" else "withdraw"
        return dict(kind="exposure", tile=tid, how=how, expid=e,
                    redo=pick(["none", "line", "all", "all"]),
                    salt=int(rng.integers(0, 2**31)))
    if kind == "fiberassign":
        return dict(kind="fiberassign", tile=tid, how=pick(["touch", "rewrite"]))
    if kind == "truncate":
        what = pick(["redrock", "redrock", "fiberassign", "emline", "exposures", "tractor",
                     "target"])
        if what in ("redrock", "emline"):
            present = tree.present_petals(m, tid, cur["LASTNIGHT"])
            if not present:
                return dict(kind="remove", tile=tid)
            path = m.layout.tile_file(what, pick(present), tid, cur["LASTNIGHT"])
        elif what == "fiberassign":
            path = m.layout.fiberassign(tid)
        elif what == "exposures":
            path = m.layout.exposures_fits()
        else:
            root = (m.layout.legacysurvey_dir if what == "tractor"
                    else m.layout.path("target/catalogs"))
            files = sorted(glob.glob(os.path.join(root, "**", "*.fits"), recursive=True))
            if not files:
                return dict(kind="remove", tile=tid)
            path = pick(files)
        return dict(kind="truncate", file=tree.rel(path),
                    keep=round(float(rng.choice([0.0, 0.1, 0.5, 0.9, 0.99])), 2))
    if kind == "cut_tiles":
        return dict(kind="cut_tiles", how=pick(["last", "fields", "lines"]),
                    line=int(rng.integers(0, 1000)), at=round(float(rng.uniform(0.05, 0.95)), 2))
    if kind == "bad_value":
        col = pick(sorted(BAD_VALUES))
        return dict(kind="bad_value", tile=tid, column=col, value=pick(BAD_VALUES[col]),
                    updated=upd())
    if kind == "nan_exposure":
        mine = [e["expid"] for e in m.s["exposures"] if e["tileid"] == tid]
        return dict(kind="nan_exposure", expid=pick(mine)) if mine else dict(kind="remove", tile=tid)
    if kind == "foreign_dir":
        others = [t for t in tiles if t != tid]
        if not others:
            return dict(kind="remove", tile=tid)
        from specprod_db.mock.production import next_night
        return dict(kind="foreign_dir", tile=tid, other=pick(others),
                    night=next_night(max(night, int(cur["LASTNIGHT"]) if isinstance(
                        cur["LASTNIGHT"], int) else night)), updated=upd())
    if kind == "repair":
        return dict(kind="repair", file=pick(sorted(tree.journal)))
    if kind == "heal":          # the pipeline writes the tile's line again
        return dict(kind="recompute", tile=pick(broken), updated=upd(), how="append")
    if kind == "fits_only":
        return dict(kind="fits_only")
    raise ValueError(kind)


# --- running loads and comparing schemas -----------------------------------------------

@dataclass
class Run:
    """One ``specprod-db load`` and what its run recorded."""
    rc: int
    out: str
    err: str
    held: dict = field(default_factory=dict)   # tileid -> (outcome, action, reason)
    seconds: float = 0.0

    def tail(self, n=1500):
        return (f"exit {self.rc}\n--- stdout ---\n{self.out[-n:]}\n--- stderr ---\n"
                f"{self.err[-n:]}")


def run_load(mpiexec: str, ranks: int, dsn: str, schema: str, prod: str, stage: str,
             *extra: str, env: dict | None = None) -> Run:
    env = mock_env(prod, SPECPROD_DB_DSN=dsn, **(env or {}))
    argv = [mpiexec, "-n", str(ranks), *CLI, "load", "--schema", schema,
            "--stage-dir", str(stage), *extra]
    before = last_run_id(dsn, schema)
    t0 = time.time()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, start_new_session=True,
                            env=env)
    try:
        out, err = proc.communicate(timeout=LOAD_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
        err += f"\n[fuzz] killed after {LOAD_TIMEOUT} s"
        return Run(-9, out, err, seconds=time.time() - t0)
    run = Run(proc.returncode, out, err, seconds=time.time() - t0)
    if last_run_id(dsn, schema) != before:          # else the run recorded nothing
        run.held = held_back(dsn, schema)
    return run


def run_verify(dsn: str, schema: str, prod: str, env: dict | None = None) -> tuple:
    """``specprod-db verify --json`` of the schema: ``(exit, drift items or the output)``."""
    proc = subprocess.run(CLI + ["verify", "--schema", schema, "--json"],
                          capture_output=True, text=True, timeout=LOAD_TIMEOUT,
                          env=mock_env(prod, SPECPROD_DB_DSN=dsn, **(env or {})))
    try:
        drift = json.loads(proc.stdout).get("drift", [])
    except ValueError:
        drift = [proc.stdout[-800:] + proc.stderr[-800:]]
    return proc.returncode, drift


def last_run_id(dsn, schema):
    return _query(dsn, f'SELECT max(id) FROM "{schema}".load_run')[0][0]


def _query(dsn, statement, args=None):
    import psycopg2
    conn = psycopg2.connect(dsn, connect_timeout=30)
    try:
        with conn.cursor() as cur:
            cur.execute(statement, args)
            rows = cur.fetchall() if cur.description else None
        conn.commit()
        return rows
    finally:
        conn.close()


def held_back(dsn: str, schema: str) -> dict:
    """``{tileid: (outcome, action, reason)}`` the schema's last run held back."""
    rows = _query(dsn, f'SELECT h.tileid, h.outcome, h.action, coalesce(h.error, h.reason) '
                       f'FROM "{schema}".tile_history h WHERE h.run_id = (SELECT max(id) '
                       f'FROM "{schema}".load_run) AND h.outcome IN '
                       f"('failed', 'internal_error', 'skipped') ORDER BY h.id")
    out = {}
    for tid, outcome, action, reason in rows or []:
        out[int(tid)] = (outcome, action, reason or "")
    for tid, status, err in _query(
            dsn, f'SELECT tileid, status, error FROM "{schema}".tile_state WHERE status IN '
                 f"('failed', 'internal_error') AND run_id = (SELECT max(id) FROM "
                 f'"{schema}".load_run)') or []:
        out.setdefault(int(tid), (status, "?", err or ""))
    return out


def init(dsn: str, schema: str, env: dict | None = None) -> None:
    """``specprod-db init`` (the environment ``env`` added, e.g. another PYTHONPATH)."""
    subprocess.run(CLI + ["init", "--schema", schema, "--db", dsn, "--no-grant"],
                   check=True, capture_output=True, timeout=120,
                   env=dict(os.environ, **(env or {})))


def drop_schema(dsn: str, schema: str) -> None:
    _query(dsn, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _norm(v):
    if isinstance(v, float) and math.isnan(v):
        return "NaN"
    if isinstance(v, Decimal):
        return str(v)
    return v


def table_rows(dump: dict) -> dict:
    """``{table: {primary key: {column: value}}}`` of a :func:`conftest.dump_schema`."""
    from specprod_db import schema as S
    out = {}
    for name, rows in dump.items():
        t = S.BY_NAME[name]
        cols = t.names
        pk = [cols.index(c) for c in t.primary_key]
        out[name] = {tuple(r[i] for i in pk): dict(zip(cols, map(_norm, r))) for r in rows}
    return out


def compare(a: dict, b: dict, excluded: set, limit: int = 3) -> dict:
    """Differences of the table rows ``a`` and ``b`` (:func:`table_rows`), the tiles
    ``excluded`` set aside as the module docstring says. Returns ``{table: {"only_a":
    n, "only_b": n, "differ": n, "examples": [...], "tiles": [...]}}`` for the tables
    that differ."""
    def ref_targetids(rows, keep):
        out = set()
        for t in TARGETID_TABLES:
            for r in rows.get(t, {}).values():
                if keep(r.get("tileid")):
                    out.add(r["targetid"])
        return out
    held = lambda tid: tid in excluded            # noqa: E731
    outside = lambda tid: tid not in excluded     # noqa: E731
    only_held = (ref_targetids(a, held) | ref_targetids(b, held)) - (
        ref_targetids(a, outside) | ref_targetids(b, outside))
    shared_z = {r["targetid"] for side in (a, b) for r in side.get("ztile", {}).values()
                if r["tileid"] in excluded}
    diffs = {}
    for table in sorted(set(a) | set(b)):
        ra, rb = a.get(table, {}), b.get(table, {})

        def keep(r):
            if "tileid" in r and r["tileid"] in excluded:
                return False
            if table == "photometry" and r["targetid"] in only_held:
                return False
            return True

        def view(r):
            if table in ("ztile", "zpix") and r["targetid"] in shared_z:
                return {k: v for k, v in r.items() if k not in PRIMARY_COLUMNS}
            return r
        ka = {k for k, r in ra.items() if keep(r)}
        kb = {k for k, r in rb.items() if keep(r)}
        only_a, only_b = sorted(ka - kb, key=str), sorted(kb - ka, key=str)
        differ = sorted((k for k in ka & kb if view(ra[k]) != view(rb[k])), key=str)
        if not (only_a or only_b or differ):
            continue
        ex, tiles = [], set()
        for k in differ:
            cols = {c: (ra[k][c], rb[k][c]) for c in ra[k] if view(ra[k]).get(c, 0) !=
                    view(rb[k]).get(c, 0)}
            tiles.add(ra[k].get("tileid"))
            if len(ex) < limit:
                ex.append(f"{table} {_key(k)}: " + ", ".join(f"{c} A={x!r} B={y!r}"
                                                       for c, (x, y) in cols.items()))
        for side, keys, rows in (("A", only_a, ra), ("B", only_b, rb)):
            for k in keys:
                tiles.add(rows[k].get("tileid"))
            for k in keys[:limit]:
                r = rows[k]
                brief = {c: r[c] for c in ("tileid", "targetid", "expid", "survey",
                                           "program", "lastnight") if c in r}
                ex.append(f"{table} {_key(k)}: only in {side} {brief}")
        diffs[table] = dict(only_a=len(only_a), only_b=len(only_b), differ=len(differ),
                            examples=ex, tiles=sorted(t for t in tiles if t is not None))
    return diffs


def _key(k):
    return ",".join(str(x) for x in k)


def format_diffs(diffs: dict) -> str:
    out = []
    for table, d in diffs.items():
        out.append(f"  {table}: {d['only_a']} row(s) only in A (incremental), "
                   f"{d['only_b']} only in B (fresh), {d['differ']} differ; tiles "
                   f"{d['tiles']}")
        out += [f"    {e}" for e in d["examples"]]
    return "\n".join(out)


# --- one seed ----------------------------------------------------------------------------

@dataclass
class Morning:
    step: int
    specs: list                    # [(spec, what was done)]
    rc_a: int = None
    rc_b: int = None
    held_a: dict = field(default_factory=dict)
    held_b: dict = field(default_factory=dict)
    findings: list = field(default_factory=list)     # strings: divergences
    notes: list = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class SeedResult:
    seed: int
    ranks: int
    mornings: list = field(default_factory=list)
    load_args: list = field(default_factory=list)

    @property
    def diverged(self):
        return [m for m in self.mornings if m.findings]

    def script(self):
        """The specs of every morning: replay with ``run_seed(script=...)``."""
        return [[s for s, _ in m.specs] for m in self.mornings]

    def report(self, upto=None):
        """Seed, morning, the changes applied, and the findings."""
        out = [f"seed {self.seed}, {self.ranks} rank(s) {' '.join(self.load_args)}:"]
        for m in self.mornings[:upto]:
            out.append(f" morning {m.step}: A exit {m.rc_a}, B exit {m.rc_b}, held back "
                       f"A {sorted(m.held_a)} B {sorted(m.held_b)} ({m.seconds:.1f} s)")
            out += [f"   {json.dumps(s, sort_keys=True)}\n     -> {w}" for s, w in m.specs]
            out += [f"   NOTE {n}" for n in m.notes]
            out += [f"   DIVERGENCE {f}" for f in m.findings]
        return "\n".join(out)


def morning_check(m: "Morning", run_a: Run, run_b: Run | None, prev_a: dict, dump_a: dict,
                  dump_b: dict | None, damages=(), verified=()) -> None:
    """The rule of comparison (module docstring) for one morning: fills ``m.findings``
    and ``m.notes``. ``damages``: the tree's damages at load time (:meth:`Tree.damages`),
    for the two rules that are not differential: a tiles file with a bad line never
    gives exit 0 (decisions 12 and 14), and an exposure whose EFFTIME_SPEC is NaN is
    never dropped or loaded without its EXPID in the log (issue 20). ``verified``:
    ``[(name, exit, drift)]`` of ``specprod-db verify`` after a run that exited 0 on a
    tree without damage, which must find nothing."""
    text = run_a.out + "\n" + run_a.err
    for name, rc, drift in verified:
        if rc != 0:
            m.findings.append(f"verify of the {name} schema after exit 0 on an undamaged "
                              f"tree: exit {rc}, drift: "
                              + "; ".join(json.dumps(d, default=str)[:300] for d in drift[:5]))
    for rel, what in damages:
        if what.get("kind") != "tiles":
            continue
        for name, run in (("incremental run", run_a), ("fresh load", run_b)):
            if run is not None and run.rc == 0:
                m.findings.append(f"rule: the tiles file has a bad line ({what['how']}) "
                                  f"but the {name} exited 0")
    for rel, what in damages:
        if what.get("kind") == "nan_exposure" and run_b is not None and dump_b is not None:
            e = what["expid"]
            tiles = {r["tileid"] for r in dump_b.get("tile", {}).values()}
            row = next((r for r in dump_b.get("exposure", {}).values()
                        if r["expid"] == e), None)
            if what["tile"] in tiles and row is None and not re.search(
                    rf"\b{e}\b", run_b.out + run_b.err):
                m.findings.append(f"rule: exposure {e} of tile {what['tile']} has "
                                  f"EFFTIME_SPEC NaN; the fresh load loaded the tile "
                                  f"without it and its log does not name it")
    for tid, (outcome, action, reason) in run_a.held.items():
        if outcome == "internal_error":
            m.findings.append(f"tile {tid}: internal error in the incremental run "
                              f"({action}): {reason[:400]}")
        if not reason.strip():
            m.findings.append(f"tile {tid} held back ({outcome}, {action}) without a reason")
        if not re.search(rf"\b{tid}\b", text):
            m.findings.append(f"tile {tid} held back ({outcome}) but not named in the "
                              f"run's output")
    if run_a.rc == 0 and run_a.held:
        m.findings.append(f"exit 0 but tiles held back: {sorted(run_a.held)}")
    if run_a.rc == 1 and not run_a.held and "tiles file damaged" not in text:
        m.findings.append("exit 1 but no tile held back and no damaged tiles file "
                          "reported:\n" + run_a.tail())
    if run_a.rc == 2:
        if dump_a != prev_a:
            m.findings.append("the run refused to start (exit 2) but changed the tables:\n"
                              + format_diffs(compare(prev_a, dump_a, set())))
        if not run_a.err.strip():
            m.findings.append("exit 2 with nothing on stderr")
        return
    if run_a.rc not in (0, 1):
        m.findings.append(f"incremental run: unexpected exit:\n{run_a.tail()}")
        return
    if run_b is None:
        return
    for tid, (outcome, action, reason) in run_b.held.items():
        if outcome == "internal_error":
            m.findings.append(f"tile {tid}: internal error in the fresh load: "
                              f"{reason[:400]}")
    if run_b.rc not in (0, 1):
        m.findings.append(f"fresh load: unexpected exit:\n{run_b.tail()}")
        return
    text_b = run_b.out + "\n" + run_b.err
    if run_b.rc == 0 and run_b.held:
        m.findings.append(f"fresh load: exit 0 but tiles held back: {sorted(run_b.held)}")
    if run_b.rc == 1 and not run_b.held and "tiles file damaged" not in text_b:
        m.findings.append("fresh load: exit 1 but no tile held back and no damaged tiles "
                          "file reported:\n" + run_b.tail())
    excluded = set(run_a.held) | set(run_b.held)
    diffs = compare(dump_a, dump_b, excluded)
    if diffs:
        m.findings.append("tables differ outside the held-back tiles "
                          f"{sorted(excluded)}:\n" + format_diffs(diffs))
    only_b = set(run_b.held) - set(run_a.held)
    if only_b:
        per_tile = compare(dump_a, dump_b, set(run_a.held))
        for tid in sorted(only_b):
            touched = [t for t, d in per_tile.items() if tid in d["tiles"]]
            reason = run_b.held[tid][2]
            if touched and not any(u in reason for u in UNWATCHED):
                m.findings.append(
                    f"tile {tid}: the fresh load holds it back ({reason[:300]}) but the "
                    f"incremental run (exit {run_a.rc}) kept rows for it without a word "
                    f"(tables {touched})")
    for tid in sorted(set(run_a.held) - set(run_b.held)):
        if run_a.held[tid][0] != "skipped":
            m.notes.append(f"asymmetric: tile {tid} held back by the incremental run "
                           f"({run_a.held[tid][0]}: {run_a.held[tid][2][:200]}) but loaded "
                           f"by a fresh load")


def run_seed(seed: int, steps: int, ranks: int, dsn: str, mpiexec: str, workdir: str,
             script: list | None = None, log=None, stop_at_divergence: bool = True,
             base: str | None = None, env: dict | None = None,
             load_args: tuple = ()) -> "SeedResult":
    """Fuzz ``steps`` mornings of seed ``seed`` (or replay ``script``: one list of specs
    per morning, morning 0 being the first load); returns a :class:`SeedResult`.

    ``workdir`` holds the tree, the stage directories and nothing else of value; schemas
    ``fz<hex>_a`` / ``_b`` are dropped at the end. ``base``: a production to copy instead
    of making one (it must be ``make_production(small=True, seed=seed)``'s). ``env``:
    added to the environment of ``init`` and the loads (``PYTHONPATH`` of another
    checkout's ``py/``, to run the fuzzer against older code). ``load_args``: more
    options of the morning loads (``--writers 2`` ...)."""
    from specprod_db.mock import make_production
    log = log or (lambda s: None)
    os.makedirs(workdir, exist_ok=True)
    prod = os.path.join(workdir, f"prod-{seed}")
    if os.path.exists(prod):
        shutil.rmtree(prod)
    if base:
        shutil.copytree(base, prod, symlinks=True)
    else:
        make_production(prod, small=True, seed=seed, append_duplicates=bool(seed % 2))
    tree = Tree(prod)
    rng = np.random.default_rng([seed, 20])
    tag = "fz" + secrets.token_hex(4)
    schema_a, schema_b = tag + "_a", tag + "_b"
    stage_a = os.path.join(workdir, f"stage-{tag}-a")
    result = SeedResult(seed, ranks, load_args=list(load_args))
    init(dsn, schema_a, env)
    prev_a = table_rows(dump_schema(dsn, schema_a))
    total = len(script) if script is not None else steps + 1
    try:
        for step in range(total):
            t0 = time.time()
            specs = []
            todo = (script[step] if script is not None else
                    [None] * (0 if step == 0 else 1 + int(rng.integers(0, 3))))
            for spec in todo:
                if spec is None:
                    spec = draw(tree, rng)
                try:
                    what = tree.apply(spec)
                except Exception as err:          # a fuzzer bug: say so, go on
                    what = f"fuzzer error applying it: {err.__class__.__name__}: {err}"
                specs.append((spec, what))
            m = Morning(step, specs)
            result.mornings.append(m)
            damages = tree.damages()
            run_a = run_load(mpiexec, ranks, dsn, schema_a, prod, stage_a, *load_args,
                             env=env)
            if run_a.rc == 2 and "--allow-mass-delete" in run_a.err:
                dump_a = table_rows(dump_schema(dsn, schema_a))
                if dump_a != prev_a:
                    m.findings.append("a refused mass delete changed the tables")
                m.notes.append("mass delete refused; run again with --allow-mass-delete")
                run_a = run_load(mpiexec, ranks, dsn, schema_a, prod, stage_a,
                                 *load_args, "--allow-mass-delete", env=env)
            dump_a = table_rows(dump_schema(dsn, schema_a))
            run_b = dump_b = None
            if run_a.rc in (0, 1):
                drop_schema(dsn, schema_b)
                init(dsn, schema_b, env)
                stage_b = os.path.join(workdir, f"stage-{tag}-b{step}")
                run_b = run_load(mpiexec, 1, dsn, schema_b, prod, stage_b, env=env)
                shutil.rmtree(stage_b, ignore_errors=True)
                dump_b = table_rows(dump_schema(dsn, schema_b))
            m.rc_a, m.held_a = run_a.rc, run_a.held
            if run_b is not None:
                m.rc_b, m.held_b = run_b.rc, run_b.held
            verified = []
            if not damages:
                for name, run, schema in (("incremental", run_a, schema_a),
                                          ("fresh", run_b, schema_b)):
                    if run is not None and run.rc == 0:
                        verified.append((name, *run_verify(dsn, schema, prod, env)))
            morning_check(m, run_a, run_b, prev_a, dump_a, dump_b, damages, verified)
            prev_a = dump_a
            m.seconds = time.time() - t0
            log(f"seed {seed} morning {step}: A exit {m.rc_a} held {sorted(m.held_a)}, "
                f"B exit {m.rc_b} held {sorted(m.held_b)}, {len(m.findings)} finding(s), "
                f"{m.seconds:.1f} s; " + "; ".join(w for _, w in specs))
            if m.findings and stop_at_divergence:
                break
    finally:
        drop_schema(dsn, schema_a)
        drop_schema(dsn, schema_b)
        shutil.rmtree(stage_a, ignore_errors=True)
    return result


def signature(findings: list) -> set:
    """What a divergence is, without its numbers: the first line of each finding with
    digits and quoted values blurred, plus the tables that differ."""
    out = set()
    for f in findings:
        lines = f.splitlines()
        out.add(re.sub(r"'[^']*'|\d+", "_", lines[0])[:70])
        out |= {ln.split(":")[0].strip() for ln in lines[1:] if re.match(r"  \w", ln)}
    return out


def _script(items):
    """Mornings from ``[(morning, index, spec)]``: the first load, then each morning that still
    has a spec, in order."""
    mornings = {}
    for step, _, spec in items:
        mornings.setdefault(step, []).append(spec)
    return [[]] + [mornings[k] for k in sorted(mornings) if k > 0]


def shrink(seed: int, script: list, ranks: int, dsn: str, mpiexec: str, workdir: str,
           log=None, budget: int = 40, env: dict | None = None,
           load_args: tuple = ()) -> tuple:
    """The smallest script found that still diverges the same way (:func:`signature`):
    delta debugging over the changes of the mornings up to the diverging one (chunks
    removed, halving; a morning left without changes is dropped), at most ``budget``
    replays. Returns the script and its :class:`SeedResult`."""
    log = log or (lambda s: None)
    res = run_seed(seed, 0, ranks, dsn, mpiexec, workdir, script=script, env=env,
                   load_args=load_args)
    if not res.diverged:
        return script, res
    want = signature(res.diverged[0].findings)
    items = [(k, j, spec) for k, specs in enumerate(script[:res.diverged[0].step + 1])
             for j, spec in enumerate(specs)]
    tries, n = 0, 2
    while len(items) >= 1 and tries < budget:
        size = max(1, len(items) // n)
        chunks = [items[i:i + size] for i in range(0, len(items), size)]
        for chunk in chunks:
            gone = {(k, j) for k, j, _ in chunk}
            cand = [x for x in items if (x[0], x[1]) not in gone]
            tries += 1
            r = run_seed(seed, 0, ranks, dsn, mpiexec, workdir, script=_script(cand),
                         env=env, load_args=load_args)
            if r.diverged and signature(r.diverged[0].findings) & want:
                items, res = cand, r
                n = max(n - 1, 2)
                log(f"shrink: {len(items)} change(s) left ({tries} replays)")
                break
            if tries >= budget:
                break
        else:
            if size == 1:
                break
            n = min(2 * n, len(items))
    return _script(items), res
