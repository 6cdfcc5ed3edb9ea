"""``specprod-db verify``: does the database still hold what was loaded?  Reads only.

Checks (each reported with the tiles, tables and rows or counts that drifted):

``tile_rows``
    Per tile and table, the rows found against those recorded when the tile was last
    loaded or deleted (``tile_history.tile_rows``, written in the tile's transaction by
    :mod:`specprod_db.load.tile_writer`).  A tile loaded before ``tile_history`` existed has no
    recorded counts: noted, not checked.  Rows of a tile the load state does not hold
    (no ``tile_state`` row, or ``deleted``) are drift.
``inputs``
    For every loaded tile, the ``stat`` of its fiberassign and redrock files against the
    recorded fingerprints (:mod:`specprod_db.load.fingerprints`), and its qualifying exposure
    rows against their recorded digest.  With ``hash=True`` the files are re-hashed: a
    file touched with the same bytes is then a note, not drift.  A file that is there
    but cannot be stat-ed or read (symlink loop, a directory in its place, EACCES, EIO)
    is drift naming the file and the reason, never a crash.  Skipped (noted) when the
    input locations cannot be resolved.
``photometry``
    Every TARGETID that a table referencing ``photometry`` holds has its photometry row
    (``schema.referencing("photometry")``; exactly one, as ``targetid`` is the primary
    key, which ``constraints`` checks), and no photometry row is unreferenced.
``primary``
    In ``ztile``: exactly one ``zcat_primary`` row per TARGETID, one ``main_primary``
    per TARGETID with ``main`` rows (none otherwise), one ``sv_primary`` per TARGETID
    with ``sv1``/``sv2``/``sv3`` rows (none otherwise).
``constraints``
    Every declared primary key and foreign key exists, is validated and its triggers
    are enabled; and, since a key can be dropped, marked NOT VALID or bypassed
    (``session_replication_role = replica``) and still be in the catalog, the rows of
    every foreign key other than those to ``photometry`` are checked too (anti-joins).
``ids``
    Composite ids decode to their own columns (:mod:`specprod_db.ids`): ``target.id``,
    ``fiberassign.id``, ``potential.id``, ``ztile.id`` and ``targetphotid``,
    ``zpix.id``, ``frame.frameid``.
``desiname``
    ``ztile.desiname`` is desiutil's ``radec_to_desiname(TARGET_RA, TARGET_DEC)``
    (written out in SQL by ``_desiname_sql``) of the ``fiberassign`` row of the same
    tile and TARGETID (the coordinates desispec copies into the redrock FIBERMAP);
    ``zpix.desiname`` that of at least one ``fiberassign`` row of its TARGETID.  Rows
    without such a row are noted, not checked.  Cost: one join of ``ztile`` with
    ``fiberassign`` and, for ``zpix``, one index lookup of ``fiberassign`` per row.

With ``tiles`` every check is restricted to those tiles' rows (and the TARGETIDs on
them); the checks that are not per tile (unreferenced photometry, ``zpix``) are then
skipped.  Without it each check reads every row of the tables it concerns once: minutes
on a full production, as much as a sequential scan of the schema.
"""
import json
import os
from dataclasses import asdict, dataclass, field

from psycopg2 import sql

from specprod_db import ids, schema
from specprod_db.db import builds
from specprod_db.db.sql import qualified, reading
from specprod_db.errors import InputError
from specprod_db.load import fingerprints

CHECKS = ("tile_rows", "inputs", "photometry", "primary", "constraints", "ids",
          "desiname")

#: Examples of offending rows kept per drift item.
EXAMPLES = 10

#: The weights of the A and B fields of a composite id (:mod:`specprod_db.ids`).
_HIGH = sql.SQL("{}::numeric").format(sql.Literal(1 << ids.HIGH_SHIFT))
_MIDDLE = sql.SQL("{}::numeric").format(sql.Literal(1 << ids.MIDDLE_SHIFT))


@dataclass
class Drift:
    """One disagreement: ``check``, ``tile`` (None when not about one tile), ``table``,
    a ``message``, and the ``expected``/``found`` values or example ``rows``."""
    check: str
    tile: int = None
    table: str = None
    message: str = ""
    expected: object = None
    found: object = None
    rows: list = None


@dataclass
class Check:
    checked: int = 0          # tiles, files, tables or constraints looked at
    skipped: str = None       # why the check did not run
    notes: list = field(default_factory=list)


class Verifier:
    def __init__(self, conn, schema_name, tiles=None, paths=None, hash=False):
        self.conn, self.schema = conn, schema_name
        self.tiles = sorted(set(int(t) for t in tiles)) if tiles else None
        self.paths, self.hash = paths, hash
        self.drift = []
        self.checks = {name: Check() for name in CHECKS}

    # --- helpers -----------------------------------------------------------------------

    def q(self, name):
        return qualified(self.schema, name)

    def fetch(self, statement, args=None):
        with self.conn.cursor() as cur:
            cur.execute(statement, args)
            return cur.fetchall()

    def where_tiles(self, alias=None, column="tileid"):
        """``AND <tileid> = ANY(%(tiles)s)`` when restricted to tiles, else nothing."""
        if self.tiles is None:
            return sql.SQL("")
        col = sql.Identifier(column) if alias is None else sql.SQL("{}.{}").format(
            sql.Identifier(alias), sql.Identifier(column))
        return sql.SQL(" AND {} = ANY(%(tiles)s)").format(col)

    @property
    def args(self):
        return {"tiles": self.tiles}

    def add(self, check, **kw):
        self.drift.append(Drift(check, **kw))

    # --- the checks --------------------------------------------------------------------

    def run(self):
        for name in CHECKS:
            with reading(self.conn):  # nothing stays open, nothing was written
                getattr(self, "check_" + name)()
        return self.report()

    def state(self):
        rows = self.fetch(sql.SQL("SELECT tileid, status, lastnight, exposures_hash, "
                                  "redrock_fingerprint, fiberassign_fingerprint FROM {} "
                                  "WHERE true{}").format(self.q("tile_state"),
                                                         self.where_tiles()), self.args)
        keys = ("status", "lastnight", "exposures_hash", "redrock_fingerprint",
                "fiberassign_fingerprint")
        return {r[0]: dict(zip(keys, r[1:])) for r in rows}

    def check_tile_rows(self):
        check = self.checks["tile_rows"]
        recorded = {r[0]: (json.loads(r[1]), r[2]) for r in self.fetch(sql.SQL(
            "SELECT DISTINCT ON (tileid) tileid, tile_rows, run_id FROM {} WHERE tile_rows "
            "IS NOT NULL{} ORDER BY tileid, id DESC").format(
                self.q("tile_history"), self.where_tiles()), self.args)}
        found = {}
        for t in schema.tile_tables():
            for tileid, n in self.fetch(sql.SQL(
                    "SELECT tileid, count(*) FROM {} WHERE true{} GROUP BY tileid").format(
                        self.q(t.name), self.where_tiles()), self.args):
                found.setdefault(tileid, {})[t.name] = n
        state = self.state()
        unrecorded = []
        for tileid in sorted(set(recorded) | set(found)):
            holds = found.get(tileid, {})
            if tileid not in recorded:
                status = (state.get(tileid) or {}).get("status")
                if status in (None, "deleted"):
                    self.add("tile_rows", tile=tileid, message=(
                        f"tile {tileid} has rows but the load state "
                        f"{'does not know it' if status is None else 'says deleted'}: "
                        + ", ".join(f"{k} {v}" for k, v in sorted(holds.items()))),
                        expected=None, found=holds)
                else:
                    unrecorded.append(tileid)
                continue
            expected, run_id = recorded[tileid]
            check.checked += 1
            for t in schema.tile_tables():
                e, f = expected.get(t.name, 0), holds.get(t.name, 0)
                if e != f:
                    self.add("tile_rows", tile=tileid, table=t.name, expected=e, found=f,
                             message=f"tile {tileid}: {t.name}: {e} row(s) recorded by run "
                                     f"{run_id}, {f} found")
        if unrecorded:
            check.notes.append(
                f"{len(unrecorded)} tile(s) loaded before tile_history recorded row "
                f"counts, not checked (until their next load): "
                + ", ".join(map(str, unrecorded[:20])) + (" ..." if len(unrecorded) > 20
                                                          else ""))

    def check_inputs(self):
        check = self.checks["inputs"]
        if self.paths is None:
            check.skipped = "input locations unknown"
            return
        from specprod_db.extract import redshift, tile
        loaded = {t: s for t, s in self.state().items() if s["status"] == "loaded"}
        try:
            exposures, frames = tile.read_exposures_file(self.paths.exposures())
        except (InputError, OSError) as err:
            exposures = None
            check.notes.append(f"exposures not compared: {' '.join(str(err).split())}")
        for tileid, s in sorted(loaded.items()):
            check.checked += 1
            sets = [("fiberassign", s["fiberassign_fingerprint"],
                     tile.fiberassign_files(self.paths, tileid))]
            if s["lastnight"] is not None:
                sets.append(("redrock", s["redrock_fingerprint"],
                             redshift.redrock_files(self.paths, tileid, s["lastnight"])))
            for what, text, files in sets:
                self._compare_files(tileid, what, text, files)
            if exposures is not None:
                digest = fingerprints.exposures_digest(exposures, frames, tileid)
                if digest != s["exposures_hash"]:
                    self.add("inputs", tile=tileid, table="exposure",
                             message=f"tile {tileid}: its qualifying exposure rows in "
                                     f"{os.path.basename(self.paths.exposures())} changed "
                                     f"since it was loaded", expected=s["exposures_hash"],
                             found=digest)

    def _compare_files(self, tileid, what, text, files):
        recorded = fingerprints.Fingerprint.from_text(text)
        if recorded is None:
            self.add("inputs", tile=tileid, message=f"tile {tileid}: no readable recorded "
                     f"{what} fingerprint", expected=text, found=None)
            return
        now = fingerprints.stat(files)  # an unreadable file is stamped so, never raises
        if recorded.stat_key() == now.stat_key():
            return
        diffs = _file_differences(recorded, now)
        if self.hash and recorded.is_hashed and not now.unreadable:
            try:
                now = fingerprints.hashed(files)
            except InputError as err:  # there but unreadable (EISDIR, EIO ...): a finding
                self.add("inputs", tile=tileid, message=f"tile {tileid}: {what} file "
                         f"{' '.join(str(err).split())}",
                         expected=[list(k) for k in recorded.stat_key()], found=None)
                return
            if now.same_content(recorded):
                self.checks["inputs"].notes.append(
                    f"tile {tileid}: {what} files touched, same contents: "
                    + "; ".join(diffs))
                return
            diffs = _file_differences(recorded, now, content=True)
        self.add("inputs", tile=tileid, message=f"tile {tileid}: {what} files changed since "
                 f"it was loaded: " + "; ".join(diffs),
                 expected=[list(k) for k in recorded.stat_key()],
                 found=[list(k) for k in now.stat_key()])

    def check_photometry(self):
        check = self.checks["photometry"]
        phot = self.q("photometry")
        for t, col in schema.referencing("photometry"):
            if "tileid" not in t.names and self.tiles is not None:
                continue
            check.checked += 1
            by_tile = "tileid" in t.names
            rows = self.fetch(sql.SQL(
                "SELECT {g}, count(DISTINCT r.{c}), (array_agg(DISTINCT r.{c}))[1:%(n)s] "
                "FROM {t} r WHERE NOT EXISTS (SELECT 1 FROM {p} p WHERE p.targetid = r.{c})"
                "{w} GROUP BY 1 ORDER BY 1").format(
                    g=sql.SQL("r.tileid") if by_tile else sql.SQL("NULL::integer"),
                    c=sql.Identifier(col), t=self.q(t.name), p=phot,
                    w=self.where_tiles("r")), dict(self.args, n=EXAMPLES))
            for tileid, n, examples in rows:
                self.add("photometry", tile=tileid, table=t.name, expected=0, found=n,
                         rows=sorted(examples),
                         message=(f"{'tile %d: ' % tileid if tileid is not None else ''}"
                                  f"{n} TARGETID(s) of {t.name} without a photometry row: "
                                  + ", ".join(map(str, sorted(examples)))))
        if self.tiles is not None:
            check.notes.append("unreferenced photometry rows not checked with --tiles")
            return
        refs = sql.SQL(" AND ").join(
            sql.SQL("NOT EXISTS (SELECT 1 FROM {} r WHERE r.{} = p.targetid)").format(
                self.q(t.name), sql.Identifier(col)) for t, col in
            schema.referencing("photometry"))
        n, examples = self.fetch(sql.SQL(
            "SELECT count(*), (array_agg(targetid ORDER BY targetid))[1:%(n)s] FROM {} p "
            "WHERE {}").format(phot, refs), {"n": EXAMPLES})[0]
        if n:
            self.add("photometry", table="photometry", expected=0, found=n, rows=examples,
                     message=f"{n} photometry row(s) that no table references: TARGETID "
                             + ", ".join(map(str, examples)))

    def check_primary(self):
        check = self.checks["primary"]
        subsets = {"zcat": sql.SQL("TRUE"), "sv": sql.SQL("survey IN ('sv1', 'sv2', 'sv3')"),
                   "main": sql.SQL("survey = 'main'")}
        cols, conds = [], []
        for prefix, member in subsets.items():
            flag = sql.Identifier(f"{prefix}_primary")
            cols += [sql.SQL("count(*) FILTER (WHERE {})").format(member),
                     sql.SQL("count(*) FILTER (WHERE {})").format(flag)]
            conds.append(sql.SQL("count(*) FILTER (WHERE {f}) <> CASE WHEN count(*) FILTER "
                                 "(WHERE {m}) > 0 THEN 1 ELSE 0 END").format(f=flag, m=member))
        restrict = sql.SQL("")
        if self.tiles is not None:
            restrict = sql.SQL(" WHERE targetid IN (SELECT targetid FROM {} WHERE tileid = "
                               "ANY(%(tiles)s))").format(self.q("ztile"))
        rows = self.fetch(sql.SQL(
            "SELECT targetid, array_agg(DISTINCT tileid ORDER BY tileid), {} FROM {}{} "
            "GROUP BY targetid HAVING {} ORDER BY targetid").format(
                sql.SQL(", ").join(cols), self.q("ztile"), restrict,
                sql.SQL(" OR ").join(conds)), self.args)
        check.checked = self.fetch(sql.SQL("SELECT count(DISTINCT targetid) FROM {}{}").format(
            self.q("ztile"), restrict), self.args)[0][0]
        per_tile = {}
        for targetid, tiles, *counts in rows:
            problems = {}
            for i, prefix in enumerate(subsets):
                members, flagged = counts[2 * i], counts[2 * i + 1]
                if flagged != (1 if members else 0):
                    problems[prefix] = {"rows": members, "primary": flagged,
                                        "expected": 1 if members else 0}
            for t in tiles:
                if self.tiles is None or t in self.tiles:
                    per_tile.setdefault(t, []).append({"targetid": targetid,
                                                       "tiles": tiles, **problems})
        for t, items in sorted(per_tile.items()):
            self.add("primary", tile=t, table="ztile", found=len(items), expected=0,
                     rows=items[:EXAMPLES], message=(
                         f"tile {t}: {len(items)} TARGETID(s) whose primary flags are "
                         f"wrong: " + "; ".join(
                             f"{i['targetid']} " + ", ".join(
                                 f"{k}_primary {v['primary']} of {v['rows']} row(s), "
                                 f"expected {v['expected']}" for k, v in i.items()
                                 if k in subsets) for i in items[:3])
                         + (" ..." if len(items) > 3 else "")))

    def check_constraints(self):
        check = self.checks["constraints"]
        present = {}
        for table, kind, cols, validated, disabled in self.fetch("""
                SELECT c.conrelid::regclass::text, c.contype,
                       array(SELECT a.attname FROM unnest(c.conkey) k
                             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k),
                       c.convalidated,
                       EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgconstraint = c.oid
                               AND g.tgenabled = 'D')
                FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
                WHERE n.nspname = %s AND c.contype IN ('p', 'f')""", (self.schema,)):
            present[(table.split(".")[-1].strip('"'), kind, tuple(cols))] = (validated,
                                                                           disabled)
        for t in schema.TABLES:
            declared = [("p", tuple(t.primary_key), "primary key")]
            declared += [("f", (c,), f"foreign key {c} -> {ref}")
                         for c, ref in t.foreign_keys.items()]
            for kind, cols, what in declared:
                check.checked += 1
                got = present.get((t.name, kind, cols))
                if got is None:
                    self.add("constraints", table=t.name, expected="present", found="missing",
                             message=f"{t.name}: {what} is missing (declared in schema.py)")
                elif not got[0]:
                    self.add("constraints", table=t.name, expected="validated",
                             found="NOT VALID", message=f"{t.name}: {what} is NOT VALID")
                elif got[1]:
                    self.add("constraints", table=t.name, expected="enabled",
                             found="disabled", message=f"{t.name}: {what}: its triggers are "
                                                       "disabled")
        for t in schema.TABLES:
            for col, ref in t.foreign_keys.items():
                parent, pcol = ref.split(".")
                if parent == "photometry" or (self.tiles is not None
                                              and "tileid" not in t.names):
                    continue
                by_tile = "tileid" in t.names
                rows = self.fetch(sql.SQL(
                    "SELECT {g}, count(*), (array_agg(DISTINCT r.{c}::text))[1:%(n)s] FROM {t} r "
                    "WHERE r.{c} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {p} p WHERE "
                    "p.{pc} = r.{c}){w} GROUP BY 1 ORDER BY 1").format(
                        g=sql.SQL("r.tileid") if by_tile else sql.SQL("NULL::integer"),
                        c=sql.Identifier(col), t=self.q(t.name), p=self.q(parent),
                        pc=sql.Identifier(pcol), w=self.where_tiles("r")),
                    dict(self.args, n=EXAMPLES))
                for tileid, n, examples in rows:
                    self.add("constraints", tile=tileid, table=t.name, expected=0, found=n,
                             rows=examples, message=(
                                 f"{'tile %d: ' % tileid if tileid is not None else ''}"
                                 f"{n} {t.name} row(s) whose {col} is not in {ref}: "
                                 + ", ".join(examples)))

    def check_ids(self):
        check = self.checks["ids"]
        for table, column, expected in id_expressions():
            t = schema.table(table)
            if "tileid" not in t.names and self.tiles is not None:
                check.notes.append(f"{table}.{column} not checked with --tiles")
                continue
            check.checked += 1
            by_tile = "tileid" in t.names
            rows = self.fetch(sql.SQL(
                "SELECT {g}, count(*), (array_agg({c}::text ORDER BY {c}))[1:%(n)s] FROM {t} "
                "WHERE {c} IS DISTINCT FROM {e}{w} GROUP BY 1 ORDER BY 1").format(
                    g=sql.SQL("tileid") if by_tile else sql.SQL("NULL::integer"),
                    c=sql.Identifier(column), t=self.q(table), e=expected,
                    w=self.where_tiles()), dict(self.args, n=EXAMPLES))
            for tileid, n, examples in rows:
                self.add("ids", tile=tileid, table=table, expected=0, found=n, rows=examples,
                         message=(f"{'tile %d: ' % tileid if tileid is not None else ''}"
                                  f"{n} {table} row(s) whose {column} does not decode to "
                                  f"their own columns: " + ", ".join(examples)))

    def check_desiname(self):
        """DESINAMEs against the coordinates of ``fiberassign`` (see the module doc)."""
        check = self.checks["desiname"]
        name = _desiname_sql(sql.SQL("f.target_ra"), sql.SQL("f.target_dec"))
        wrong = sql.SQL("f.targetid IS NOT NULL AND z.desiname IS DISTINCT FROM {}").format(
            name)
        unchecked = 0
        for tileid, n, compared, bad, examples in self.fetch(sql.SQL(
                "SELECT z.tileid, count(*), count(f.targetid), count(*) FILTER (WHERE {w}), "
                "(array_agg(z.targetid || ' ' || z.desiname || ' (computed ' || {e} || ')' "
                "ORDER BY z.targetid) FILTER (WHERE {w}))[1:%(n)s] FROM {z} z LEFT JOIN {f} f "
                "ON f.tileid = z.tileid AND f.targetid = z.targetid WHERE true{t} GROUP BY 1 "
                "ORDER BY 1").format(w=wrong, e=name, z=self.q("ztile"),
                                     f=self.q("fiberassign"), t=self.where_tiles("z")),
                dict(self.args, n=EXAMPLES)):
            check.checked += compared
            unchecked += n - compared
            if bad:
                self.add("desiname", tile=tileid, table="ztile", expected=0, found=bad,
                         rows=examples, message=(
                             f"tile {tileid}: {bad} ztile row(s) whose desiname is not "
                             f"radec_to_desiname of their fiberassign TARGET_RA/TARGET_DEC: "
                             + ", ".join(examples[:3]) + (" ..." if bad > 3 else "")))
        if unchecked:
            check.notes.append(f"{unchecked} ztile row(s) without a fiberassign row of "
                               f"their tile and TARGETID, not checked")
        if self.tiles is not None:
            check.notes.append("zpix not checked with --tiles")
            return
        wrong = sql.SQL("a.names IS NOT NULL AND NOT z.desiname = ANY(a.names)")
        n, compared, bad, examples = self.fetch(sql.SQL(
            "SELECT count(*), count(a.names), count(*) FILTER (WHERE {w}), "
            "(array_agg(z.targetid || ' ' || z.survey || '/' || z.program || ' ' || "
            "z.desiname || ' (computed ' || array_to_string(a.names, ', ') || ')' ORDER BY "
            "z.targetid) FILTER (WHERE {w}))[1:%(n)s] FROM {z} z LEFT JOIN LATERAL (SELECT "
            "array_agg(DISTINCT {e}) AS names FROM {f} f WHERE f.targetid = z.targetid) a "
            "ON true").format(w=wrong, e=name, z=self.q("zpix"), f=self.q("fiberassign")),
            {"n": EXAMPLES})[0]
        check.checked += compared
        if n > compared:
            check.notes.append(f"{n - compared} zpix row(s) whose TARGETID has no "
                               f"fiberassign row, not checked")
        if bad:
            self.add("desiname", table="zpix", expected=0, found=bad, rows=examples,
                     message=(f"{bad} zpix row(s) whose desiname is radec_to_desiname of no "
                              f"fiberassign TARGET_RA/TARGET_DEC of their TARGETID: "
                              + ", ".join(examples[:3]) + (" ..." if bad > 3 else "")))

    # --- the result --------------------------------------------------------------------

    def report(self):
        drift = [asdict(d) for d in self.drift]
        checks = {}
        for name, c in self.checks.items():
            checks[name] = {"checked": c.checked, "drift": sum(d.check == name
                                                              for d in self.drift),
                            "skipped": c.skipped, "notes": c.notes}
        return {"schema": self.schema, "tiles": self.tiles, "hash": self.hash,
                "ok": not drift, "checks": checks, "drift": drift}


def _case(value, mapping):
    """``CASE value WHEN 'key' THEN code ... END`` (NULL for anything else); ``value`` a
    column name or an SQL expression."""
    if isinstance(value, str):
        value = sql.Identifier(value)
    return sql.SQL("(CASE {} {} END)").format(value, sql.SQL(" ").join(
        sql.SQL("WHEN {} THEN {}").format(sql.Literal(k), sql.Literal(v))
        for k, v in mapping.items()))


def _composite(a, b):
    """``(a << HIGH_SHIFT) | (b << MIDDLE_SHIFT) | targetid`` in numeric
    (:func:`specprod_db.ids.composite`)."""
    return sql.SQL("({a}::numeric * {h} + {b}::numeric * {m} + targetid::numeric)").format(
        a=a, b=b, h=_HIGH, m=_MIDDLE)


def id_expressions() -> list[tuple[str, str, sql.Composable]]:
    """``[(table, column, SQL expression of what the column must be)]``, each the
    encoding of :mod:`specprod_db.ids` written in SQL over the row's own columns."""
    survey, program = _case("survey", ids.SURVEYID), _case("program", ids.PROGRAMID)
    location = sql.Identifier("location")
    tileid = sql.Identifier("tileid")
    spgrp = sql.SQL("({} * {} + spgrpval)").format(_case("spgrp", ids.SPGRPID),
                                                    sql.Literal(1 << ids.SPGRPVAL_BITS))
    band = _case(sql.SQL("left(camera, 1)"), {b: ids.CAMERA_BAND_STEP * i
                                              for i, b in enumerate(ids.CAMERA_BANDS)})
    camera = sql.SQL("({} + CASE WHEN right(camera, 1) ~ '^[0-9]$' THEN "
                     "right(camera, 1)::int END)").format(band)
    return [("target", "id", _composite(survey, tileid)),
            ("fiberassign", "id", _composite(location, tileid)),
            ("potential", "id", _composite(location, tileid)),
            ("ztile", "id", _composite(spgrp, tileid)),
            ("ztile", "targetphotid", _composite(survey, tileid)),
            ("zpix", "id", _composite(program, survey)),
            ("frame", "frameid", sql.SQL("({} * expid + {})").format(
                sql.Literal(ids.FRAMEID_EXPID_FACTOR), camera))]


def _desiname_sql(ra: sql.Composable, dec: sql.Composable) -> sql.Composable:
    """desiutil's ``radec_to_desiname`` in SQL: ``'DESI J'``, then
    ``trunc(10000 RA)`` zero-filled to 7 digits as ``RRR.RRRR``, then the sign of
    ``trunc(10000 Dec)`` and its absolute value zero-filled to 6 digits as ``DD.DDDD``
    (the double products and truncations are numpy's, so the names are equal)."""
    r = sql.SQL("lpad(trunc(10000 * {})::bigint::text, 7, '0')").format(ra)
    d = sql.SQL("trunc(10000 * {})::bigint").format(dec)
    p = sql.SQL("lpad(abs({})::text, 6, '0')").format(d)
    return sql.SQL("('DESI J' || left({r}, 3) || '.' || right({r}, 4) || CASE WHEN {d} < 0 "
                   "THEN '-' ELSE '+' END || left({p}, 2) || '.' || right({p}, 4))").format(
        r=r, d=d, p=p)


def _file_differences(recorded, now, content=False):
    """What differs between two fingerprints, file by file, in words."""
    out = []
    old = {f.name: f for f in recorded.files}
    new = {f.name: f for f in now.files}
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a is None or a.missing:
            if b is not None and b.error is not None:
                out.append(f"{name} unreadable ({b.error})")
            elif b is not None and not b.missing:
                out.append(f"{name} appeared")
            continue
        if b is not None and b.error is not None:
            out.append(f"{name} unreadable ({b.error})")
        elif b is None or b.missing:
            out.append(f"{name} missing")
        elif content and a.sha256 != b.sha256:
            out.append(f"{name} contents changed")
        elif a.size != b.size:
            out.append(f"{name} size {a.size} -> {b.size}")
        elif a.mtime_ns != b.mtime_ns:
            out.append(f"{name} modified")
    return out


def verify(conn, schema_name, tiles=None, paths=None, hash=False):
    """Run every check; the report (a dict: doc/daily.md, ``verify --json``)."""
    report = Verifier(conn, schema_name, tiles, paths, hash).run()
    with reading(conn) as cur:  # an initial load that stopped before its builds ended
        lacking = builds.unfinished(cur, schema_name)
    report["unfinished_initial_load"] = None if not lacking else {
        "missing": lacking, "finish": builds.finish_command(schema_name),
        "message": builds.unfinished_message(schema_name, lacking)}
    report["ok"] = report["ok"] and not lacking
    return report


def format_report(report, width=80):
    """The report for a terminal: one line per check, then every drift item."""
    lines = [f"verify schema {report['schema']}"
             + (f", tiles {', '.join(map(str, report['tiles']))}" if report["tiles"] else "")
             + (" (files re-hashed)" if report["hash"] else "")]
    for name, c in report["checks"].items():
        if c["skipped"]:
            state = f"skipped: {c['skipped']}"
        else:
            state = "ok" if not c["drift"] else f"DRIFT ({c['drift']})"
        lines.append(_fit(f"  {name:<12} {state:<16} checked {c['checked']}", width))
        lines += [_fit(f"      note: {n}", width) for n in c["notes"]]
    if report["drift"]:
        lines.append(f"DRIFT ({len(report['drift'])}):")
        for d in report["drift"]:
            lines.append(f"  [{d['check']}] {d['message']}")
    else:
        lines.append("no drift: the database holds what was loaded")
    if report.get("unfinished_initial_load"):
        lines.append(report["unfinished_initial_load"]["message"])
    return "\n".join(lines)


def _fit(line, width):
    return line if len(line) <= width else line[:width - 3] + "..."
