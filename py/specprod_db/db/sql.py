"""Small SQL helpers every layer uses: qualified names, schema names, transactions.

Every transaction of this package goes through :func:`transaction` (writes: committed on
success, rolled back on any error) or :func:`reading` (reads: always rolled back, so no
transaction stays open after them).

When the error closed the connection (the server ended the session, the network
failed), a rollback raises ``InterfaceError: connection already closed`` in place of the
error: :func:`transaction` does so by default, as the loader's tile transactions always
did, and :func:`specprod_db.db.connect.server_stop` then asks the server why the
connection closed; with ``original_error`` (and always in :func:`reading`) the error
itself is raised, as at the call sites that did not roll back on an error.
"""
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from psycopg2 import extensions, sql
from psycopg2.extensions import connection, cursor

from specprod_db.errors import UsageError

#: PostgreSQL's longest identifier in bytes (NAMEDATALEN - 1); a longer name is
#: truncated by the server without an error, so it is refused here instead.
MAX_IDENTIFIER_BYTES = 63


def check_schema_name(name: str) -> str:
    """``name`` if PostgreSQL can hold it as a schema name unchanged, else
    :class:`~specprod_db.errors.UsageError` saying why: empty, a NUL character, longer
    than :data:`MAX_IDENTIFIER_BYTES` bytes in UTF-8 (the server would truncate it, and
    two long names would become one schema).  Every command taking ``--schema`` checks
    its names with this function."""
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


def qualified(schema_name: str, table_name: str) -> sql.Composed:
    """``schema.table`` as a composable SQL identifier."""
    return sql.SQL("{}.{}").format(sql.Identifier(schema_name), sql.Identifier(table_name))


def fetch_one(cur: cursor) -> tuple[Any, ...]:
    """The row of a statement that always returns one (an aggregate, a function call,
    ``SELECT`` of values)."""
    row = cur.fetchone()
    assert row is not None, "the statement returned no row"
    return row


def _rollback(conn: connection) -> None:
    """Roll back unless the connection is closed (it has no transaction left)."""
    if not conn.closed:
        conn.rollback()


@contextmanager
def transaction(conn: connection, fresh: bool = False,
                original_error: bool = False) -> Iterator[cursor]:
    """A cursor in a transaction committed on success, rolled back on any error (the
    commit's own included).  ``fresh``: first roll back whatever transaction is open
    (one a failed statement aborted).  ``original_error``: no rollback of a connection
    the error closed, so that the error itself is raised (module docstring)."""
    if fresh:
        _rollback(conn)
    try:
        with conn.cursor() as cur:
            yield cur
        conn.commit()
    except BaseException:
        if original_error:
            _rollback(conn)
        else:
            conn.rollback()
        raise


@contextmanager
def reading(conn: connection, fresh: bool = False) -> Iterator[cursor]:
    """A cursor for reads, its transaction rolled back when the block ends whatever
    happens: nothing stays open (nor locked, nor written).  ``fresh`` as in
    :func:`transaction`."""
    if fresh:
        _rollback(conn)
    try:
        with conn.cursor() as cur:
            yield cur
    finally:
        _rollback(conn)


@contextmanager
def index_probes(cur: cursor) -> Iterator[cursor]:
    """The statements run in the block join by index probes (nested loops), whatever the
    planner would choose: for a small set of keys (a temporary table of a tile's
    TARGETIDs) against a large table.  The planner hash-joins a scan of the whole table
    when its statistics are stale or the table is mid-sized, a cost that grows with the
    database on every tile.  In the caller's transaction; the settings are reset after
    the block."""
    cur.execute("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off")
    try:
        yield cur
    finally:
        if not cur.connection.closed and cur.connection.get_transaction_status() != \
                extensions.TRANSACTION_STATUS_INERROR:
            cur.execute("RESET enable_hashjoin; RESET enable_mergejoin")
