"""Build rows of a schema table from named columns, with the old tool's value rules.

Every extractor hands its columns (by database column name, any case) to :func:`build`,
which returns a structured array of exactly the table's dtype and column order
(:mod:`specprod_db.schema`), ready for staging and COPY.  Value rules (datamodel §9.13):

* non-finite floats (NaN, +-inf, masked) become -9999.0 ("finitize"), counted;
* strings become ASCII bytes; a value longer than the column is an error;
* integers are cast after a range check; booleans from any truthy type;
* a column the caller does not supply is an error unless a default is given.
"""
import numpy as np

from specprod_db.schema import table as _table

FINITIZE_VALUE = -9999.0


class RowError(ValueError):
    """A value cannot be stored in its column; the message names table and column."""


def finitize(values):
    """Copy of float ``values`` with non-finite (or masked) entries set to -9999.0.

    Returns ``(array, count_replaced)``.
    """
    if isinstance(values, np.ma.MaskedArray):
        values = values.astype(float if values.dtype.kind != "f" else values.dtype)
        values = values.filled(np.nan)
    data = np.array(values, copy=True)
    if data.dtype.kind != "f":
        data = data.astype(float)
    bad = ~np.isfinite(data)
    n = int(np.count_nonzero(bad))
    if n:
        data[bad] = FINITIZE_VALUE
    return data, n


def build(table_name, columns, n=None, defaults=None, stats=None):
    """Structured array of table ``table_name`` from ``columns`` (name -> array).

    Parameters
    ----------
    columns : mapping
        Column values keyed by database column name (case-insensitive); scalars are
        broadcast.
    n : int, optional
        Number of rows (taken from the first array column otherwise).
    defaults : mapping, optional
        Values for columns absent from ``columns`` (e.g. ``{'cmx_target': 0}``).
    stats : dict, optional
        Receives ``{'finitized': {column: count}}`` for the warning counts.
    """
    table = _table(table_name)
    cols = {k.lower(): v for k, v in columns.items()}
    defaults = {k.lower(): v for k, v in (defaults or {}).items()}
    if n is None:
        n = next((len(v) for v in cols.values() if np.ndim(v) > 0), None)
        if n is None:
            raise RowError(f"{table.name}: cannot tell the number of rows")
    out = table.empty(n)
    for col in table.columns:
        if col.name in cols:
            value = cols[col.name]
        elif col.name in defaults:
            value = defaults[col.name]
        else:
            raise RowError(f"{table.name}: no value for column {col.name}")
        dt = col.dtype
        try:
            if dt.kind == "f":
                value, nbad = finitize(np.broadcast_to(np.asarray(value), (n,))
                                       if np.ndim(value) == 0 else value)
                if nbad and stats is not None:
                    fin = stats.setdefault("finitized", {})
                    fin[col.name] = fin.get(col.name, 0) + nbad
                out[col.name] = value
            elif dt.kind == "S":
                out[col.name] = _strings(value, dt.itemsize, table.name, col.name, n)
            elif dt.kind == "i" and dt.shape == ():
                if np.ma.is_masked(value):
                    raise RowError(f"{table.name}.{col.name}: masked (null) values")
                arr = np.asarray(value)
                if arr.dtype.kind == "f":
                    if not np.isfinite(arr).all() or (arr != np.round(arr)).any():
                        raise RowError(f"{table.name}.{col.name}: non-integer values")
                if arr.size:
                    info = np.iinfo(dt)
                    lo, hi = arr.min(), arr.max()
                    if lo < info.min or hi > info.max:
                        raise RowError(f"{table.name}.{col.name}: value out of range "
                                       f"for {col.pgtype} ({lo}..{hi})")
                out[col.name] = arr
            else:
                out[col.name] = value
        except RowError:
            raise
        except (ValueError, TypeError) as err:
            raise RowError(f"{table.name}.{col.name}: {err}") from None
    return out


def _strings(value, width, tname, cname, n):
    if np.ma.is_masked(value):
        raise RowError(f"{tname}.{cname}: masked (null) values")
    arr = np.asarray(value)
    if arr.ndim == 0:
        arr = np.broadcast_to(arr, (n,))
    if arr.dtype.kind == "U":
        arr = np.char.encode(np.char.rstrip(arr), "ascii")
    elif arr.dtype.kind == "S":
        arr = np.char.rstrip(arr)
    elif arr.dtype.kind == "O":
        arr = np.array([(v.decode() if isinstance(v, bytes) else str(v)).rstrip()
                        for v in arr], dtype="U").astype("S")
    else:
        raise RowError(f"{tname}.{cname}: expected strings, got {arr.dtype}")
    if arr.dtype.itemsize > width:
        lengths = np.char.str_len(arr)
        if (lengths > width).any():
            bad = arr[lengths > width][0].decode()
            raise RowError(f"{tname}.{cname}: value too long for VARCHAR({width}): {bad!r}")
    return arr.astype(f"S{width}")
