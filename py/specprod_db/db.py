"""Database access: connecting, the DDL generated from :mod:`specprod_db.schema`, grants.

Connections go through libpq (psycopg2): ``--db`` conninfo or URI, else the standard
``PG*`` environment variables and ``~/.pgpass``, which libpq reads itself.
"""
import os
import time

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import STATUS_IN_TRANSACTION, parse_dsn

from . import __version__
from .conninfo import mask, scrub
from .errors import ConnectionFailed, DatabaseLost, ExtensionMissing, RunRefused, UsageError
from .log import get_logger
from .schema import DATA_TABLES, TABLES

#: Environment variable naming the database when ``--db`` is not given.
DSN_ENV = "SPECPROD_DB_DSN"

#: PostgreSQL's longest identifier in bytes (NAMEDATALEN - 1); a longer name is
#: truncated by the server without an error, so it is refused here instead.
MAX_IDENTIFIER_BYTES = 63


def check_schema_name(name: str) -> str:
    """``name`` if PostgreSQL can hold it as a schema name unchanged, else
    :class:`~specprod_db.errors.UsageError` saying why: empty, a NUL character, longer
    than :data:`MAX_IDENTIFIER_BYTES` bytes in UTF-8 (the server would truncate it, and
    two long names would become one schema).  Every command taking ``--schema`` checks its names with this function."""
    if not name:
        raise UsageError("schema name is empty")
    if "\0" in name:
        raise UsageError(f"schema name {name!r} contains a NUL character")
    size = len(name.encode("utf-8"))
    if size > MAX_IDENTIFIER_BYTES:
        cut = name.encode("utf-8")[:MAX_IDENTIFIER_BYTES].decode("utf-8", "ignore")
        raise UsageError(f"schema name {name!r} is {size} bytes long; PostgreSQL keeps at "
                         f"most {MAX_IDENTIFIER_BYTES} bytes of a name (it would silently "
                         f"truncate it to {cut!r})")
    return name


def resolve_dsn(dsn=None):
    """The conninfo to use: ``dsn``, else ``$SPECPROD_DB_DSN``, else '' (libpq's PG*)."""
    if dsn:
        return dsn
    return os.environ.get(DSN_ENV, "")


def describe(dsn):
    """host/port/database/user that libpq will use for ``dsn``, for messages (never the
    password; ``conninfo`` is ``dsn`` masked with :func:`specprod_db.conninfo.mask`)."""
    try:
        params = parse_dsn(dsn) if dsn else {}
    except psycopg2.ProgrammingError:
        params = {}
    described = {
        "host": params.get("host") or os.environ.get("PGHOST") or "local socket",
        "port": params.get("port") or os.environ.get("PGPORT") or "5432",
        "database": params.get("dbname") or os.environ.get("PGDATABASE")
        or params.get("user") or os.environ.get("PGUSER") or _login(),
        "user": params.get("user") or os.environ.get("PGUSER") or _login(),
    }
    described = {key: scrub(value, dsn) for key, value in described.items()}
    described["conninfo"] = mask(dsn or "")
    return described


def _login():
    try:
        import pwd
        return pwd.getpwuid(os.getuid()).pw_name
    except Exception:  # pragma: no cover - exotic platforms
        return "?"


class Connection(psycopg2.extensions.connection):
    """A psycopg2 connection that remembers its conninfo (never shown) and when it was
    opened, so that :func:`server_stop` can ask the server why it closed it."""

    def __init__(self, dsn, *args, **kwargs):
        super().__init__(dsn, *args, **kwargs)
        self.conninfo = dsn
        self.opened_at = time.time()


def connect(dsn=None, application_name="specprod-db"):
    """A psycopg2 connection, or :class:`ConnectionFailed` with one clear line."""
    dsn = resolve_dsn(dsn)
    try:
        conn = psycopg2.connect(dsn, application_name=application_name,
                                connection_factory=Connection)
    except psycopg2.Error as err:
        d = describe(dsn)
        # libpq's message may quote the piece of the conninfo it could not parse
        message = scrub(" ".join(str(err).split()), dsn)
        raise ConnectionFailed(
            f"cannot connect to PostgreSQL (host={d['host']}, port={d['port']}, "
            f"database={d['database']}, user={d['user']}): {message}") from None
    info = conn.info
    get_logger().debug("connected to PostgreSQL %s (host=%s, port=%s, database=%s, user=%s) "
                       "as %r", conn.server_version, info.host, info.port, info.dbname,
                       info.user, application_name)
    return conn


# --- the server stopping the work -----------------------------------------------------

#: SQLSTATEs of a server that ends the session (the connection is then closed).
_TERMINATED = {
    "57P01": "the server terminated the session (pg_terminate_backend, or a shutdown)",
    "57P02": "the server crashed and ended every session",
    "57P03": "the server is starting up or shutting down",
    "25P03": "the server ended the session after it was idle in a transaction longer "
             "than idle_in_transaction_session_timeout",
    "57P05": "the server ended the session after it was idle longer than "
             "idle_session_timeout",
}

#: libpq's words for a connection that is gone (no SQLSTATE comes with them).
_LOST_WORDS = ("server closed the connection", "connection already closed",
               "terminating connection", "could not receive data from server",
               "could not send data to server", "connection has been closed",
               "no connection to the server", "connection not open")


def server_stop(err: BaseException, conn=None, doing: str = "") -> "DatabaseLost | None":
    """The :class:`~specprod_db.errors.DatabaseLost` (exit 3) that ``err`` means when it is
    the database stopping the work, else None (the server refused a statement: its data, a
    permission, a constraint ...).

    Stops: a statement cancelled by ``statement_timeout``, ``lock_timeout`` or a cancel
    request (``pg_cancel_backend``; SQLSTATE 57014, 55P03); a session ended by the server
    (``pg_terminate_backend``, a shutdown, ``idle_in_transaction_session_timeout``,
    ``idle_session_timeout``; 57P01-57P05, 25P03); a connection lost (08xxx, or closed
    without a SQLSTATE, as libpq reports a session the server ended while it was idle).
    The message is one line naming the cause and the setting with its value: for a
    closed connection a short second connection asks the server whether it restarted and
    what its idle timeouts are.  ``conn``: the connection the error came from (default:
    the error's cursor's); ``doing``: what was being done, e.g. ``writing tile 1000``.
    """
    if not isinstance(err, psycopg2.Error):
        return None
    if conn is None and getattr(err, "cursor", None) is not None:
        conn = err.cursor.connection
    code = err.pgcode or ""
    text = " ".join(str(err).split())
    closed = bool(conn is not None and conn.closed)
    if code == "57014":
        cause = _cancel_cause(text, conn)
    elif code == "55P03" and "lock timeout" in text:
        cause = f"lock_timeout{_setting(conn, 'lock_timeout')} expired"
    elif code in _TERMINATED:
        cause = _TERMINATED[code]
        closed = True
    elif closed or code.startswith("08") or (not code and any(
            w in text.lower() for w in _LOST_WORDS)):
        cause, closed = _closed_cause(conn, text), True
    else:
        return None
    what = "database connection lost" if closed else "statement cancelled by the server"
    return DatabaseLost(f"{what}{' while ' + doing if doing else ''}: {cause}")


def _setting(conn, name):
    """`` = VALUE`` of the setting ``name`` in ``conn``'s session (rolled back first: the
    transaction failed), or '' when it cannot be read."""
    if conn is None or conn.closed:
        return ""
    try:
        conn.rollback()
        with conn.cursor() as cur:
            cur.execute("SELECT current_setting(%s)", (name,))
            value = cur.fetchone()[0]
        conn.rollback()
        return f" = {value}"
    except psycopg2.Error:
        return ""


def _cancel_cause(text, conn):
    if "statement timeout" in text:
        return (f"statement_timeout{_setting(conn, 'statement_timeout')} expired (set it "
                "higher or to 0 for the loading role: ALTER ROLE ... SET statement_timeout, "
                "or PGOPTIONS='-c statement_timeout=0')")
    if "user request" in text:
        return ("a cancel request (pg_cancel_backend by an administrator, or the client's "
                "cancel)")
    return text


def _closed_cause(conn, text):
    """Why the server closed ``conn``, as far as a second connection can tell: a restart
    (the server started after ``conn`` was opened), or the idle timeout matching what the
    session was doing (in a transaction or not)."""
    dsn = getattr(conn, "conninfo", None)
    if dsn is None:  # not one of ours: which server it was is unknown
        return text
    try:
        probe = psycopg2.connect(dsn, connect_timeout=5,
                                 application_name="specprod-db (why was the connection lost)")
    except psycopg2.Error as err:
        first = " ".join(str(err).split())
        return f"{text}; the server cannot be reached now: {scrub(first, dsn)}"
    try:
        with probe.cursor() as cur:
            cur.execute("SELECT extract(epoch FROM pg_postmaster_start_time()), "
                        "current_setting('idle_in_transaction_session_timeout'), "
                        "current_setting('idle_session_timeout')")
            started, idle_in_transaction, idle = cur.fetchone()
    except psycopg2.Error:
        return text
    finally:
        probe.close()
    opened = getattr(conn, "opened_at", None)
    if opened is not None and float(started) > opened:
        return (f"the server restarted (at "
                f"{time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(float(started)))})")
    in_transaction = conn is not None and conn.status == STATUS_IN_TRANSACTION
    if in_transaction and idle_in_transaction != "0":
        return ("the server closed the connection while this session had a transaction "
                "open: idle_in_transaction_session_timeout = "
                f"{idle_in_transaction} ends a session idle in a transaction that long")
    if not in_transaction and idle != "0":
        return (f"the server closed the connection while this session was idle: "
                f"idle_session_timeout = {idle}")
    return (f"{text} (the server is up and did not restart: the session was terminated, "
            "e.g. by pg_terminate_backend, or the network failed)")


# --- DDL ----------------------------------------------------------------------------

def _qualified(schema_name, table_name):
    return sql.SQL("{}.{}").format(sql.Identifier(schema_name), sql.Identifier(table_name))


def create_table_sql(table, schema_name):
    """``CREATE TABLE IF NOT EXISTS`` for ``table`` in ``schema_name``."""
    parts = []
    for col in table.columns:
        null = sql.SQL("") if col.name in table.nullable else sql.SQL(" NOT NULL")
        parts.append(sql.SQL("{} {}{}").format(sql.Identifier(col.name),
                                               sql.SQL(col.ddl_type), null))
    parts.append(sql.SQL("PRIMARY KEY ({})").format(
        sql.SQL(", ").join(map(sql.Identifier, table.primary_key))))
    for col in table.unique_columns:
        parts.append(sql.SQL("UNIQUE ({})").format(sql.Identifier(col)))
    for col, ref in table.foreign_keys.items():
        rtable, rcol = ref.split(".")
        parts.append(sql.SQL("FOREIGN KEY ({}) REFERENCES {} ({})").format(
            sql.Identifier(col), _qualified(schema_name, rtable), sql.Identifier(rcol)))
    return sql.SQL("CREATE TABLE IF NOT EXISTS {} (\n  {}\n)").format(
        _qualified(schema_name, table.name), sql.SQL(",\n  ").join(parts))


def index_sql(table, schema_name, q3c=True):
    """``CREATE INDEX IF NOT EXISTS`` statements of ``table`` (unique, single, q3c)."""
    out = []
    target = _qualified(schema_name, table.name)
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


def secondary_index_names(table):
    """Names of the non-key indexes of ``table`` (dropped during an initial bulk load)."""
    names = [f"ix_{table.name}_{c}" for c in table.indexes]
    if table.q3c:
        names.append(f"ix_{table.name}_q3c_ang2ipix")
    return names


def drop_secondary_indexes(conn, schema_name):
    """Drop the non-key indexes of the data tables (before an initial bulk load).

    Primary keys, unique indexes and foreign keys stay: the writer's upserts need them.
    Returns the names dropped; :func:`create_indexes` builds them again.
    """
    dropped = []
    with conn.cursor() as cur:
        for table in DATA_TABLES:
            for name in secondary_index_names(table):
                cur.execute(sql.SQL("DROP INDEX IF EXISTS {}.{}").format(
                    sql.Identifier(schema_name), sql.Identifier(name)))
                dropped.append(name)
    conn.commit()
    return dropped


def missing_indexes(conn, schema_name):
    """Names of declared indexes that do not exist (after an interrupted initial load)."""
    declared = [n for t in DATA_TABLES for n in secondary_index_names(t)]
    with conn.cursor() as cur:
        cur.execute("SELECT indexname FROM pg_indexes WHERE schemaname = %s", (schema_name,))
        present = {r[0] for r in cur.fetchall()}
    conn.rollback()
    return [n for n in declared if n not in present]


def create_indexes(conn, schema_name):
    """Create every index of every table that is missing (idempotent)."""
    with conn.cursor() as cur:
        for table in TABLES:
            for statement in index_sql(table, schema_name):
                cur.execute(statement)
    conn.commit()


def schema_exists(conn, schema_name):
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema_name,))
        return cur.fetchone() is not None


def ensure_q3c(conn):
    """``CREATE EXTENSION IF NOT EXISTS q3c``; :class:`ExtensionMissing` when impossible."""
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_extension WHERE extname = 'q3c'")
        if cur.fetchone():
            return
        try:
            cur.execute("CREATE EXTENSION IF NOT EXISTS q3c")
        except psycopg2.Error as err:
            conn.rollback()
            raise ExtensionMissing(
                "the q3c extension is not installed in this database and cannot be created "
                f"({' '.join(str(err).split())}); install the server package "
                "(Debian: postgresql-15-q3c) and run 'CREATE EXTENSION q3c' as a superuser"
            ) from None


def create_schema(conn, schema_name, overwrite=False):
    """Create ``schema_name`` with every table and index (idempotent).

    With ``overwrite`` the schema is dropped first (the caller asks for confirmation).
    Returns True when tables were created, False when everything already existed.
    """
    log = get_logger()
    ensure_q3c(conn)
    with conn.cursor() as cur:
        if overwrite:
            log.warning("dropping schema %s and everything in it", schema_name)
            cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(schema_name)))
        cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s", (schema_name,))
        before = cur.fetchone()[0]
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
        after = cur.fetchone()[0]
    conn.commit()
    return after > before


def package_versions(specprod):
    """Rows of the ``version`` table: the old tool's packages, then our own libraries."""
    import astropy
    import desiutil
    import numpy
    versions = [
        ("astropy", astropy.__version__),
        ("desiutil", desiutil.__version__),
        ("lsd9-photometry", "computed"),
        ("numpy", numpy.__version__),
        ("redshift", f"{specprod}/v0"),
        ("release", specprod),
        ("specprod", specprod),
        ("specprod-db", __version__),
        ("psycopg2", psycopg2.__version__.split()[0]),
        ("tiles", "trunk" if specprod == "daily" else specprod),
    ]
    for name in ("fitsio", "h5py", "mpi4py"):
        try:
            mod = __import__(name)
            versions.append((name, str(mod.__version__)))
        except ImportError:  # pragma: no cover - declared dependencies
            pass
    return versions


def record_versions(conn, schema_name, specprod):
    """Fill ``version`` once (an existing table is left as it is), and record the
    schema's layout version (:mod:`specprod_db.migrate`) when it is the current one and
    not recorded yet.  Returns True when the package rows were written."""
    from . import migrate
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(
            _qualified(schema_name, "version")))
        filled = not cur.fetchone()[0]
        if filled:
            for package, version in package_versions(specprod):
                cur.execute(sql.SQL("INSERT INTO {} (package, version) VALUES (%s, %s)")
                            .format(_qualified(schema_name, "version")),
                            (package, version[:20]))
        layout = migrate.recorded_layout(cur, schema_name)
        if layout is None:
            # init on an older schema creates the tables it lacks but widens, rebuilds
            # nothing: its layout is recorded by 'specprod-db migrate', not here
            layout = migrate.inspect_layout(cur, schema_name)
            if layout == migrate.CURRENT_LAYOUT:
                record_layout(cur, schema_name, layout)
    conn.commit()
    if layout != migrate.CURRENT_LAYOUT:
        get_logger().warning("schema %s has layout %s, not %s: run 'specprod-db migrate "
                             "--schema %s'", schema_name, layout, migrate.CURRENT_LAYOUT,
                             schema_name)
    return filled


def record_layout(cur, schema_name, layout):
    """Set the ``version`` row of the schema's layout (:data:`migrate.LAYOUT_PACKAGE`).

    The id is given explicitly and the sequence moved past it: the old tool assigned the
    ids of its rows explicitly, leaving ``version_id_seq`` behind them."""
    from .migrate import LAYOUT_PACKAGE
    table = _qualified(schema_name, "version")
    cur.execute(sql.SQL("UPDATE {} SET version = %s WHERE package = %s").format(table),
                (layout, LAYOUT_PACKAGE))
    if cur.rowcount:
        return
    cur.execute(sql.SQL("INSERT INTO {} (id, package, version) SELECT coalesce(max(id), 0) "
                        "+ 1, %s, %s FROM {}").format(table, table), (LAYOUT_PACKAGE, layout))
    cur.execute(sql.SQL("SELECT setval(pg_get_serial_sequence(quote_ident(%s) || '.version', "
                        "'id'), max(id)) FROM {}").format(table), (schema_name,))


def grant_read(conn, schema_name, roles):
    """Read access for ``roles`` on the schema, its tables, sequences and future tables.

    A role that does not exist gets a warning, not an error.  Returns the roles granted.
    """
    log = get_logger()
    granted = []
    with conn.cursor() as cur:
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
    conn.commit()
    return granted


#: Session settings of the writer of a bulk (initial) load, never set server-wide:
#: no wait for the WAL flush at each commit (a crash loses at most the last commits,
#: which a rerun redoes: every tile is one transaction and the load state says what is
#: committed), and memory for the index builds at the end.
BULK_SESSION = {"synchronous_commit": "off", "maintenance_work_mem": "1GB"}


def bulk_session(conn):
    """Apply :data:`BULK_SESSION` to this connection's session."""
    with conn.cursor() as cur:
        for name, value in BULK_SESSION.items():
            cur.execute("SELECT set_config(%s, %s, false)", (name, value))
    conn.commit()


def cluster_q3c(conn, schema_name, tables=None):
    """``CLUSTER`` each table (of ``tables``, names, if given) on its q3c index (as the
    old tool did after loading), then nothing else: the caller ANALYZEs.  Returns the
    tables clustered.  ``specprod-db maintain`` decides when it pays
    (:mod:`specprod_db.maintain`)."""
    done = []
    with conn.cursor() as cur:
        for table in TABLES:
            if table.q3c and (tables is None or table.name in tables):
                cur.execute(sql.SQL("CLUSTER {} USING {}").format(
                    _qualified(schema_name, table.name),
                    sql.Identifier(f"ix_{table.name}_q3c_ang2ipix")))
                done.append(table.name)
    conn.commit()
    return done


def qualified(schema_name, table_name):
    """``schema.table`` as a composable SQL identifier."""
    return _qualified(schema_name, table_name)
