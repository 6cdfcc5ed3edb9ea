"""Small SQL helpers every layer uses: qualified names, schema names, transactions."""
from contextlib import contextmanager

from psycopg2 import sql

from specprod_db.errors import UsageError

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


def qualified(schema_name, table_name):
    """``schema.table`` as a composable SQL identifier."""
    return sql.SQL("{}.{}").format(sql.Identifier(schema_name), sql.Identifier(table_name))


@contextmanager
def transaction(conn):
    """A cursor in a transaction committed on success, rolled back on any error."""
    try:
        with conn.cursor() as cur:
            yield cur
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
