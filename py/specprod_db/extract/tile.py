"""Per-tile inputs: the tiles file, exposures and frames, the fiberassign file.

Readers return numpy structured arrays; the ``*_rows`` functions return arrays of the
tables of :mod:`specprod_db.schema` (built by :func:`specprod_db.rows.build`, which
applies the value rules).  This module imports neither MPI nor psycopg2.

Data quirks handled here (datamodel.md §1, §2, §3, §10.4):

* tiles-daily is read from CSV (astropy ``ascii.csv``) or FITS (HDU ``TILES``, else the
  first table HDU, e.g. ``TILE_COMPLETENESS``).  An empty CSV field is *masked*: for a
  float column that is a non-finite value (finitized to -9999 later); for an integer or
  string column it would be a NULL in a NOT NULL column, so the line is reported as a
  problem of its tile, as is an unparsable number, a too-long string or a line with too
  many fields.  An empty ``UPDATED`` is kept as ``''`` (the oldest value).
* Only exposures of the tile with ``EFFTIME_SPEC > 0`` are loaded; a tile with none is an
  error of that tile (the old per-tile loader refused it too, §1.7).
* ``date_obs`` is the UTC time of ``MJD`` (astropy ``Time(MJD, format='mjd')``), staged as
  int64 microseconds since 2000-01-01T00:00:00 UTC.  No leap second has occurred since
  2017, before the first DESI night, so a day is 86400 s for every DESI exposure.
* fiberassign rows (FIBERASSIGN, POTENTIAL_ASSIGNMENTS, TARGETS) are kept only where
  :func:`specprod_db.ids.no_sky` holds (TARGETID > 0, SKY bit clear): standards stay;
  skies and unassigned positioners go.
"""
import os
import re

import fitsio
import numpy as np

from .. import ids, rows, schema
from ..log import get_logger
from ..paths import InputError

#: Microseconds per day, and the MJD of the PostgreSQL epoch 2000-01-01T00:00:00 UTC.
_US_PER_DAY = 86_400_000_000
_PG_EPOCH_MJD = 51544

#: Columns of a tiles file: the tile table's (upper case) plus UPDATED (not loaded).
TILES_COLUMNS = tuple(n.upper() for n in schema.TILE.names) + ("UPDATED",)


def _tiles_dtype():
    out = []
    for col in schema.TILE.columns:
        dt = col.dtype
        out.append((col.name.upper(), f"U{dt.itemsize}" if dt.kind == "S" else dt))
    return np.dtype(out + [("UPDATED", "U32")])


def _is_fits(path):
    return path.lower().endswith((".fits", ".fits.gz", ".fit", ".fits.fz"))


# --- tiles file -----------------------------------------------------------------------

def read_tiles_file(path):
    """Every line of a tiles file (CSV or FITS), without choosing between duplicates.

    Returns
    -------
    table : numpy structured array
        Columns :data:`TILES_COLUMNS` (tile-table dtypes, strings as ``str``) in file
        order, one row per line with a readable TILEID.  Fields of a problem line are
        filled (0, NaN, '') and must not be loaded.
    problems : dict
        ``TILEID -> message`` for every tile having a line with a missing or malformed
        required field; lines without a readable TILEID cannot be attributed to a tile
        and are listed under the key ``None``.
    bad_lines : int
        How many lines (FITS: rows) could not be used: a missing, unparsable or
        out-of-range required field, an unreadable TILEID, an ``UPDATED`` that is not a
        timestamp, a line with more or fewer fields than the header, a last line
        without its newline (the file ends mid-line).  Blank lines are not counted.
        Any bad line makes the file *damaged*: the plan then deletes nothing
        (decision 12, :func:`specprod_db.plan.guard_deletes`).

    Raises :class:`InputError` (naming the file) when the file is missing, unreadable or
    lacks a column.
    """
    if not os.path.exists(path):
        raise InputError(f"tiles file {path}: does not exist")
    try:
        if _is_fits(path):
            columns, bad_lines, line_numbers = _tiles_from_fits(path), {}, None
        else:
            columns, bad_lines, line_numbers = _tiles_from_csv(path)
    except InputError:
        raise
    except Exception as err:  # corrupt file: any reader error
        raise InputError(f"tiles file {path}: cannot be read: {err}") from None
    missing = [c for c in TILES_COLUMNS if c not in columns and c != "UPDATED"]
    if missing:
        raise InputError(f"tiles file {path}: missing column(s) {', '.join(missing)}")
    n = len(columns["TILEID"])
    dtype = _tiles_dtype()
    table = np.zeros(n, dtype=dtype)
    why = np.full(n, "", dtype=object)
    tid_ok = np.ones(n, dtype=bool)
    for name in dtype.names:
        if name == "UPDATED" and name not in columns:
            continue
        values, bad = _convert(columns[name], dtype[name], name)
        table[name] = values
        if name == "TILEID":
            tid_ok = bad == ""
        for i in np.flatnonzero(bad != ""):  # error path only
            why[i] += f"{bad[i]}; "
    problems = {}
    for i in np.flatnonzero(why != ""):
        key = int(table["TILEID"][i]) if tid_ok[i] else None
        where = f"line {line_numbers[i]}" if line_numbers else f"row {i + 1}"
        msg = f"tiles file {os.path.basename(path)} {where}: {why[i].rstrip('; ')}"
        problems[key] = f"{problems[key]}; {msg}" if key in problems else msg
    for line, msg in bad_lines.items():
        key = msg[0]
        text = f"tiles file {os.path.basename(path)} line {line}: {msg[1]}"
        problems[key] = f"{problems[key]}; {text}" if key in problems else text
    nbad = int(np.count_nonzero(why != "")) + len(bad_lines)
    if None in problems:
        get_logger().error("%s", problems[None])
    if nbad:
        get_logger().error("tiles file %s is damaged: %d line(s) cannot be used", path, nbad)
    return table[tid_ok], problems, nbad


#: What an ``UPDATED`` value may be (desispec writes ``%Y-%m-%dT%H:%M:%S%z``; the
#: planner also reads fractional seconds and no offset as UTC); empty is allowed.
_UPDATED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d:?\d\d|Z)?")


def _tiles_from_fits(path):
    with fitsio.FITS(path) as fx:
        hdu = None
        if "TILES" in fx:
            hdu = fx["TILES"]
        else:
            hdu = next((h for h in fx if h.get_exttype() in ("BINARY_TBL", "ASCII_TBL")),
                       None)
        if hdu is None:
            raise InputError(f"tiles file {path}: no table HDU")
        data = hdu.read()
    return {name.upper(): data[name] for name in data.dtype.names}


def _tiles_from_csv(path):
    """Columns of a CSV tiles file; lines that are not whole are set aside.

    A line with more or fewer fields than the header is not parsed (astropy would pad a
    short line with masked values, silently for float columns and UPDATED, and read a
    field cut short, e.g. LASTNIGHT ``2024``, as a value); nor is a last line without
    its newline: the file ends mid-line (a writer that did not finish; desispec, through
    astropy, ends every line).  Blank lines are skipped, as astropy skips them.  The
    fields are read with the standard ``csv`` module (quotes as astropy reads them; an
    empty field is missing, as astropy masks it) and converted per column by
    :func:`_convert`: importing astropy's table machinery cost 0.6 s of every load.

    Returns ``(columns, bad_lines, line_numbers)``: ``bad_lines`` maps a file line number
    to ``(TILEID or None, message)``; ``line_numbers`` gives the file line of each row.
    """
    import csv
    with open(path, newline="") as f:
        text = f.read()
    lines = text.splitlines()
    if not lines:
        raise InputError(f"tiles file {path}: empty (no header line)")
    width = len(next(csv.reader([lines[0]])))
    cut = not text.endswith(("\n", "\r"))
    header = [h.strip() for h in next(csv.reader([lines[0]]))]
    keep, bad_lines, numbers = [], {}, []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        last = number == len(lines)
        fields = next(csv.reader([line]), [])
        if len(fields) != width or (last and cut):
            problem = f"{len(fields)} fields, header has {width}"
            if last and cut:
                problem += "; the file ends mid-line (no newline after the last line)"
            try:  # the TILEID is whole only if a separator follows it
                key = int(fields[0]) if len(fields) > 1 else None
            except ValueError:
                key = None
            bad_lines[number] = (key, problem)
        else:
            keep.append(fields)
            numbers.append(number)
    columns = {}
    for i, name in enumerate(header):
        values = np.array([row[i].strip() for row in keep], dtype=str)
        columns[name.upper()] = np.ma.array(values, mask=values == "")
    return columns, bad_lines, numbers


def _convert(raw, dtype, name):
    """``raw`` as ``dtype``; returns (values, problems) with '' where a row is fine."""
    raw = np.ma.asarray(raw)
    n = len(raw)
    mask = np.ma.getmaskarray(raw)
    data = np.asarray(raw.data)
    bad = np.full(n, "", dtype=object)
    if data.dtype.kind == "S":
        data = np.char.decode(data, "ascii", errors="replace")
    if dtype.kind == "U":
        out = np.char.strip(data.astype(str))
        if name == "UPDATED":  # empty is fine (the oldest); a damaged value is not
            out = np.where(mask, "", out)
            for i in np.flatnonzero(out != ""):
                if not _UPDATED.fullmatch(str(out[i])):
                    bad[i] = f"UPDATED {str(out[i])!r} not a timestamp"
            return out.astype(dtype), bad
        too_long = np.char.str_len(out) > dtype.itemsize // 4
        bad[too_long] = f"{name} longer than {dtype.itemsize // 4} characters"
        bad[mask] = f"{name} missing"
        return np.where(mask, "", out).astype(dtype), bad
    if dtype.kind == "f":
        values = np.full(n, np.nan)
        ok = ~mask
        parsed, unparsable = _parse(data[ok], float)
        parsed[unparsable] = np.nan
        values[ok] = parsed
        bad[np.flatnonzero(ok)[unparsable]] = f"{name} not a number"
        return values, bad
    values = np.zeros(n, dtype=np.int64)
    ok = ~mask
    parsed, unparsable = _parse(data[ok], np.int64)
    values[ok] = parsed
    bad[np.flatnonzero(ok)[unparsable]] = f"{name} not an integer"
    info = np.iinfo(dtype)
    out_of_range = (values < info.min) | (values > info.max)
    bad[out_of_range] = f"{name} out of range"
    bad[mask] = f"{name} missing"
    values[out_of_range | mask] = 0
    return values.astype(dtype), bad


def _parse(values, kind):
    """Vectorised parse of ``values`` as ``kind``, per element only if that fails."""
    unparsable = np.zeros(len(values), dtype=bool)
    if values.dtype.kind in "iuf" and kind is float:
        return values.astype(float), unparsable
    if values.dtype.kind in "iu" and kind is np.int64:
        return values.astype(np.int64), unparsable
    if values.dtype.kind == "f":  # integers written as floats: 3.0 is fine, 3.5 is not
        unparsable = ~np.isfinite(values) | (values != np.round(values))
        return np.where(unparsable, 0, values).astype(np.int64), unparsable
    try:
        return values.astype(kind), unparsable
    except (ValueError, TypeError):
        pass
    out = np.zeros(len(values), dtype=kind)
    for i, v in enumerate(values):  # error path only
        try:
            out[i] = kind(str(v).strip())
        except (ValueError, TypeError, OverflowError):
            try:  # an integer written as a float: 3.0 is fine, 3.5 is not
                f = float(str(v).strip())
                if kind is float or not (np.isfinite(f) and f == round(f)):
                    raise ValueError
                out[i] = int(f)
            except (ValueError, OverflowError):
                unparsable[i] = True
    return out, unparsable


def tile_rows(line, stats=None):
    """The ``tile`` row (1-row array) of one tiles-file row (columns 1-21, UPDATED dropped)."""
    cols = {name: np.atleast_1d(line[name.upper()]) for name in schema.TILE.names}
    return rows.build("tile", cols, n=1, stats=stats)


# --- exposures file -------------------------------------------------------------------

def read_exposures_file(path):
    """``(exposures, frames)``: the columns of the EXPOSURES and FRAMES HDUs that load.

    Raises :class:`InputError` naming the file when it is missing or corrupt or lacks a
    column.
    """
    need_exp = [n.upper() for n in schema.EXPOSURE.names if n != "date_obs"]
    need_frm = [n.upper() for n in schema.FRAME.names if n != "frameid"]
    if not os.path.exists(path):
        raise InputError(f"exposures file {path}: does not exist")
    try:
        with fitsio.FITS(path) as fx:
            return (_read_columns(fx, "EXPOSURES", need_exp, path),
                    _read_columns(fx, "FRAMES", need_frm, path))
    except InputError:
        raise
    except Exception as err:
        raise InputError(f"exposures file {path}: cannot be read: {err}") from None


def _read_columns(fx, extname, columns, path, what="file"):
    if extname not in fx:
        raise InputError(f"{what} {path}: no {extname} HDU")
    hdu = fx[extname]
    have = {c.upper(): c for c in hdu.get_colnames()}
    missing = [c for c in columns if c not in have]
    if missing:
        raise InputError(f"{what} {path}: HDU {extname} lacks column(s) {', '.join(missing)}")
    data = hdu.read(columns=[have[c] for c in columns])
    data.dtype.names = columns
    return data


def mjd_to_pg_microseconds(mjd):
    """UTC ``MJD`` as int64 microseconds since 2000-01-01T00:00:00 UTC (timestamptz stage).

    Exact to the microsecond (rounded half away from zero, as astropy's ``.datetime``):
    the whole days and the day fraction are converted separately, so no precision is
    lost in the multiplication.  Non-finite MJD raises ValueError.
    """
    mjd = np.asarray(mjd, dtype=np.float64)
    if not np.isfinite(mjd).all():
        raise ValueError("non-finite MJD")
    days = np.floor(mjd)
    frac_us = np.round((mjd - days) * _US_PER_DAY).astype(np.int64)
    return (days.astype(np.int64) - _PG_EPOCH_MJD) * _US_PER_DAY + frac_us


def exposure_rows(exposures, tileid, stats=None, path="exposures file"):
    """``exposure`` rows of tile ``tileid``: its exposures with ``EFFTIME_SPEC > 0``.

    Raises :class:`InputError` (naming tile and file) when there is none, or when an
    MJD is not finite.
    """
    keep = (exposures["TILEID"] == tileid) & (exposures["EFFTIME_SPEC"] > 0)
    if not keep.any():
        raise InputError(f"tile {tileid}: {path}: tile has EFFTIME_SPEC>0 but no exposure "
                         "with EFFTIME_SPEC>0")
    sel = exposures[keep]
    try:
        date_obs = mjd_to_pg_microseconds(sel["MJD"])
    except ValueError:
        bad = sel["EXPID"][~np.isfinite(sel["MJD"])].tolist()
        raise InputError(f"tile {tileid}: {path}: non-finite MJD for EXPID {bad}") from None
    cols = {n: (date_obs if n == "date_obs" else sel[n.upper()])
            for n in schema.EXPOSURE.names}
    return _build("exposure", cols, stats, tileid, path)


def frame_rows(frames, expids, stats=None, tileid=None, path="exposures file"):
    """``frame`` rows of the exposures ``expids`` (at least one is required)."""
    sel = frames[np.isin(frames["EXPID"], np.asarray(expids))]
    if len(sel) == 0:
        raise InputError(f"tile {tileid}: {path}: no FRAMES row for EXPID "
                         f"{sorted(np.asarray(expids).tolist())}")
    try:
        frameid = ids.frameid(sel["EXPID"], sel["CAMERA"])
    except ValueError as err:
        raise InputError(f"tile {tileid}: {path}: {err}") from None
    cols = {n: (frameid if n == "frameid" else sel[n.upper()]) for n in schema.FRAME.names}
    return _build("frame", cols, stats, tileid, path)


def _build(table, cols, stats, tileid, path):
    try:
        return rows.build(table, cols, stats=stats)
    except rows.RowError as err:
        raise InputError(f"tile {tileid}: {path}: {err}") from None


# --- fiberassign file -----------------------------------------------------------------

def fiberassign_files(paths, tileid):
    """``[(name, path)]`` of the tile's fiberassign file, for its fingerprint."""
    path = paths.fiberassign_file(tileid)
    return [(os.path.basename(path), path)]


def fiberassign_rows(path, tileid, stats=None):
    """The tile's fiberassign file as ``(fiberassign, potential, targets, header)``.

    ``fiberassign`` and ``potential`` are arrays of those tables (FIBERASSIGN and
    POTENTIAL_ASSIGNMENTS rows passing ``no_sky``); ``targets`` has columns TARGETID,
    RA, DEC of the TARGETS rows passing ``no_sky`` (the potential targets); ``header``
    is the PRIMARY header as a dict.  A missing, truncated or inconsistent file raises
    :class:`InputError` naming tile, file and problem; so does a header TILEID other
    than ``tileid``.
    """
    tileid = int(tileid)
    if not os.path.exists(path):
        raise InputError(f"tile {tileid}: fiberassign file {path}: does not exist")
    fa_cols = [n.upper() for n in schema.FIBERASSIGN.names if n not in ("id", "tileid")]
    what = f"tile {tileid}: fiberassign file"
    try:
        with fitsio.FITS(path) as fx:
            header = _header_dict(fx[0].read_header())
            fa = _read_columns(fx, "FIBERASSIGN", fa_cols, path, what)
            pot = _read_columns(fx, "POTENTIAL_ASSIGNMENTS",
                                ["TARGETID", "FIBER", "LOCATION"], path, what)
            tg = _read_columns(fx, "TARGETS", ["TARGETID", "RA", "DEC"], path, what)
    except InputError:
        raise
    except Exception as err:
        raise InputError(f"{what} {path}: cannot be read: {err}") from None
    if "TILEID" in header and int(header["TILEID"]) != tileid:
        raise InputError(f"{what} {path}: header TILEID {header['TILEID']} is not the tile")
    fa = fa[ids.no_sky(fa["TARGETID"])]
    pot = pot[ids.no_sky(pot["TARGETID"])]
    tg = tg[ids.no_sky(tg["TARGETID"])]
    try:
        fa_id = ids.fiberassign_id(fa["LOCATION"], tileid, fa["TARGETID"])
        pot_id = ids.fiberassign_id(pot["LOCATION"], tileid, pot["TARGETID"])
    except ValueError as err:
        raise InputError(f"{what} {path}: {err}") from None
    fa_cols = {n: fa[n.upper()] for n in schema.FIBERASSIGN.names if n not in ("id", "tileid")}
    fiberassign = _build("fiberassign", dict(fa_cols, id=fa_id, tileid=tileid), stats,
                         tileid, path)
    potential = _build("potential", {"id": pot_id, "tileid": tileid,
                                     "targetid": pot["TARGETID"], "fiber": pot["FIBER"],
                                     "location": pot["LOCATION"]}, stats, tileid, path)
    targets = np.zeros(len(tg), dtype=[("TARGETID", "i8"), ("RA", "f8"), ("DEC", "f8")])
    for name in targets.dtype.names:
        targets[name] = tg[name]
    return fiberassign, potential, targets, header


def _header_dict(hdr):
    return {r["name"]: r["value"] for r in hdr.records()
            if r.get("name") and r["name"] not in ("COMMENT", "HISTORY", "CONTINUE")}
