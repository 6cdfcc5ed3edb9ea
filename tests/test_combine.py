"""``specprod-db combine``: a schema of views over two loaded productions.

Two sources from the small mock production: ``older`` (specprod ``fuji``) holds tiles
{100, 1000, 40000} of the production as it is; ``newer`` (specprod ``guadalupe``, listed
second, so preferred) holds tiles {100, 1001, 50000, 50001, 60000} of a copy advanced by
one night (tile 100 re-observed: other LASTNIGHT, other redshift rows; 50000 and 50001
new).  Tiles 1000 and 1001 overlap on the sky, so TARGETIDs are in both sources on
different tiles, and their primary flags must be recomputed across the combination.
A few synthetic ``zpix`` rows (empty in a daily production) overlap on (TARGETID, SURVEY,
PROGRAM), as a named production's would.
"""
import json
import secrets
import shutil
import subprocess
from collections import Counter

import psycopg2
import pytest
from psycopg2 import sql
from psycopg2.extras import execute_values

from conftest import CLI, mock_env, query, run_mpi
from specprod_db.ops import combine
from specprod_db import ids, schema
from specprod_db.db import ddl
from specprod_db.load import finalize

OLDER_TILES = (100, 1000, 40000)
NEWER_TILES = (100, 1001, 50000, 50001, 60000)
NAMES = {"older": "fuji", "newer": "guadalupe"}
Q3C_INDEX = "ix_photometry_q3c_ang2ipix"


def _cli(*argv, dsn):
    return subprocess.run(CLI + list(argv) + ["--db", dsn], capture_output=True, text=True,
                          timeout=120)


def _zpix_rows(dsn, schema_name, targetids, keys, seed):
    """zpix rows (every column zero/empty but the key, zwarn and tsnr2_lrg) for
    ``targetids`` x ``keys`` ((survey, program) pairs)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    rows = []
    for t in targetids:
        for survey, program in keys:
            r = {}
            for c in schema.ZPIX.columns:
                r[c.name] = (False if c.pgtype == "boolean" else
                             "" if c.pgtype.startswith("varchar") else 0)
            tied = t in targetids[:4]  # exact ties: the tie-break (id) decides
            r.update(targetid=t, survey=survey, program=program, spgrp="healpix",
                     id=ids.to_int(ids.zpix_id([program], [survey], [t]))[0],
                     zwarn=0 if tied else int(rng.choice([0, 0, 4])),
                     tsnr2_lrg=80.0 if tied else
                     float(rng.choice([0.0, 5.0, 80.0, -9999.0, 80.0])),
                     z=float(rng.uniform(0, 3)))
            rows.append(tuple(r[c] for c in schema.ZPIX.names))
    conn = psycopg2.connect(dsn)
    with conn, conn.cursor() as cur:
        execute_values(cur, sql.SQL("INSERT INTO {} ({}) VALUES %s").format(
            sql.Identifier(schema_name, "zpix"),
            sql.SQL(", ").join(map(sql.Identifier, schema.ZPIX.names))).as_string(cur), rows)
    conn.close()


@pytest.fixture(scope="module")
def combined(pg_dsn, small_production, mpiexec, tmp_path_factory):
    """{'older', 'newer', 'target', 'dsn'}: two loaded sources and their combination
    (created by the CLI); every schema is dropped afterwards."""
    prod = small_production[0]
    work = tmp_path_factory.mktemp("combine")
    advanced = work / "advanced"
    shutil.copytree(prod, advanced, symlinks=True)
    from specprod_db.mock import advance_production
    summary = advance_production(str(advanced))
    assert 100 in summary["changed_tiles"] and {50000, 50001} <= set(summary["new_tiles"])
    s = {"older": "test_" + secrets.token_hex(4), "newer": "test_" + secrets.token_hex(4),
         "target": "test_" + secrets.token_hex(4), "dsn": pg_dsn}
    made = []
    try:
        for role, source, tiles in (("older", prod, OLDER_TILES),
                                    ("newer", str(advanced), NEWER_TILES)):
            made.append(s[role])
            subprocess.run(CLI + ["init", "--schema", s[role], "--db", pg_dsn, "--no-grant",
                                  "--specprod", NAMES[role]],
                           check=True, capture_output=True, timeout=120)
            run_mpi(mpiexec, 2, CLI + ["load", "--schema", s[role], "--stage-dir",
                                       str(work / role), "--tiles", ",".join(map(str, tiles))],
                    env=mock_env(source, SPECPROD_DB_DSN=pg_dsn))
        photometry = [r[0] for r in query(
            pg_dsn, f'SELECT targetid FROM "{s["older"]}".photometry WHERE targetid IN '
                    f'(SELECT targetid FROM "{s["newer"]}".photometry) ORDER BY 1 LIMIT 12')]
        only_newer = [r[0] for r in query(
            pg_dsn, f'SELECT targetid FROM "{s["newer"]}".photometry WHERE targetid NOT IN '
                    f'(SELECT targetid FROM "{s["older"]}".photometry) ORDER BY 1 LIMIT 4')]
        assert len(photometry) == 12 and len(only_newer) == 4
        _zpix_rows(pg_dsn, s["older"], photometry, [("main", "dark"), ("sv1", "dark"),
                                                    ("sv3", "bright")], seed=1)
        _zpix_rows(pg_dsn, s["newer"], photometry[6:] + only_newer,
                   [("main", "dark"), ("main", "bright")], seed=2)
        # exact ties across the sources: same zwarn class and TSNR2_LRG for some
        # TARGETIDs with ztile rows in both (the smaller tileid must win, as finalize's)
        shared = [r[0] for r in query(
            pg_dsn, f'SELECT DISTINCT targetid FROM "{s["older"]}".ztile WHERE targetid IN '
                    f'(SELECT targetid FROM "{s["newer"]}".ztile) ORDER BY 1 LIMIT 6')]
        assert len(shared) == 6
        for role in ("older", "newer"):
            query(pg_dsn, f'UPDATE "{s[role]}".ztile SET zwarn = 0, tsnr2_lrg = 50 '
                          "WHERE targetid = ANY(%s)", (shared,))
            conn = psycopg2.connect(pg_dsn)
            with conn:
                finalize.update_primary(conn, s[role], shared)
            conn.close()
        made.append(s["target"])
        result = _cli("combine", "--schema", s["target"], s["older"], s["newer"],
                      "--no-grant", dsn=pg_dsn)
        assert result.returncode == 0, result.stderr
        yield s
    finally:
        for name in reversed(made):
            query(pg_dsn, f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def _rows(dsn, relation, columns):
    return query(dsn, f"SELECT {', '.join(columns)} FROM {relation}")


def _q(schema_name, table):
    return f'"{schema_name}"."{table}"'


def test_sources_and_names(combined):
    dsn, t = combined["dsn"], combined["target"]
    assert query(dsn, f"SELECT rank, schema_name, specprod, specprod_from FROM "
                      f"{_q(t, 'sources')} ORDER BY rank") == [
        (1, combined["older"], "fuji", "version table"),
        (2, combined["newer"], "guadalupe", "version table")]
    views = {r[0] for r in query(dsn, "SELECT table_name FROM information_schema.views "
                                      "WHERE table_schema = %s", (t,))}
    assert views == set(combine.views())
    tables = query(dsn, "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON "
                        "n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind <> 'v'",
                   (t,))
    assert tables == [(0,)], "a combination holds views only"


@pytest.mark.parametrize("table", [t.name for t in schema.DATA_TABLES])
def test_union_all_views_are_the_sum_of_the_sources(combined, table):
    dsn, t = combined["dsn"], combined["target"]
    columns = [r[0] for r in query(
        dsn, "SELECT column_name FROM information_schema.columns WHERE table_schema = %s "
             "AND table_name = %s ORDER BY ordinal_position", (t, f"{table}_all"))]
    assert columns == list(schema.table(table).names) + ["specprod"]
    got = dict(query(dsn, f"SELECT specprod, count(*) FROM {_q(t, table + '_all')} "
                          "GROUP BY specprod"))
    n = {role: query(dsn, f"SELECT count(*) FROM {_q(combined[role], table)}")[0][0]
         for role in ("older", "newer")}
    assert sum(got.values()) == n["older"] + n["newer"]
    assert {k: v for k, v in got.items()} == {
        NAMES[role]: n[role] for role in n if n[role]}
    if table in ("tile", "ztile", "photometry", "target", "zpix", "exposure"):
        assert n["older"] and n["newer"], f"the fixture must fill {table} in both sources"


def _expected_dedup(dsn, combined, table, columns, key):
    """Rows the rule keeps, computed in Python from the sources: every row of the newer
    source, and the older source's rows whose key the newer source lacks."""
    src = {role: _rows(dsn, _q(combined[role], table), columns)
           for role in ("older", "newer")}
    if key == "tile":
        newer_keys = {r[0] for r in query(
            dsn, f"SELECT tileid FROM {_q(combined['newer'], 'tile')}")}
        idx = [columns.index("tileid")]
    else:
        idx = [columns.index(c) for c in key]
        newer_keys = {tuple(r[i] for i in idx) for r in src["newer"]}

    def k(row):
        v = tuple(row[i] for i in idx)
        return v[0] if key == "tile" else v
    expected = [r + ("guadalupe",) for r in src["newer"]]
    expected += [r + ("fuji",) for r in src["older"] if k(r) not in newer_keys]
    dropped = sum(1 for r in src["older"] if k(r) in newer_keys)
    return expected, dropped


@pytest.mark.parametrize("table", [t.name for t in schema.DATA_TABLES if t.name != "version"])
def test_dedup_views_hold_each_key_once_from_the_preferred_source(combined, table):
    dsn, t = combined["dsn"], combined["target"]
    tab = schema.table(table)
    key_table, key = combine.dedup_rule(tab)
    columns = [c for c in tab.names if c not in finalize.FLAG_COLUMNS]
    expected, dropped = _expected_dedup(dsn, combined, table, columns,
                                        "tile" if key_table == "tile" else key)
    got = _rows(dsn, _q(t, table), columns + ["specprod"])
    assert Counter(got) == Counter(expected)
    if table in ("tile", "ztile", "photometry", "target", "zpix"):
        assert dropped, f"the fixture must make {table} overlap"
    # each key once
    unique = {"tile": ["tileid"], "photometry": ["targetid"],
              "target": ["targetid", "survey", "tileid"],
              "zpix": ["targetid", "survey", "program"],
              "ztile": ["targetid", "spgrp", "spgrpval", "tileid"]}.get(table, tab.primary_key)
    dup = query(dsn, f"SELECT {', '.join(unique)}, count(*) FROM {_q(t, table)} "
                     f"GROUP BY {', '.join(unique)} HAVING count(*) > 1 LIMIT 3")
    assert dup == []


def test_overlapping_tile_and_target_come_from_the_newer_source(combined):
    dsn, t = combined["dsn"], combined["target"]
    assert dict(query(dsn, f"SELECT tileid, specprod FROM {_q(t, 'tile')}")) == {
        **{tile: "fuji" for tile in OLDER_TILES}, **{tile: "guadalupe" for tile in NEWER_TILES}}
    # tile 100 was re-observed: the combination has the newer LASTNIGHT's redshifts only
    nights = query(dsn, f"SELECT DISTINCT z.lastnight, t.lastnight FROM {_q(t, 'ztile')} z "
                        f"JOIN {_q(combined['newer'], 'tile')} t USING (tileid) "
                        "WHERE tileid = 100")
    older_night = query(dsn, f"SELECT lastnight FROM {_q(combined['older'], 'tile')} "
                             "WHERE tileid = 100")[0][0]
    assert len(nights) == 1 and nights[0][0] == nights[0][1] > older_night


def _reference_flags(conn, rows, ref_schema):
    """finalize.update_primary on a real ztile table holding ``rows`` (id, targetid,
    survey, tileid, zwarn, tsnr2_lrg); -> {id: (six flags)}."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(ref_schema)))
        cur.execute(ddl.create_table_sql(schema.Table(
            "ztile", schema.ZTILE.spec, primary_key=("id",)), ref_schema))
        defaults = []
        for c in schema.ZTILE.columns:
            defaults.append(sql.SQL("FALSE") if c.pgtype == "boolean" else
                            sql.SQL("''") if c.pgtype.startswith("varchar") else sql.SQL("0"))
        given = ("id", "targetid", "survey", "tileid", "zwarn", "tsnr2_lrg")
        values = [sql.SQL("v.{}").format(sql.Identifier(c)) if c in given else d
                  for c, d in zip(schema.ZTILE.names, defaults)]
        cur.execute(sql.SQL("CREATE TEMPORARY TABLE v (id numeric(39), targetid bigint, "
                            "survey varchar(7), tileid integer, zwarn bigint, "
                            "tsnr2_lrg real)"))
        execute_values(cur, "INSERT INTO v VALUES %s", rows)
        cur.execute(sql.SQL("INSERT INTO {} SELECT {} FROM v").format(
            sql.Identifier(ref_schema, "ztile"), sql.SQL(", ").join(values)))
        finalize.update_primary(conn, ref_schema)
        cur.execute(sql.SQL("SELECT id, {} FROM {}").format(
            sql.SQL(", ").join(map(sql.Identifier, finalize.FLAG_COLUMNS)),
            sql.Identifier(ref_schema, "ztile")))
        return {r[0]: r[1:] for r in cur.fetchall()}


@pytest.mark.parametrize("table", ["ztile", "zpix"])
def test_primary_flags_equal_finalize_on_a_real_table(combined, table):
    """The view's recomputed flags equal finalize.update_primary's on a real ztile table
    holding the same de-duplicated rows (zpix: tileid 0 in the reference table, so the
    tie-break is the id, as the zpix view's)."""
    dsn, t = combined["dsn"], combined["target"]
    flags = ", ".join(finalize.FLAG_COLUMNS)
    tileid = "tileid" if table == "ztile" else "0"
    view = query(dsn, f"SELECT id, targetid, survey, {tileid}, zwarn, tsnr2_lrg, {flags} "
                      f"FROM {_q(t, table)}")
    ref_schema = "test_" + secrets.token_hex(4)
    conn = psycopg2.connect(dsn)
    try:
        reference = _reference_flags(conn, [r[:6] for r in view], ref_schema)
        conn.rollback()
    finally:
        conn.close()
    got = {r[0]: r[6:] for r in view}
    assert got == reference
    # the recomputation matters: some targets are in both sources, and a stored flag
    # (each source's own) differs from the combination's
    stored = {}
    for role in ("older", "newer"):
        stored.update({r[0]: r[1:] for r in query(
            dsn, f"SELECT id, {flags} FROM {_q(combined[role], table)}")})
    sources = dict(query(dsn, f"SELECT id, specprod FROM {_q(t, table)}"))
    assert sum(1 for i in got if got[i] != stored[i]) > 0
    multi = query(dsn, f"SELECT targetid FROM {_q(t, table)} GROUP BY targetid "
                       "HAVING count(DISTINCT specprod) > 1")
    assert multi, f"some TARGETID must have {table} rows from both sources"
    assert set(sources.values()) == {"fuji", "guadalupe"}
    # one primary per TARGETID
    assert query(dsn, f"SELECT count(*) FROM (SELECT targetid FROM {_q(t, table)} GROUP BY "
                      "targetid HAVING sum(zcat_primary::int) <> 1) AS x") == [(0,)]


def _q3c_schemas(plan, table="photometry", index=Q3C_INDEX):
    """Schemas whose ``table`` is read through ``index`` somewhere in an EXPLAIN (FORMAT
    JSON, VERBOSE) plan: an Index Scan naming both, or a Bitmap Heap Scan over them."""
    found = set()

    def walk(node):
        yield node
        for child in node.get("Plans", []):
            yield from walk(child)
    for node in walk(plan):
        if node.get("Relation Name") != table:
            continue
        if node.get("Index Name") == index or any(
                n.get("Index Name") == index for n in walk(node)):
            found.add(node["Schema"])
    return found


CONE = "q3c_radial_query({p}ra, {p}dec, %(ra)s, %(dec)s, 0.01)"
BRUTE = "q3c_dist({p}ra, {p}dec, %(ra)s, %(dec)s) < 0.01"


@pytest.mark.parametrize("query_text", [
    "SELECT * FROM {t}.photometry WHERE {cone}",
    "SELECT * FROM {t}.photometry_all WHERE {cone}",
    "SELECT z.targetid, z.z, z.zcat_primary, p.ra, p.dec, z.specprod FROM {t}.ztile AS z "
    "JOIN {t}.photometry AS p USING (targetid) WHERE {cone}",
    "SELECT z.targetid, z.z, p.ra, p.dec, z.specprod FROM {t}.ztile_all AS z "
    "JOIN {t}.photometry_all AS p USING (targetid) WHERE {cone}",
], ids=["photometry", "photometry_all", "ztile-photometry", "ztile_all-photometry_all"])
def test_cone_search_uses_each_sources_q3c_index(combined, query_text):
    """Planner settings as they are (enable_seqscan on): a 36" cone around an object both
    sources hold; the q3c predicate reaches each source's photometry table, whose q3c
    index is used, and finds what an angular-distance filter finds."""
    dsn, t = combined["dsn"], combined["target"]
    ra, dec = query(dsn, f"SELECT ra, dec FROM {_q(combined['older'], 'photometry')} "
                         f"WHERE targetid IN (SELECT targetid FROM "
                         f"{_q(combined['newer'], 'photometry')}) AND ra > 0 "
                         "ORDER BY targetid LIMIT 1")[0]
    p = "p." if "AS p" in query_text else ""
    text = query_text.format(t=f'"{t}"', cone=CONE.format(p=p))
    args = {"ra": ra, "dec": dec}
    plan = query(dsn, "EXPLAIN (FORMAT JSON, VERBOSE) " + text, args)[0][0][0]["Plan"]
    assert _q3c_schemas(plan) == {combined["older"], combined["newer"]}, json.dumps(plan)[:3000]
    rows = query(dsn, text, args)
    brute = query(dsn, query_text.format(t=f'"{t}"', cone=BRUTE.format(p=p)), args)
    assert rows and Counter(rows) == Counter(brute)


# --- refusals and --replace ------------------------------------------------------------

def test_refusals(combined, schemas):
    dsn, t, older, newer = (combined["dsn"], combined["target"], combined["older"],
                            combined["newer"])
    other = "test_" + secrets.token_hex(4)

    def refused(*argv, says):
        r = _cli("combine", *argv, "--no-grant", dsn=dsn)
        assert r.returncode == 2, (r.returncode, r.stderr)
        assert says in r.stderr, r.stderr
        assert query(dsn, "SELECT 1 FROM pg_namespace WHERE nspname = %s", (other,)) == []
    missing = "test_missing_" + secrets.token_hex(2)
    refused("--schema", other, older, missing,
            says=f"source schema {missing} does not exist")
    refused("--schema", other, older, says="at least two")
    refused("--schema", other, older, older, says="more than once")
    refused("--schema", older, older, newer, says="cannot be one of its sources")
    refused("--schema", other, older, t, says=f"source schema {t} is not a specprod-db "
            "production schema: photometry is not a table (a combined schema?")
    refused("--schema", other, older, "pg_catalog",
            says="source schema pg_catalog is not a specprod-db production schema")
    # a half-made schema: tables missing, or a column missing
    broken = schemas()
    query(dsn, f'ALTER TABLE "{broken}".ztile DROP COLUMN zcat_primary')
    refused("--schema", other, older, broken, says="ztile lacks column(s) zcat_primary")
    # same production name twice
    twin = schemas()
    query(dsn, f"UPDATE \"{twin}\".version SET version = 'fuji' WHERE package = 'specprod'")
    refused("--schema", other, older, twin, says="'fuji'")
    # the target exists: without --replace, or not a combination
    r = _cli("combine", "--schema", t, older, newer, "--no-grant", dsn=dsn)
    assert r.returncode == 2 and "already exists; --replace" in r.stderr
    production = schemas()
    r = _cli("combine", "--schema", production, older, newer, "--replace", "--no-grant",
             dsn=dsn)
    assert r.returncode == 2 and "is not a combination made by specprod-db combine" in r.stderr
    assert query(dsn, f'SELECT count(*) FROM "{production}".version')[0][0] > 0


def test_replace_and_schema_name_fallback(combined, schemas, pg_dsn):
    """--replace recreates a combination (also over other sources); a source without a
    'specprod' version row is named after its schema; an empty production combines."""
    dsn, t, older = combined["dsn"], combined["target"], combined["older"]
    empty = schemas()
    query(dsn, f'DELETE FROM "{empty}".version')
    before = query(dsn, f'SELECT count(*) FROM "{t}".ztile_all')[0][0]
    # something outside depends on a view: --replace refuses and leaves it
    outside = schemas()
    query(dsn, f'CREATE VIEW "{outside}".mine AS SELECT * FROM "{t}".tile')
    r = _cli("combine", "--schema", t, older, empty, "--replace", "--no-grant", dsn=dsn)
    assert r.returncode == 2 and "depend on it or its views" in r.stderr, r.stderr
    assert query(dsn, f'SELECT count(*) FROM "{t}".ztile_all')[0][0] == before
    query(dsn, f'DROP VIEW "{outside}".mine')
    try:
        r = _cli("combine", "--schema", t, older, empty, "--replace", "--no-grant", dsn=dsn)
        assert r.returncode == 0, r.stderr
        assert query(dsn, f'SELECT rank, specprod, specprod_from FROM "{t}".sources '
                          "ORDER BY rank") == [(1, "fuji", "version table"),
                                               (2, empty, "schema name")]
        n_older = query(dsn, f'SELECT count(*) FROM "{older}".ztile')[0][0]
        assert query(dsn, f'SELECT count(*) FROM "{t}".ztile')[0][0] == n_older
        assert query(dsn, f'SELECT count(*) FROM "{t}".ztile_all')[0][0] == n_older
    finally:
        r = _cli("combine", "--schema", t, older, combined["newer"], "--replace",
                 "--no-grant", dsn=dsn)
        assert r.returncode == 0, r.stderr
    assert query(dsn, f'SELECT count(*) FROM "{t}".ztile_all')[0][0] == before
