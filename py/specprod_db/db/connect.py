"""Connecting to PostgreSQL: the DSN, the session, what a lost server means.

Connections go through libpq (psycopg2): ``--db`` conninfo or URI, else the standard
``PG*`` environment variables and ``~/.pgpass``, which libpq reads itself.
"""
import os
import time
from typing import Any

import psycopg2
from psycopg2.extensions import STATUS_IN_TRANSACTION, connection, parse_dsn

from specprod_db.conninfo import mask, scrub
from specprod_db.db.sql import fetch_one, reading, transaction
from specprod_db.errors import ConnectionFailed, DatabaseLost, ExtensionMissing
from specprod_db.log import get_logger

#: Environment variable naming the database when ``--db`` is not given.
DSN_ENV = "SPECPROD_DB_DSN"


def resolve_dsn(dsn: str | None = None) -> str:
    """The conninfo to use: ``dsn``, else ``$SPECPROD_DB_DSN``, else '' (libpq's PG*)."""
    if dsn:
        return dsn
    return os.environ.get(DSN_ENV, "")


def describe(dsn: str | None) -> dict[str, str]:
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


def _login() -> str:
    try:
        import pwd
        return pwd.getpwuid(os.getuid()).pw_name
    except Exception:  # pragma: no cover - exotic platforms
        return "?"


class Connection(connection):
    """A psycopg2 connection that remembers its conninfo (never shown) and when it was
    opened, so that :func:`server_stop` can ask the server why it closed it."""

    def __init__(self, dsn: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(dsn, *args, **kwargs)
        self.conninfo = dsn
        self.opened_at = time.time()


def connect(dsn: str | None = None, application_name: str = "specprod-db") -> Connection:
    """A psycopg2 connection, or :class:`ConnectionFailed` with one clear line."""
    dsn = resolve_dsn(dsn)
    try:
        conn: Connection = psycopg2.connect(dsn, application_name=application_name,
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


def server_stop(err: BaseException, conn: connection | None = None,
                doing: str = "") -> DatabaseLost | None:
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
    cur = getattr(err, "cursor", None)
    if conn is None and cur is not None:
        conn = cur.connection
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


def _setting(conn: connection | None, name: str) -> str:
    """`` = VALUE`` of the setting ``name`` in ``conn``'s session (rolled back first: the
    transaction failed), or '' when it cannot be read."""
    if conn is None or conn.closed:
        return ""
    try:
        with reading(conn, fresh=True) as cur:
            cur.execute("SELECT current_setting(%s)", (name,))
            value = fetch_one(cur)[0]
        return f" = {value}"
    except psycopg2.Error:
        return ""


def _cancel_cause(text: str, conn: connection | None) -> str:
    if "statement timeout" in text:
        return (f"statement_timeout{_setting(conn, 'statement_timeout')} expired (set it "
                "higher or to 0 for the loading role: ALTER ROLE ... SET statement_timeout, "
                "or PGOPTIONS='-c statement_timeout=0')")
    if "user request" in text:
        return ("a cancel request (pg_cancel_backend by an administrator, or the client's "
                "cancel)")
    return text


def _closed_cause(conn: connection | None, text: str) -> str:
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
            started, idle_in_transaction, idle = fetch_one(cur)
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


def schema_exists(conn: connection, schema_name: str) -> bool:
    """True when the schema exists (in the caller's transaction)."""
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema_name,))
        return cur.fetchone() is not None


def ensure_q3c(conn: connection) -> None:
    """``CREATE EXTENSION IF NOT EXISTS q3c``; :class:`ExtensionMissing` when impossible.

    Runs in the caller's transaction (:func:`specprod_db.db.sql.transaction`, which
    rolls it back on the error) or on an autocommit connection."""
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_extension WHERE extname = 'q3c'")
        if cur.fetchone():
            return
        try:
            cur.execute("CREATE EXTENSION IF NOT EXISTS q3c")
        except psycopg2.Error as err:
            raise ExtensionMissing(
                "the q3c extension is not installed in this database and cannot be created "
                f"({' '.join(str(err).split())}); install the server package "
                "(Debian: postgresql-15-q3c) and run 'CREATE EXTENSION q3c' as a superuser"
            ) from None


#: Session settings of the writer of a bulk (initial) load, never set server-wide:
#: no wait for the WAL flush at each commit (a crash loses at most the last commits,
#: which a rerun redoes: every tile is one transaction and the load state says what is
#: committed), and memory for the index builds at the end.
BULK_SESSION = {"synchronous_commit": "off", "maintenance_work_mem": "1GB"}


def bulk_session(conn: connection) -> None:
    """Apply :data:`BULK_SESSION` to this connection's session."""
    with transaction(conn, original_error=True) as cur:
        for name, value in BULK_SESSION.items():
            cur.execute("SELECT set_config(%s, %s, false)", (name, value))
