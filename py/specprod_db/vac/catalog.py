"""The VAC tables of a schema in the database catalog: names, descriptions, lock, swap,
list and drop.

A VAC called ``NAME`` is the table ``S.vac_NAME`` (:func:`table_name`); a load builds
``S.vac_NAME__new`` and :func:`swap` replaces the old table by it in one short
transaction (catalog changes only: drop, rename with its constraints and indexes, the old
one's readers), retried while readers hold the old table (:data:`SWAP_ATTEMPT`).

The description of each VAC is its table comment (JSON, with the :data:`MARKER` key), so
it moves with the table through the swap and disappears with it: no bookkeeping table can
disagree with the tables.  :func:`describe_all` lists them, :func:`drop` drops one, and
only a table with such a comment is ever replaced or dropped.
"""
import json
import re
import time
import zlib

import psycopg2
from psycopg2 import sql

from specprod_db.db import ddl
from specprod_db.db.connect import schema_exists
from specprod_db.db.sql import qualified, reading, transaction
from specprod_db.errors import RunRefused
from specprod_db.log import get_logger

#: Table name prefix of every VAC (never a production or bookkeeping table's name).
PREFIX = "vac_"

#: Suffix of the table being built by a load.
BUILDING = "__new"

#: Marker key of a VAC's table comment (JSON): which tables ``vac list`` shows.
MARKER = "specprod_db_vac"

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
MAX_NAME = 32

#: Referenced keys, most specific first: a VAC whose key columns include every column
#: of one gets a foreign key to it (unless a more specific one already covers them).
REFERENCES = (
    ("ztile", ("targetid", "spgrp", "spgrpval", "tileid")),
    ("zpix", ("targetid", "survey", "program")),
    ("photometry", ("targetid",)),
    ("tile", ("tileid",)),
)

#: Seconds the swap waits for its lock in one attempt (readers queue behind it meanwhile).
SWAP_ATTEMPT = 2.0

#: Advisory-lock class of VAC loads (one load per schema and VAC name).
LOCK_NAMESPACE = 0x5641


def table_name(name):
    """The table of the VAC ``name``: ``vac_NAME``."""
    return PREFIX + name


def check_name(name):
    """The VAC name, or :class:`RunRefused` when it cannot be one."""
    if not NAME_PATTERN.match(name or "") or len(name) > MAX_NAME:
        raise RunRefused(f"VAC name {name!r}: lower-case letters, digits and single "
                         f"underscores, starting with a letter, at most {MAX_NAME} "
                         f"characters (the table is {PREFIX}NAME)")
    return name


def object_names(table):
    """Names of a VAC table's constraints and indexes (by its table name)."""
    return {"pkey": f"{table}_pkey", "q3c": f"ix_{table}_q3c_ang2ipix",
            **{f"fk_{ref}": f"{table}_{ref}_fkey" for ref, _ in REFERENCES}}


def schema_tables(cur, schema_name):
    """The names of the schema's tables."""
    cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema_name,))
    return {r[0] for r in cur.fetchall()}


def column_names(cur, schema_name, table_name):
    """The table's columns, from pg_attribute: information_schema shows only those the
    role may use, and a VAC must not lose its foreign key for a missing privilege (the
    load says so instead)."""
    cur.execute("SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND "
                "c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped",
                (schema_name, table_name))
    return {r[0] for r in cur.fetchall()}


def read_description(cur, schema_name, table_name):
    """The VAC description (dict) in a table's comment, or None (not a VAC table)."""
    cur.execute("SELECT obj_description(c.oid, 'pg_class') FROM pg_class c JOIN "
                "pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND "
                "c.relname = %s AND c.relkind = 'r'", (schema_name, table_name))
    row = cur.fetchone()
    if not row or not row[0]:
        return None
    try:
        info = json.loads(row[0])
    except ValueError:
        return None
    return info if isinstance(info, dict) and info.get(MARKER) else None


def lock_vac(conn, schema_name, name):
    """One load or drop of a VAC at a time (a session advisory lock), else RunRefused."""
    key = zlib.crc32(f"{schema_name}.{name}".encode()) & 0x7FFFFFFF
    with transaction(conn, original_error=True) as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s, %s)", (LOCK_NAMESPACE, key))
        got = cur.fetchone()[0]
    if not got:
        raise RunRefused(f"another load or drop of VAC {name} in schema {schema_name} is "
                         f"running; not starting")


def check_schema(conn, schema_name):
    """:class:`RunRefused` unless the schema exists (no transaction stays open)."""
    with reading(conn):
        exists = schema_exists(conn, schema_name)
    if not exists:
        raise RunRefused(f"schema {schema_name} does not exist (create it: CREATE SCHEMA, "
                         f"or specprod-db init for a production)")


def check_privileges(conn, schema_name: str, name: str) -> None:
    """:class:`RunRefused` (exit 2, one line) when this role cannot load VAC ``name``:
    it needs USAGE and CREATE on the schema (the new table is created there, then filled
    and renamed), and, to replace a loaded VAC, to own its table (only its owner may drop
    it) -- checked before any file is converted."""
    final = table_name(name)
    with reading(conn) as cur:
        cur.execute("SELECT current_user, has_schema_privilege(n.oid, 'USAGE'), "
                    "has_schema_privilege(n.oid, 'CREATE') FROM pg_namespace n WHERE "
                    "n.nspname = %s", (schema_name,))
        user, usage, create = cur.fetchone()
        cur.execute("SELECT pg_get_userbyid(c.relowner), pg_has_role(c.relowner, 'USAGE') "
                    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE "
                    "n.nspname = %s AND c.relname = %s", (schema_name, final))
        owner = cur.fetchone()
    if not (usage and create):
        lacks = " and ".join(p for p, ok in (("USAGE", usage), ("CREATE", create)) if not ok)
        raise RunRefused(f"permission denied: database role {user} lacks {lacks} on schema "
                         f"{schema_name}, so it cannot create {schema_name}.{final} (GRANT "
                         f"{lacks.replace(' and ', ', ')} ON SCHEMA {schema_name} TO {user}, "
                         f"or load as the schema's owner); nothing loaded")
    if owner is not None and not owner[1]:
        raise RunRefused(f"permission denied: {schema_name}.{final} belongs to role "
                         f"{owner[0]}; role {user} cannot replace it (only its owner, or a "
                         f"member of that role, can drop it); nothing loaded")


def permission_refused(err, conn, doing: str) -> RunRefused:
    """The :class:`RunRefused` of a permission error (SQLSTATE 42501) from the server,
    in one line naming the role and what it was doing."""
    user = "?"
    try:
        with reading(conn, fresh=True) as cur:
            cur.execute("SELECT current_user")
            user = cur.fetchone()[0]
    except psycopg2.Error:
        pass
    return RunRefused(f"permission denied: database role {user}, {doing}: "
                      f"{' '.join(str(err).split())}; nothing loaded")


def swap(conn, schema_name, name, lock_timeout=300.0):
    """Replace ``vac_NAME`` by ``vac_NAME__new`` in one short transaction (drop, rename,
    same readers); retried while readers hold the old table, at most ``lock_timeout``
    seconds, else the new table is dropped and :class:`RunRefused` raised."""
    final = table_name(name)
    new = final + BUILDING
    old_names, new_names = object_names(final), object_names(new)
    deadline = time.time() + lock_timeout
    while True:
        try:
            with transaction(conn) as cur:
                cur.execute("SELECT set_config('lock_timeout', %s, true)",
                            (f"{int(SWAP_ATTEMPT * 1000)}ms",))
                present = schema_tables(cur, schema_name)
                readers = []
                if final in present:
                    if read_description(cur, schema_name, final) is None:
                        raise RunRefused(f"{schema_name}.{final} exists and is not a VAC "
                                         f"loaded by specprod-db; not replacing it")
                    readers = ddl.table_readers(cur, schema_name, final)
                    cur.execute(sql.SQL("DROP TABLE {}").format(
                        qualified(schema_name, final)))
                elif "photometry" in present:
                    readers = ddl.table_readers(cur, schema_name, "photometry")
                cur.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                    qualified(schema_name, new), sql.Identifier(final)))
                cur.execute("SELECT conname FROM pg_constraint WHERE conrelid = "
                            "%s::regclass", (f'"{schema_name}"."{final}"',))
                constraints = {r[0] for r in cur.fetchall()}
                for kind, old_name in new_names.items():
                    if old_name in constraints:
                        cur.execute(sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}")
                                    .format(qualified(schema_name, final),
                                            sql.Identifier(old_name),
                                            sql.Identifier(old_names[kind])))
                cur.execute("SELECT 1 FROM pg_indexes WHERE schemaname = %s AND indexname "
                            "= %s", (schema_name, new_names["q3c"]))
                if cur.fetchone():
                    cur.execute(sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                        qualified(schema_name, new_names["q3c"]),
                        sql.Identifier(old_names["q3c"])))
                for role in readers:
                    cur.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(
                        qualified(schema_name, final), sql.Identifier(role)))
            return readers
        except psycopg2.errors.LockNotAvailable:  # rolled back
            get_logger().info("vac %s: %s.%s is in use; the replacement waits", name,
                              schema_name, final)
            if time.time() >= deadline:
                drop_building(conn, schema_name, name)
                raise RunRefused(f"{schema_name}.{final} stayed in use for "
                                 f"{lock_timeout:.0f} s: not replaced (the new version is "
                                 f"discarded; rerun when its readers are done)") from None
            time.sleep(0.2)
        except psycopg2.errors.DependentObjectsStillExist as err:
            drop_building(conn, schema_name, name)
            raise RunRefused(f"{schema_name}.{final} cannot be replaced: "
                             f"{' '.join(str(err).split())}; the old version is kept"
                             ) from None
        except psycopg2.errors.InsufficientPrivilege as err:
            refused = permission_refused(err, conn, f"replacing {schema_name}.{final}")
            drop_building(conn, schema_name, name)
            raise refused from None


def drop_building(conn, schema_name, name):
    """Drop ``vac_NAME__new`` if a load left it (whatever transaction is open on
    ``conn`` is rolled back first)."""
    with transaction(conn, fresh=True, original_error=True) as cur:
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(
            qualified(schema_name, table_name(name) + BUILDING)))


def describe_all(conn, schema_name):
    """Every VAC of a schema: [dict] from the table comments, with the table's name."""
    out = []
    with reading(conn) as cur:
        cur.execute("SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = "
                    "c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r' AND "
                    "c.relname LIKE 'vac\\_%%' ORDER BY 1", (schema_name,))
        for (relname,) in cur.fetchall():
            if relname.endswith(BUILDING):
                continue
            info = read_description(cur, schema_name, relname)
            if info is not None:
                out.append(dict(info, table=f"{schema_name}.{relname}"))
    return out


def drop(conn, schema_name, name, lock_timeout=300.0):
    """Drop the VAC ``name`` (only a table this module made); True when it existed."""
    check_name(name)
    check_schema(conn, schema_name)
    lock_vac(conn, schema_name, name)
    final = table_name(name)
    deadline = time.time() + lock_timeout
    while True:
        try:
            with transaction(conn) as cur:
                cur.execute("SELECT set_config('lock_timeout', %s, true)",
                            (f"{int(SWAP_ATTEMPT * 1000)}ms",))
                exists = final in schema_tables(cur, schema_name)
                if exists:
                    if read_description(cur, schema_name, final) is None:
                        raise RunRefused(f"{schema_name}.{final} is not a VAC loaded by "
                                         f"specprod-db; not dropping it")
                    cur.execute(sql.SQL("DROP TABLE {}").format(
                        qualified(schema_name, final)))
                    cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(
                        qualified(schema_name, final + BUILDING)))
            if not exists:
                drop_building(conn, schema_name, name)
            return exists
        except psycopg2.errors.LockNotAvailable:  # rolled back
            if time.time() >= deadline:
                raise RunRefused(f"{schema_name}.{final} stayed in use for "
                                 f"{lock_timeout:.0f} s: not dropped") from None
            time.sleep(0.2)
        except psycopg2.errors.DependentObjectsStillExist as err:
            raise RunRefused(f"{schema_name}.{final} cannot be dropped: "
                             f"{' '.join(str(err).split())}") from None
        except psycopg2.errors.InsufficientPrivilege as err:
            refused = permission_refused(err, conn, f"dropping {schema_name}.{final}")
            raise RunRefused(str(refused).replace("; nothing loaded", "; not dropped")) \
                from None
