"""The DDL generated from :mod:`specprod_db.schema`: tables, indexes, grants, CLUSTER."""
from collections.abc import Collection, Iterable

from psycopg2 import sql
from psycopg2.extensions import connection, cursor

from specprod_db.db.connect import ensure_q3c, schema_exists
from specprod_db.db.sql import fetch_one, qualified, reading, transaction
from specprod_db.log import get_logger
from specprod_db.schema import DATA_TABLES, TABLES, Table


def create_table_sql(table: Table, schema_name: str) -> sql.Composed:
    """``CREATE TABLE IF NOT EXISTS`` for ``table`` in ``schema_name``."""
    parts = []
    for col in table.columns:
        null = sql.SQL("") if col.name in table.nullable else sql.SQL(" NOT NULL")
        parts.append(sql.SQL("{} {}{}").format(sql.Identifier(col.name),
                                               sql.SQL(col.ddl_type), null))
    parts.append(sql.SQL("PRIMARY KEY ({})").format(
        sql.SQL(", ").join(map(sql.Identifier, table.primary_key))))
    for name in table.unique_columns:
        parts.append(sql.SQL("UNIQUE ({})").format(sql.Identifier(name)))
    for name, ref in table.foreign_keys.items():
        rtable, rcol = ref.split(".")
        parts.append(sql.SQL("FOREIGN KEY ({}) REFERENCES {} ({})").format(
            sql.Identifier(name), qualified(schema_name, rtable), sql.Identifier(rcol)))
    return sql.SQL("CREATE TABLE IF NOT EXISTS {} (\n  {}\n)").format(
        qualified(schema_name, table.name), sql.SQL(",\n  ").join(parts))


def index_sql(table: Table, schema_name: str, q3c: bool = True) -> list[sql.Composed]:
    """``CREATE INDEX IF NOT EXISTS`` statements of ``table`` (unique, single, q3c)."""
    out = []
    target = qualified(schema_name, table.name)
    if table.unique:
        out.append(sql.SQL("CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} ({})").format(
            sql.Identifier(f"ix_{table.name}_unique"), target,
            sql.SQL(", ").join(map(sql.Identifier, table.unique))))
    for col in table.indexes:
        out.append(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
            sql.Identifier(f"ix_{table.name}_{col}"), target, sql.Identifier(col)))
    if q3c and table.q3c:
        ra, dec = table.q3c
        out.append(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (q3c_ang2ipix({}, {}))").format(
            sql.Identifier(f"ix_{table.name}_q3c_ang2ipix"), target,
            sql.Identifier(ra), sql.Identifier(dec)))
    return out


def secondary_index_names(table: Table) -> list[str]:
    """Names of the non-key indexes of ``table`` (dropped during an initial bulk load)."""
    names = [f"ix_{table.name}_{c}" for c in table.indexes]
    if table.q3c:
        names.append(f"ix_{table.name}_q3c_ang2ipix")
    return names


def drop_secondary_indexes(conn: connection, schema_name: str) -> list[str]:
    """Drop the non-key indexes of the data tables (before an initial bulk load).

    Primary keys, unique indexes and foreign keys stay: the writer's upserts need them.
    Returns the names dropped; :func:`create_indexes` builds them again.
    """
    dropped = []
    with transaction(conn, original_error=True) as cur:
        for table in DATA_TABLES:
            for name in secondary_index_names(table):
                cur.execute(sql.SQL("DROP INDEX IF EXISTS {}.{}").format(
                    sql.Identifier(schema_name), sql.Identifier(name)))
                dropped.append(name)
    return dropped


def missing_indexes(conn: connection, schema_name: str) -> list[str]:
    """Names of declared indexes that do not exist (after an interrupted initial load)."""
    declared = [n for t in DATA_TABLES for n in secondary_index_names(t)]
    with reading(conn) as cur:
        cur.execute("SELECT indexname FROM pg_indexes WHERE schemaname = %s", (schema_name,))
        present = {r[0] for r in cur.fetchall()}
    return [n for n in declared if n not in present]


def create_indexes(conn: connection, schema_name: str) -> None:
    """Create every index of every table that is missing (idempotent)."""
    with transaction(conn, original_error=True) as cur:
        for table in TABLES:
            for statement in index_sql(table, schema_name):
                cur.execute(statement)


def create_schema(conn: connection, schema_name: str, overwrite: bool = False) -> bool:
    """Create ``schema_name`` with every table and index (idempotent).

    With ``overwrite`` the schema is dropped first (the caller asks for confirmation).
    Returns True when tables were created, False when everything already existed.
    """
    log = get_logger()
    with transaction(conn, original_error=True) as cur:
        ensure_q3c(conn)
        if overwrite:
            log.warning("dropping schema %s and everything in it", schema_name)
            cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(schema_name)))
        cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s", (schema_name,))
        before = fetch_one(cur)[0]
        # not CREATE SCHEMA IF NOT EXISTS on an existing schema: PostgreSQL checks the
        # database's CREATE privilege first, which a role owning the schema may lack
        if overwrite or not schema_exists(conn, schema_name):
            cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                sql.Identifier(schema_name)))
        for table in TABLES:
            cur.execute(create_table_sql(table, schema_name))
            for statement in index_sql(table, schema_name):
                cur.execute(statement)
        cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s", (schema_name,))
        after = fetch_one(cur)[0]
    return after > before


def table_readers(cur: cursor, schema_name: str, table_name: str) -> list[str]:
    """Roles other than the owner with SELECT on a table (to give the same on tables made
    later: a migration's, a VAC's)."""
    cur.execute("""SELECT DISTINCT g.grantee FROM information_schema.role_table_grants g
                   JOIN pg_namespace n ON n.nspname = g.table_schema
                   JOIN pg_class c ON c.relname = g.table_name AND c.relnamespace = n.oid
                   WHERE g.table_schema = %s AND g.table_name = %s
                     AND g.privilege_type = 'SELECT'
                     AND g.grantee <> pg_get_userbyid(c.relowner)""",
                (schema_name, table_name))
    return sorted(r[0] for r in cur.fetchall())


def grant_read(conn: connection, schema_name: str, roles: Iterable[str]) -> list[str]:
    """Read access for ``roles`` on the schema, its tables, sequences and future tables.

    A role that does not exist gets a warning, not an error.  Returns the roles granted.
    """
    log = get_logger()
    granted = []
    with transaction(conn, original_error=True) as cur:
        for role in roles:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
            if cur.fetchone() is None:
                log.warning("role %s does not exist: no read access granted to it", role)
                continue
            s, r = sql.Identifier(schema_name), sql.Identifier(role)
            for statement in (
                    "GRANT USAGE ON SCHEMA {s} TO {r}",
                    "GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {r}",
                    "GRANT SELECT ON ALL SEQUENCES IN SCHEMA {s} TO {r}",
                    "ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT SELECT ON TABLES TO {r}",
                    "ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT SELECT ON SEQUENCES TO {r}"):
                cur.execute(sql.SQL(statement).format(s=s, r=r))
            granted.append(role)
    return granted


def cluster_q3c(conn: connection, schema_name: str,
                tables: Collection[str] | None = None) -> list[str]:
    """``CLUSTER`` each table (of ``tables``, names, if given) on its q3c index (as the
    old tool did after loading), then nothing else: the caller ANALYZEs.  Returns the
    tables clustered.  ``specprod-db maintain`` decides when it pays
    (:mod:`specprod_db.ops.maintain`)."""
    done = []
    with transaction(conn, original_error=True) as cur:
        for table in TABLES:
            if table.q3c and (tables is None or table.name in tables):
                cur.execute(sql.SQL("CLUSTER {} USING {}").format(
                    qualified(schema_name, table.name),
                    sql.Identifier(f"ix_{table.name}_q3c_ang2ipix")))
                done.append(table.name)
    return done
