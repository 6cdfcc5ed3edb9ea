"""The transaction helpers of :mod:`specprod_db.db.sql` on a real server: what is
committed, what is rolled back, and which error a lost connection raises."""
import psycopg2
import pytest
from psycopg2.extensions import TRANSACTION_STATUS_IDLE, TRANSACTION_STATUS_INERROR

from specprod_db.db.sql import fetch_one, reading, transaction


@pytest.fixture
def conn(pg_dsn):
    conn = psycopg2.connect(pg_dsn)
    try:
        yield conn
    finally:
        conn.close()


def exists(conn, name):
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"pg_temp.{name}",))
        found = fetch_one(cur)[0]
    conn.rollback()
    return found


def test_transaction_commits_on_success(conn):
    with transaction(conn) as cur:
        cur.execute("CREATE TEMPORARY TABLE kept (x int)")
    assert conn.info.transaction_status == TRANSACTION_STATUS_IDLE
    assert exists(conn, "kept")


@pytest.mark.parametrize("original_error", [False, True])
def test_transaction_rolls_back_on_any_error(conn, original_error):
    with pytest.raises(KeyError):
        with transaction(conn, original_error=original_error) as cur:
            cur.execute("CREATE TEMPORARY TABLE dropped (x int)")
            raise KeyError("not a database error")
    assert conn.info.transaction_status == TRANSACTION_STATUS_IDLE
    assert not exists(conn, "dropped")


def test_reading_always_rolls_back(conn):
    with reading(conn) as cur:
        cur.execute("CREATE TEMPORARY TABLE read_only (x int)")
    assert conn.info.transaction_status == TRANSACTION_STATUS_IDLE
    assert not exists(conn, "read_only")
    with pytest.raises(psycopg2.errors.DivisionByZero):
        with reading(conn) as cur:
            cur.execute("SELECT 1 / 0")
    assert conn.info.transaction_status == TRANSACTION_STATUS_IDLE


def test_fresh_first_ends_a_failed_transaction(conn):
    with conn.cursor() as cur:
        with pytest.raises(psycopg2.errors.DivisionByZero):
            cur.execute("SELECT 1 / 0")
    assert conn.info.transaction_status == TRANSACTION_STATUS_INERROR
    with reading(conn, fresh=True) as cur:
        cur.execute("SELECT 2")
        assert fetch_one(cur) == (2,)
    with pytest.raises(psycopg2.errors.DivisionByZero):
        with conn.cursor() as cur:
            cur.execute("SELECT 1 / 0")
    with transaction(conn, fresh=True) as cur:
        cur.execute("CREATE TEMPORARY TABLE after_failure (x int)")
    assert exists(conn, "after_failure")


def _terminated(pg_dsn, conn):
    """``conn``'s session ended by the server (pg_terminate_backend from another one)."""
    other = psycopg2.connect(pg_dsn)
    try:
        other.autocommit = True
        with other.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
            assert fetch_one(cur) == (True,)
    finally:
        other.close()


def test_a_closed_connection_raises_the_rollback_error_by_default(pg_dsn, conn):
    """As the loader's tile transactions always did: the rollback of the closed
    connection raises InterfaceError (server_stop then asks the server why)."""
    _terminated(pg_dsn, conn)
    with pytest.raises(psycopg2.InterfaceError, match="connection already closed"):
        with transaction(conn) as cur:
            cur.execute("SELECT pg_sleep(0.1)")
    assert conn.closed


def test_original_error_keeps_the_error_that_closed_the_connection(pg_dsn, conn):
    _terminated(pg_dsn, conn)
    with pytest.raises(psycopg2.OperationalError) as info:
        with transaction(conn, original_error=True) as cur:
            cur.execute("SELECT pg_sleep(0.1)")
    assert not isinstance(info.value, psycopg2.InterfaceError)
    assert conn.closed


def test_reading_keeps_the_error_that_closed_the_connection(pg_dsn, conn):
    _terminated(pg_dsn, conn)
    with pytest.raises(psycopg2.OperationalError):
        with reading(conn) as cur:
            cur.execute("SELECT pg_sleep(0.1)")
    assert conn.closed
