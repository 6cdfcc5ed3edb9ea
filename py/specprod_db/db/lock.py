"""Before a load writes anything: the schema's advisory lock, write permission, the state.

``acquire_lock`` takes a session advisory lock per schema (a second load refuses to start
and names the running one); ``check_write_access`` refuses a database user that cannot
write every table; ``read_state`` reads ``tile_state`` joined with ``tile``.
"""
import re
import zlib
from collections.abc import Iterable
from typing import Any, Optional

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import connection

from specprod_db.db.sql import fetch_one, qualified, reading
from specprod_db.errors import RunRefused

#: Advisory lock class of specprod-db loads ('SP').
LOCK_NAMESPACE = 0x5350


def check_write_access(conn: connection, schema_name: str) -> None:
    """RunRefused unless the user may write every table of the schema (and use temp
    tables); checked before anything is written."""
    with reading(conn) as cur:
        cur.execute("""SELECT current_user, has_schema_privilege(%(s)s, 'USAGE'),
                              has_database_privilege(current_database(), 'TEMP')""",
                    {"s": schema_name})
        user, usage, temp = fetch_one(cur)
        cur.execute("""SELECT c.relname FROM pg_class c
                       JOIN pg_namespace n ON n.oid = c.relnamespace
                       WHERE n.nspname = %(s)s AND c.relkind = 'r' AND NOT (
                         has_table_privilege(c.oid, 'INSERT')
                         AND has_table_privilege(c.oid, 'UPDATE')
                         AND has_table_privilege(c.oid, 'DELETE')) ORDER BY 1""",
                    {"s": schema_name})
        lacking = [r[0] for r in cur.fetchall()] if usage else []
    if not usage or lacking or not temp:
        what = (f"USAGE on schema {schema_name}" if not usage else
                f"INSERT/UPDATE/DELETE on {schema_name}." + f", {schema_name}.".join(lacking)
                if lacking else "TEMP on the database")
        raise RunRefused(f"database user {user} lacks {what}; nothing written")


def lock_key(schema_name: str) -> int:
    """The advisory lock key of a schema (in the class :data:`LOCK_NAMESPACE`)."""
    return zlib.crc32(schema_name.encode()) & 0x7FFFFFFF


def acquire_lock(conn: connection, schema_name: str) -> None:
    """Session advisory lock per schema; RunRefused naming the running load if held.

    Taken, it leaves the caller's transaction open (the lock is the session's)."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s, %s)",
                    (LOCK_NAMESPACE, lock_key(schema_name)))
        if fetch_one(cur)[0]:
            return
    with reading(conn) as cur:  # the same transaction, rolled back: who holds it
        cur.execute("""SELECT a.pid, a.application_name, a.client_addr, a.backend_start
                       FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                       WHERE l.locktype = 'advisory' AND l.classid = %s AND l.objid = %s
                         AND l.granted""", (LOCK_NAMESPACE, lock_key(schema_name)))
        holder = cur.fetchone()
        cur.execute(sql.SQL("SELECT id, started, command FROM {} WHERE finished IS NULL "
                            "ORDER BY id DESC LIMIT 1").format(
            qualified(schema_name, "load_run")))
        run = cur.fetchone()
    who = f"backend pid {holder[0]} ({holder[1]}) since {holder[3]:%Y-%m-%d %H:%M:%S %Z}" \
        if holder else "another session"
    what = f"load run {run[0]} started {run[1]:%Y-%m-%d %H:%M:%S %Z}: {run[2]}" if run else ""
    raise RunRefused(f"another load of schema {schema_name} is running ({who}"
                     f"{'; ' + what if what else ''}); not starting")


def database_identity(conn: connection) -> str:
    """``SYSTEMID-DBNAME``: which database this is, whatever host name reached it (the
    cluster's system identifier and the database name); keys the stage directory."""
    try:
        with reading(conn) as cur:
            cur.execute("SELECT (SELECT system_identifier FROM pg_control_system()), "
                        "current_database()")
            system, name = fetch_one(cur)
    except psycopg2.Error:  # no right to read the control data: host and port
        if conn.closed:
            raise
        with reading(conn) as cur:
            cur.execute("SELECT current_database()")
            system, name = f"{conn.info.host}:{conn.info.port}", fetch_one(cur)[0]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{system}-{name}")


def read_state(conn: connection, schema_name: str,
               tiles: Optional[Iterable[int]] = None) -> dict[int, dict[str, Any]]:
    """``{tileid: row}`` of ``tile_state`` (its columns, and ``in_tile_table``: whether
    the tile's ``tile`` row exists); the caller ends the transaction.

    With ``tiles`` (a load's ``--tiles``), only those tiles' rows are whole; every other
    tile's has its status and ``in_tile_table`` (what the guard on deletes counts) and
    None elsewhere: the fingerprints and lines of every tile held made this read grow
    with the database (0.1 s at 1,000 tiles, 1.5 s at 25,000) for a run that plans a
    few."""
    wide = ("updated", "lastnight", "tile_hash", "exposures_hash", "redrock_fingerprint",
            "fiberassign_fingerprint", "line", "error")
    column = sql.SQL("s.{}") if tiles is None else \
        sql.SQL("CASE WHEN s.tileid = ANY(%(tiles)s) THEN s.{} END")
    with conn.cursor() as cur:
        cur.execute(sql.SQL("""SELECT s.tileid, s.status, {}, t.tileid IS NOT NULL
            FROM {} s LEFT JOIN {} t ON t.tileid = s.tileid""").format(
            sql.SQL(", ").join(column.format(sql.Identifier(c)) for c in wide),
            qualified(schema_name, "tile_state"), qualified(schema_name, "tile")),
            {"tiles": sorted({int(t) for t in tiles or ()})})
        keys = ("tileid", "status") + wide + ("in_tile_table",)
        return {r[0]: dict(zip(keys, r)) for r in cur.fetchall()}
