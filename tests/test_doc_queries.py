"""The example queries of doc/queries.rst, each kept in one file of doc/queries/ (the page
includes the file), run against a loaded small mock production.

The files use psql variables: ``:"schema"`` becomes the quoted schema name and ``:name``
a bound parameter; every file must have a check here.
"""
import math
import re
import secrets
from pathlib import Path

import psycopg2
import pytest

from conftest import CLI, init, mock_env, query, run_mpi

QUERIES = Path(__file__).resolve().parent.parent / "doc" / "queries"
PAGE = QUERIES.parent / "queries.rst"


def bind(text, schema_name):
    """psql variables -> psycopg2: ``:"schema"`` as an identifier, ``:x`` as ``%(x)s``."""
    text = text.replace("%", "%%")
    text = re.sub(r"(?<![:\w]):([a-z_]+)\b", r"%(\1)s", text)
    return text.replace(':"schema"', '"' + schema_name.replace('"', '""') + '"')


def run(dsn, name, schema_name, **params):
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(bind((QUERIES / name).read_text(), schema_name), params)
            columns = [d.name for d in cur.description]
            return [dict(zip(columns, row)) for row in cur.fetchall()]
    finally:
        conn.close()


@pytest.fixture(scope="module")
def loaded(pg_dsn, mpiexec, small_production, tmp_path_factory):
    """The small mock production loaded once (1 rank) into a schema dropped afterwards."""
    name = "test_" + secrets.token_hex(4)
    init(pg_dsn, name)
    try:
        run_mpi(mpiexec, 1, CLI + ["load", "--schema", name, "--stage-dir",
                                   str(tmp_path_factory.mktemp("stage"))],
                env=mock_env(small_production[0], SPECPROD_DB_DSN=pg_dsn))
        yield name
    finally:
        query(pg_dsn, f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def centre(dsn, schema_name):
    """Position of an object with redshifts on two tiles (the mock overlaps tiles)."""
    rows = query(dsn, f'SELECT p.ra, p.dec FROM "{schema_name}".ztile z JOIN '
                 f'"{schema_name}".photometry p USING (targetid) GROUP BY p.targetid, p.ra, '
                 "p.dec HAVING count(DISTINCT z.tileid) > 1 ORDER BY p.targetid LIMIT 1")
    assert rows, "the small mock has targets observed on overlapping tiles"
    return rows[0]


def check_cone_search(dsn, schema_name):
    ra, dec = centre(dsn, schema_name)
    radius = 0.1
    rows = run(dsn, "cone_search.sql", schema_name, ra=ra, dec=dec, radius=radius)
    assert len(rows) > 1
    assert rows[0]["dist_arcsec"] == pytest.approx(0, abs=1e-6)
    distances = [r["dist_arcsec"] for r in rows]
    assert distances == sorted(distances) and distances[-1] <= radius * 3600
    brute = query(dsn, f'SELECT targetid FROM "{schema_name}".photometry '
                  "WHERE q3c_dist(ra, dec, %s, %s) < %s", (ra, dec, radius))
    assert sorted(r["targetid"] for r in rows) == sorted(t for t, in brute)


def check_tile_redshifts(dsn, schema_name):
    (tileid, n), = query(dsn, f'SELECT tileid, count(*) FROM "{schema_name}".ztile '
                         "WHERE survey = 'main' GROUP BY tileid "
                         "ORDER BY count(*) DESC, tileid LIMIT 1")
    rows = run(dsn, "tile_redshifts.sql", schema_name, tileid=tileid)
    assert len(rows) == n > 0  # every ztile row has its target and photometry rows
    assert {r["tileid"] for r in rows} == {tileid}
    assert len({r["targetid"] for r in rows}) == n
    for r in rows:
        assert math.isfinite(r["z"]) and r["spectype"] in ("GALAXY", "QSO", "STAR")
        assert r["survey"] == "main" and r["program"]
    assert any(r["desi_target"] or r["bgs_target"] or r["mws_target"] or r["scnd_target"]
               for r in rows)


def check_primary_redshifts_in_region(dsn, schema_name):
    ra, dec = centre(dsn, schema_name)
    for radius in (0.1, 180):  # a region, then the whole sky
        rows = run(dsn, "primary_redshifts_in_region.sql", schema_name,
                   ra=ra, dec=dec, radius=radius)
        targetids = [r["targetid"] for r in rows]
        assert len(targetids) == len(set(targetids)) > 0  # one row per object
        observed = query(dsn, f'SELECT DISTINCT z.targetid FROM "{schema_name}".ztile z JOIN '
                         f'"{schema_name}".photometry p USING (targetid) '
                         "WHERE q3c_dist(p.ra, p.dec, %s, %s) < %s", (ra, dec, radius))
        assert sorted(targetids) == sorted(t for t, in observed)
        assert any(r["zcat_nspec"] > 1 for r in rows)
        # the primary is a spectrum without warnings whenever the object has one
        clean = {t for t, in query(dsn, f'SELECT DISTINCT targetid FROM "{schema_name}".ztile '
                                   "WHERE zwarn = 0")}
        assert all(r["zwarn"] == 0 for r in rows if r["targetid"] in clean)


CHECKS = {f"{name[len('check_'):]}.sql": f for name, f in globals().items()
          if name.startswith("check_")}


def test_every_query_file_is_checked_and_on_the_page():
    files = sorted(p.name for p in QUERIES.glob("*.sql"))
    assert files and files == sorted(CHECKS)
    page = PAGE.read_text()
    for name in files:
        assert f".. literalinclude:: queries/{name}" in page, name


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_query(pg_dsn, loaded, name):
    CHECKS[name](pg_dsn, loaded)


def test_bind():
    assert bind('SELECT a::int FROM :"schema".t WHERE x = :ra', 'te"st') == \
        'SELECT a::int FROM "te""st".t WHERE x = %(ra)s'
