"""``specprod-db maintain`` on a loaded small mock production: a report per table, CLUSTER
with ``always`` and never with ``never``; ``auto`` clusters a table made out of q3c order
or bloated on purpose and leaves an ordered one alone; CLUSTER waits for its lock at most
``--lock-timeout`` while ``never`` runs beside a reader; a running load refuses CLUSTER."""
import json
import secrets
import subprocess

import psycopg2
import pytest

from conftest import CLI, query
from test_history import load_in_process

from specprod_db import schema

from specprod_db.db import ddl

from specprod_db.db.connect import connect
from specprod_db.ops import maintain
from specprod_db.db import lock

Q3C_TABLES = ("photometry", "tile", "exposure", "fiberassign")


@pytest.fixture(scope="module")
def loaded(pg_dsn, small_production, tmp_path_factory):
    name = "test_" + secrets.token_hex(4)
    conn = connect(pg_dsn)
    ddl.create_schema(conn, name)
    conn.close()
    try:
        assert load_in_process(pg_dsn, name, small_production[0],
                               tmp_path_factory.mktemp("maintain") / "stage") in (0, 1)
        # autovacuum would clear the dead rows the bloat test measures
        query(pg_dsn, f'ALTER TABLE "{name}".fiberassign SET (autovacuum_enabled = false)')
        yield name
    finally:
        query(pg_dsn, f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def run(dsn, name, *options):
    r = subprocess.run(CLI + ["maintain", "--schema", name, "--db", dsn, "--json", *options],
                       capture_output=True, text=True, timeout=120)
    report = json.loads(r.stdout) if r.stdout.strip() else None
    return r.returncode, report, r.stderr


def files(dsn, name):
    """relfilenode per q3c table: a CLUSTER writes the table anew (new file)."""
    return dict(query(dsn, """SELECT c.relname, c.relfilenode FROM pg_class c
                              JOIN pg_namespace n ON n.oid = c.relnamespace
                              WHERE n.nspname = %s AND c.relname = ANY(%s)""",
                      (name, list(Q3C_TABLES))))


def by_table(report):
    return {e["table"]: e for e in report["tables"]}


def test_never_then_always_then_auto(loaded, pg_dsn):
    before = files(pg_dsn, loaded)
    code, report, err = run(pg_dsn, loaded, "--cluster", "never")
    assert code == 0, err
    entries = by_table(report)
    assert set(entries) == {t.name for t in schema.TABLES}
    assert all(e["vacuum_seconds"] >= 0 and e["pages"] >= 0 for e in entries.values())
    for t in Q3C_TABLES:
        assert entries[t]["clustered"] is False and entries[t]["reason"] == "--cluster never"
        assert entries[t]["q3c_index"] == f"ix_{t}_q3c_ang2ipix"
        assert entries[t]["correlation"] is not None
    assert "q3c_index" not in entries["ztile"]
    assert files(pg_dsn, loaded) == before
    # the loader's daily path leaves photometry out of q3c order: auto would cluster it
    assert abs(entries["photometry"]["correlation"]) < maintain.MIN_CORRELATION

    code, report, err = run(pg_dsn, loaded, "--cluster", "always")
    assert code == 0, err
    entries = by_table(report)
    after = files(pg_dsn, loaded)
    for t in Q3C_TABLES:
        assert entries[t]["clustered"] is True, entries[t]
        assert entries[t]["correlation_after"] > 0.99
        assert after[t] != before[t]
    assert query(pg_dsn, """SELECT count(*) FROM pg_index i JOIN pg_class c
                            ON c.oid = i.indexrelid JOIN pg_namespace n
                            ON n.oid = c.relnamespace WHERE n.nspname = %s
                            AND i.indisclustered""", (loaded,)) == [(4,)]

    # everything in order: auto leaves every table alone, saying why
    code, report, err = run(pg_dsn, loaded)
    assert code == 0, err
    entries = by_table(report)
    assert report["cluster"] == "auto"
    assert not any(entries[t]["clustered"] for t in Q3C_TABLES)
    assert entries["photometry"]["reason"].startswith("in q3c order")
    assert entries["tile"]["reason"].startswith("small")
    assert files(pg_dsn, loaded) == after


def test_auto_clusters_what_is_out_of_order_or_bloated(loaded, pg_dsn):
    run(pg_dsn, loaded, "--cluster", "always")
    s = f'"{loaded}"'
    # fiberassign rows written again in an order unrelated to the sky (nothing references
    # fiberassign), and vacuumed, so that only the order differs
    query(pg_dsn, f"CREATE TEMPORARY TABLE f AS SELECT * FROM {s}.fiberassign; "
                  f"DELETE FROM {s}.fiberassign; "
                  f"INSERT INTO {s}.fiberassign SELECT * FROM f ORDER BY md5(id::text)")
    query_autocommit(pg_dsn, f"VACUUM {s}.fiberassign")
    before = files(pg_dsn, loaded)
    code, report, err = run(pg_dsn, loaded)
    assert code == 0, err
    entries = by_table(report)
    fa = entries["fiberassign"]
    assert abs(fa["correlation"]) < maintain.MIN_CORRELATION, fa
    assert fa["clustered"] and fa["reason"].startswith("out of q3c order"), fa
    assert fa["correlation_after"] > 0.99
    assert not entries["photometry"]["clustered"], entries["photometry"]
    after = files(pg_dsn, loaded)
    assert after["fiberassign"] != before["fiberassign"]
    assert after["photometry"] == before["photometry"]

    # in order but half of it deleted: bloated
    query(pg_dsn, f"DELETE FROM {s}.fiberassign WHERE location % 2 = 0")
    code, report, err = run(pg_dsn, loaded)
    assert code == 0, err
    fa = by_table(report)["fiberassign"]
    assert fa["dead_fraction"] > maintain.MAX_DEAD_FRACTION, fa
    assert abs(fa["correlation"]) >= maintain.MIN_CORRELATION, fa
    assert fa["clustered"] and "bloated" in fa["reason"], fa
    assert files(pg_dsn, loaded)["fiberassign"] != after["fiberassign"]


def query_autocommit(dsn, statement):
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(statement)
    conn.close()


def test_cluster_waits_for_readers_at_most_the_timeout(loaded, pg_dsn):
    reader = psycopg2.connect(pg_dsn)  # a reader's open transaction: ACCESS SHARE
    try:
        with reader.cursor() as cur:
            cur.execute(f'SELECT count(*) FROM "{loaded}".photometry')
        before = files(pg_dsn, loaded)
        code, report, err = run(pg_dsn, loaded, "--cluster", "never")
        assert code == 0, err  # VACUUM's SHARE UPDATE EXCLUSIVE beside the reader
        code, report, err = run(pg_dsn, loaded, "--cluster", "always", "--lock-timeout", "1")
        assert code == 1, err
        entries = by_table(report)
        assert not entries["photometry"]["clustered"]
        assert "lock not obtained within 1.0 s" in entries["photometry"]["reason"]
        assert entries["fiberassign"]["clustered"]
        assert files(pg_dsn, loaded)["photometry"] == before["photometry"]
    finally:
        reader.close()


def test_a_running_load_refuses_cluster_not_vacuum(loaded, pg_dsn):
    holder = psycopg2.connect(pg_dsn)
    holder.autocommit = True
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s, %s)",
                        (lock.LOCK_NAMESPACE, lock.lock_key(loaded)))
        code, report, err = run(pg_dsn, loaded)
        assert code == 2 and "another load" in err and report is None
        code, report, err = run(pg_dsn, loaded, "--cluster", "never")
        assert code == 0, err
    finally:
        holder.close()


def test_text_report_and_missing_schema(loaded, pg_dsn):
    r = subprocess.run(CLI + ["maintain", "--schema", loaded, "--db", pg_dsn, "--cluster",
                              "never"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2 + len(schema.TABLES)
    assert any(ln.split()[0] == "photometry" and "--cluster never" in ln for ln in lines)
    r = subprocess.run(CLI + ["maintain", "--schema", loaded + "x", "--db", pg_dsn],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "does not exist" in r.stderr
