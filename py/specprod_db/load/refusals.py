"""What the database would refuse of a tile's rows, said in the inputs' terms.

A tile's transaction (:func:`specprod_db.load.tile_writer.write_tile`) COPYs rows whose keys the
tables enforce: primary keys made of 39-digit composite ids (:mod:`specprod_db.ids`),
foreign keys from ``ztile`` to ``target`` and ``photometry``.  A refusal as PostgreSQL
words it (``duplicate key value violates unique constraint "ztile_pkey"``, ``Key
(targetphotid)=(33505137138333637794404090855561366941) is not present in table
"target"``) tells an operator nothing he can act on.  Here:

* :func:`check`, before anything is written, on the staged rows in numpy (cheap): a
  primary key twice among the tile's own rows (a TARGETID twice in a petal's redrock
  file, a positioner twice in the fiberassign file, an exposure twice in the exposures
  file), and, when the tile's target rows are staged (a full extraction), a ``ztile``
  row without its ``target`` row (a redrock TARGETID not among the fiberassign file's
  TARGETS);
* :func:`explain`, for a refusal the database made anyway (a key of rows the tile kept
  from its last load, a row of another tile): the key in the message decoded with
  :func:`specprod_db.ids.decode_id` and mapped back to the input it came from.

Both give :class:`RowsRefused`, at once a ``psycopg2.IntegrityError`` (the writers treat
it as any refusal: the tile fails, recorded, the run goes on and exits 1) and an
:class:`~specprod_db.errors.InputError` (bad input), whose message names the TARGETID
(or EXPID and camera), the petal and the file.

Where the rows came from is recorded by the tile task in its state
(``state["row_sources"]``, :func:`sources`): the redrock (or zbest) file of each petal,
the fiberassign file, the exposures file.  Which petal holds a TARGETID is found by
reading the TARGETID column of those files, only when a message needs it.
"""
import os
import re
from typing import Any, Optional

import numpy as np
import psycopg2

from specprod_db import ids, schema
from specprod_db.errors import InputError
from specprod_db.paths import Paths


class RowsRefused(psycopg2.IntegrityError, InputError):
    """A tile's rows that break a key of the tables, named by TARGETID, petal and file."""


#: Example keys a message shows at most.
EXAMPLES = 3


def sources(paths: Paths, tileid: int, redrock_files: dict) -> dict:
    """What :func:`check` and :func:`explain` name: ``{"redrock": [[petal, path], ...],
    "fiberassign": path, "exposures": path}`` (``redrock_files``: petal -> path read for
    the ztile rows, ``redshift.ztile_rows``'s ``info["files"]``)."""
    return {"redrock": [[int(p), str(f)] for p, f in sorted(redrock_files.items())],
            "fiberassign": str(paths.fiberassign_file(tileid)),
            "exposures": str(paths.exposures())}


# --- where a TARGETID came from ---------------------------------------------------------

def _petals_of(targetid: int, where: dict) -> list:
    """``[(petal, path, rows)]`` of the tile's redrock files whose REDSHIFTS (ZBEST) HDU
    holds ``targetid`` (``rows``: its row numbers there, from 0)."""
    import fitsio
    found = []
    for petal, path in where.get("redrock", ()):
        hdu = "ZBEST" if os.path.basename(path).startswith("zbest") else "REDSHIFTS"
        try:
            tid = fitsio.read(path, ext=hdu, columns=["TARGETID"])["TARGETID"]
        except (OSError, ValueError, KeyError):
            continue
        rows = np.flatnonzero(tid == targetid)
        if len(rows):
            found.append((petal, path, rows.tolist()))
    return found


def _in_petals(targetid: int, where: dict) -> str:
    """``petal 3 (FILE, REDSHIFTS rows 17 and 18)`` for the petal(s) holding
    ``targetid``, or ``a petal of the tile`` when no file says (changed since)."""
    found = _petals_of(targetid, where)
    if not found:
        files = ", ".join(p for _, p in where.get("redrock", ())) or "its redrock files"
        return f"a petal of the tile (none of {files} holds it now)"
    parts = []
    for petal, path, rows in found:
        hdu = "ZBEST" if os.path.basename(path).startswith("zbest") else "REDSHIFTS"
        which = " and ".join(map(str, rows[:EXAMPLES])) + (" ..." if len(rows) > EXAMPLES
                                                          else "")
        parts.append(f"petal {petal} ({path}, {hdu} row{'s' if len(rows) > 1 else ''} "
                     f"{which})")
    return " and ".join(parts)


def _fields(decoded: dict, skip: tuple[str, ...] = ("TILEID",)) -> str:
    return ", ".join(f"{k} {v}" for k, v in decoded.items() if k not in skip)


def _describe(table: str, column: str, value: Any, where: dict, tables: dict) -> str:
    """A key value of ``table.column`` as an operator reads it: what it encodes and the
    input it came from."""
    if column in ("id", "targetphotid") and table != "frame" or column == "frameid":
        kind = "target" if column == "targetphotid" else table
        decoded = ids.decode_id(kind, int(value))
        if "TARGETID" in decoded:
            t = int(decoded.pop("TARGETID"))
            extra = _fields(decoded)
            text = f"TARGETID {t}" + (f" ({extra})" if extra else "")
            return text + _origin(table, t, where)
        return _fields(decoded) + _origin(table, None, where)
    if column == "targetid":
        return f"TARGETID {int(value)}" + _origin(table, int(value), where)
    if column == "expid":
        return f"EXPID {int(value)}" + _origin(table, None, where)
    return f"{column.upper()} {value}" + _origin(table, None, where)


def _origin(table: str, targetid: Optional[int], where: dict) -> str:
    """`` of petal 3 (FILE ...)`` / `` in the fiberassign file FILE`` ..."""
    source = schema.table(table).tile_input if table in schema.BY_NAME else None
    if source == "redrock" and targetid is not None and where.get("redrock"):
        return f" of {_in_petals(targetid, where)}"
    if source == "fiberassign" and where.get("fiberassign"):
        return f" of the fiberassign file {where['fiberassign']}"
    if source == "exposures" and where.get("exposures"):
        return f" of the exposures file {where['exposures']}"
    return ""


# --- before the COPY --------------------------------------------------------------------

def _keys(rows: np.ndarray, column: str) -> np.ndarray:
    """A key column as one comparable value per row (composite ids: two words)."""
    col = np.ascontiguousarray(rows[column])
    if col.ndim == 2:
        return col.view([("high", col.dtype), ("low", col.dtype)]).ravel()
    return col


def _order(keys: np.ndarray) -> np.ndarray:
    """Stable sort order of :func:`_keys` values: two-word keys by ``lexsort`` of their
    words (``argsort`` of a structured array compares field by field in Python-level
    generic code, 5-10x slower)."""
    if keys.dtype.names:
        return np.lexsort((keys["low"], keys["high"]))
    return np.argsort(keys, kind="stable")


def _same_as_previous(sorted_keys: np.ndarray) -> np.ndarray:
    """``out[i]``: sorted key ``i + 1`` equals key ``i``."""
    if sorted_keys.dtype.names:
        return np.logical_and.reduce([sorted_keys[n][1:] == sorted_keys[n][:-1]
                                      for n in sorted_keys.dtype.names])
    return sorted_keys[1:] == sorted_keys[:-1]


def _first_duplicate(keys: np.ndarray) -> Optional[tuple[int, int]]:
    """Row numbers ``(i, j)`` of the first key (in sorted order) held twice, or None."""
    if len(keys) < 2:
        return None
    order = _order(keys)
    same = np.flatnonzero(_same_as_previous(keys[order]))
    if not len(same):
        return None
    return int(order[same[0]]), int(order[same[0] + 1])


def _isin(keys: np.ndarray, have: np.ndarray) -> np.ndarray:
    """``np.isin(keys, have)`` for :func:`_keys` values, by one sort of both: a key is
    in ``have`` when the first of its run of equal keys comes from ``have``."""
    if not keys.dtype.names:
        return np.isin(keys, have)
    both = np.concatenate([have, keys])
    order = _order(both)  # stable: within equal keys, have's come first
    start = np.ones(len(both), dtype=bool)
    start[1:] = ~_same_as_previous(both[order])
    first = np.maximum.accumulate(np.where(start, np.arange(len(both)), 0))
    found = np.empty(len(both), dtype=bool)
    found[order] = order[first] < len(have)
    return found[len(have):]


def _value(rows: np.ndarray, column: str, i: int) -> Any:
    v = rows[column][i]
    return ids.to_int(v)[0] if np.ndim(v) == 1 else v.item()


def check(tileid: int, tables: dict, state: dict, full: bool = True) -> None:
    """:class:`RowsRefused` when the tile's staged rows break a key the database would
    enforce and numpy sees cheaply: a primary key twice among them, a ``ztile`` row
    without its ``target`` row (when the target rows are staged).  Nothing is written."""
    where = (state or {}).get("row_sources") or {}
    for table in schema.tile_tables(full):
        rows = tables.get(table.name)
        if rows is None or len(rows) < 2 or len(table.primary_key) != 1:
            continue
        column = table.primary_key[0]
        twice = _first_duplicate(_keys(rows, column))
        if twice is None:
            continue
        what = _describe(table.name, column, _value(rows, column, twice[0]), where, tables)
        raise RowsRefused(f"{table.name}: {what} more than once; "
                          f"{_ONE_ROW.get(table.name, 'its key must be unique')}")
    ztile, target = tables.get("ztile"), tables.get("target")
    if ztile is None or target is None or not len(ztile):
        return
    have = _keys(target, "id")
    lacking = ~_isin(_keys(ztile, "targetphotid"), have)
    if lacking.any():
        tids = np.unique(ztile["targetid"][lacking])
        t = int(tids[0])
        shown = ", ".join(map(str, tids[:EXAMPLES].tolist())) + \
            (" ..." if len(tids) > EXAMPLES else "")
        fa = where.get("fiberassign") or "the tile's fiberassign file"
        petal = _in_petals(t, where) if where.get("redrock") else "a petal"
        raise RowsRefused(f"ztile: TARGETID {t} of {petal} is not a target of {fa} (its "
                          f"TARGETS HDU), so it has no target row: {len(tids)} TARGETID(s) "
                          f"of the redrock files are not ({shown})")


#: What a duplicate breaks, per table.
_ONE_ROW = {
    "ztile": "a tile has one redshift per TARGETID (ztile.id)",
    "ztile_emline": "one afterburner row per ztile row",
    "ztile_qso_mgii": "one afterburner row per ztile row",
    "ztile_qso_qn": "one afterburner row per ztile row",
    "fiberassign": "one row per TARGETID and LOCATION (fiberassign.id)",
    "potential": "one row per TARGETID and LOCATION (potential.id)",
    "target": "one row per TARGETID of the tile (target.id)",
    "exposure": "one row per EXPID (exposure.expid)",
    "frame": "one row per EXPID and camera (frame.frameid)",
}


# --- a refusal by the database ------------------------------------------------------------

_KEY = re.compile(r"Key \((?P<cols>[^)]*)\)=\((?P<vals>.*)\) (?P<what>already exists|is not "
                  r"present in table \"(?P<parent>[^\"]+)\")")


def explain(err: psycopg2.Error, tileid: int, tables: dict, state: dict) -> Optional[str]:
    """The database's refusal ``err`` of a tile's rows in the inputs' terms, or None when
    its message names no key (then it is shown as it is)."""
    diag = getattr(err, "diag", None)
    detail = getattr(diag, "message_detail", None) or ""
    m = _KEY.search(detail)
    table = getattr(diag, "table_name", None)
    if not m or not table:
        return None
    where = (state or {}).get("row_sources") or {}
    cols = [c.strip().strip('"') for c in m.group("cols").split(",")]
    vals = [v.strip() for v in m.group("vals").split(",")]
    key = dict(zip(cols, vals)) if len(cols) == len(vals) else {}
    constraint = getattr(diag, "constraint_name", None) or "a key"
    if not key:
        return None
    column = "id" if "id" in key else "targetid" if "targetid" in key else \
        "frameid" if "frameid" in key else cols[0]
    try:
        what = _describe(table, column, key[column], where, tables)
    except (ValueError, KeyError):
        return None
    if m.group("parent"):
        parent = m.group("parent")
        hint = {"target": f"not a target of {where.get('fiberassign') or 'the fiberassign file'}"
                          " (its TARGETS HDU) as loaded for the tile",
                "photometry": "no photometry row (no targeting or Legacy Surveys row for it)",
                "exposure": "no exposure row", "ztile": "no ztile row"}.get(parent, "")
        return (f"{table}: {what} has no row in {parent}"
                + (f": {hint}" if hint else "") + f" (constraint {constraint})")
    return (f"{table}: {what} is already in {table}, from a row the tile's UPDATE does not "
            f"replace (another tile's?) (constraint {constraint})")


def refused(err: psycopg2.Error, tileid: int, tables: dict, state: dict) -> psycopg2.Error:
    """``err`` as :class:`RowsRefused` when :func:`explain` can say it, else ``err``."""
    if isinstance(err, RowsRefused) or not isinstance(err, psycopg2.IntegrityError):
        return err
    text = explain(err, tileid, tables, state)
    return err if text is None else RowsRefused(text)
