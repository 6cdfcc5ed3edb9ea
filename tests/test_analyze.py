"""Which tables a daily run ANALYZEs (:func:`specprod_db.load.finalize.stale_tables`).

Real tables on the test server; the server's statistics counters are flushed
asynchronously, so the test waits for them (polling ``pg_stat_user_tables``) before
each step that depends on them.
"""
import time

import psycopg2
import pytest

from specprod_db.load import finalize


def _stat(conn, schema_name, name):
    with conn.cursor() as cur:
        cur.execute("SELECT n_mod_since_analyze, last_analyze IS NOT NULL "
                    "FROM pg_stat_user_tables WHERE schemaname = %s AND relname = %s",
                    (schema_name, name))
        return cur.fetchone()


def _wait_for(conn, schema_name, name, ok, timeout=20):
    """Poll until ``ok(n_mod_since_analyze, analysed)`` (the counters are flushed by
    the writing backend when it exits or goes idle)."""
    deadline = time.monotonic() + timeout
    while True:
        conn.rollback()  # a new snapshot of the statistics
        state = _stat(conn, schema_name, name)
        if state and ok(*state):
            return state
        if time.monotonic() > deadline:
            pytest.fail(f"statistics of {name} never reached the expected state: {state}")
        time.sleep(0.1)


def _insert(dsn, schema_name, name, n, start=0):
    """``n`` rows from another connection, closed: its backend flushes its counters."""
    c = psycopg2.connect(dsn)
    with c, c.cursor() as cur:
        cur.execute(f'INSERT INTO "{schema_name}"."{name}" '
                    "SELECT g FROM generate_series(%s, %s) g", (start, start + n - 1))
    c.close()


@pytest.fixture
def conn(pg_dsn, schema_name):
    c = psycopg2.connect(pg_dsn)
    c.set_session(autocommit=False)
    with c.cursor() as cur:
        cur.execute(f'CREATE SCHEMA "{schema_name}"')
        for name in ("big", "fresh"):
            cur.execute(f'CREATE TABLE "{schema_name}"."{name}" (x bigint)')
    c.commit()
    yield c
    c.close()


def test_only_stale_tables_are_analyzed(pg_dsn, schema_name, conn):
    _insert(pg_dsn, schema_name, "big", 10000)
    _insert(pg_dsn, schema_name, "fresh", 10)
    _wait_for(conn, schema_name, "big", lambda mod, done: mod == 10000)
    _wait_for(conn, schema_name, "fresh", lambda mod, done: mod == 10)
    finalize.analyze(conn, schema_name, ["big"])
    conn.commit()
    _wait_for(conn, schema_name, "big", lambda mod, done: done and mod == 0)
    names = ["fresh", "big", "absent"]
    # never analysed: stale whatever changed; an absent table is not an error
    assert finalize.stale_tables(conn, schema_name, names) == ["fresh"]
    # 10,000 rows: stale from 50 + 10 % = 1,050 changed rows (the server's defaults)
    with conn.cursor() as cur:
        cur.execute("SELECT current_setting('autovacuum_analyze_threshold')::int, "
                    "current_setting('autovacuum_analyze_scale_factor')::float8")
        threshold, scale = cur.fetchone()
    limit = int(threshold + scale * 10000)
    assert finalize.stale_tables(conn, schema_name, names, {"big": limit - 1}) == ["fresh"]
    assert finalize.stale_tables(conn, schema_name, names,
                                 {"big": limit}) == ["fresh", "big"]
    # the changes of earlier runs add up (the server's n_mod_since_analyze)
    _insert(pg_dsn, schema_name, "big", limit - 100, start=10000)
    _wait_for(conn, schema_name, "big", lambda mod, done: mod == limit - 100)
    assert finalize.stale_tables(conn, schema_name, ["big"]) == []
    assert finalize.stale_tables(conn, schema_name, ["big"], {"big": 100}) == ["big"]
    finalize.analyze(conn, schema_name, ["big", "fresh"])
    conn.commit()
    _wait_for(conn, schema_name, "fresh", lambda mod, done: done)
    assert finalize.stale_tables(conn, schema_name, names) == []


def test_changed_rows_from_run_counts():
    counts = {"tile": 2, "ztile": 300, "ztile_deleted": 150, "primary": 40,
              "ztile_emline": 12, "photometry_deleted": 7, "potential": 0}
    assert finalize.changed_rows(counts) == {
        "tile": 2, "ztile": 490, "ztile_emline": 12, "photometry": 7, "potential": 0}
