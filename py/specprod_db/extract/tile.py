"""Per-tile inputs: the tiles file, exposures and frames, the fiberassign file.

Readers return numpy structured arrays; the ``*_rows`` functions return arrays of the
tables of :mod:`specprod_db.schema` (built by :func:`specprod_db.extract.rows.build`, which
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
import csv
import hashlib
import os
import re
import stat

import fitsio
import numpy as np

from specprod_db import ids, schema
from specprod_db.errors import InputError
from specprod_db.extract import rows
from specprod_db.extract.faflavor import faflavor2program
from specprod_db.log import get_logger

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

#: The largest tiles file read, in bytes (128 MiB).  Real tiles-daily files are a few MB
#: (~30,000 lines of ~200 bytes; the FITS form about as much): a larger one is refused
#: before anything is parsed (``--tiles-file /dev/zero`` must not read until memory runs
#: out).  doc/daily.md, "Guards".
TILES_FILE_MAX_BYTES = 128 * 1024 * 1024

#: String columns a tiles-file line may leave empty: PROGRAM (desispec#2251: about a
#: quarter of the real tiles-daily rows, written before it was filled, have a null
#: PROGRAM; datamodel.md §1.3, §1.7; it is then ``faflavor2program(FAFLAVOR)``, as DESI's
#: tools patch it, and FAFLAVOR may not be empty), and UPDATED (empty = the oldest,
#: datamodel.md §1.6).  Any other string column empty makes the line bad.
MAY_BE_EMPTY = ("PROGRAM", "UPDATED")

#: Float columns the plan decides on: a blank, NaN or infinite value makes the line bad
#: (never "withdrawn").  Other float columns may hold NaN (stored as -9999, counted).
FINITE_COLUMNS = ("EFFTIME_SPEC",)

_BOM = b"\xef\xbb\xbf"


def read_tiles_file(path: str, info: dict = None, max_bytes: int = None):
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
        out-of-range required field, an unreadable TILEID, a blank, NaN or infinite
        EFFTIME_SPEC, a LASTNIGHT that is not a calendar night ``YYYYMMDD``, an
        ``UPDATED`` that :func:`specprod_db.load.plan.parse_updated` does not read, an empty
        string column other than :data:`MAY_BE_EMPTY`, non-ASCII text, a line with more
        or fewer fields than the header, a last line without its newline (the file ends
        mid-line).  Blank lines are not counted.  Any bad line makes the file *damaged*:
        the plan then deletes nothing (decision 12,
        :func:`specprod_db.load.plan.guard_deletes`).

    ``info``, if given, is filled with what was read: ``path`` (as given), ``resolved``
    (symbolic links resolved), ``size`` (bytes) and ``sha256`` (of those bytes); the
    resolved path is logged when it differs.  A UTF-8 byte-order mark at the start of a
    CSV file is skipped.

    Raises :class:`InputError` (naming the file) when the file is missing, unreadable,
    larger than ``max_bytes`` (default :data:`TILES_FILE_MAX_BYTES`) or lacks a column.
    """
    if not os.path.exists(path):
        raise InputError(f"tiles file {path}: does not exist")
    limit = TILES_FILE_MAX_BYTES if max_bytes is None else int(max_bytes)
    data = _read_limited(path, limit)
    resolved = os.path.realpath(path)
    if info is not None:
        info.update(path=path, resolved=resolved, size=len(data),
                    sha256=hashlib.sha256(data).hexdigest())
    if resolved != os.path.abspath(path):
        get_logger().info("tiles file %s is %s", path, resolved)
    try:
        if _is_fits(path):
            columns, bad_lines, line_numbers = _tiles_from_fits(path), {}, None
        else:
            columns, bad_lines, line_numbers = _tiles_from_csv(data, path)
    except InputError:
        raise
    except Exception as err:  # corrupt file: any reader error
        raise InputError(f"tiles file {path}: cannot be read: {err}") from None
    del data
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
    empty = (table["PROGRAM"] == "") & (table["FAFLAVOR"] != "")
    if empty.any():  # desispec#2251: patched as DESI's tools patch them
        table["PROGRAM"][empty] = faflavor2program(table["FAFLAVOR"][empty])
        get_logger().info("tiles file %s: %d line(s) with an empty PROGRAM (desispec#2251), "
                          "PROGRAM taken from FAFLAVOR (faflavor2program)", path,
                          int(np.count_nonzero(empty & (why == ""))))
    return table[tid_ok], problems, nbad


def _read_limited(path, limit):
    """The bytes of ``path``, refused (:class:`InputError` naming file and limit) beyond
    ``limit`` bytes: a regular file by its size, anything else (a device, a pipe) by
    reading at most ``limit + 1`` bytes."""
    refused = (f"tiles file {path}: larger than the limit of {limit} bytes "
               f"({limit / 2**20:g} MiB; real tiles files are a few MB): refused")
    try:
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode) and st.st_size > limit:
            raise InputError(refused)
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except InputError:
        raise
    except OSError as err:
        raise InputError(f"tiles file {path}: cannot be read: {err}") from None
    if len(data) > limit:
        raise InputError(refused)
    return data


def _tiles_from_fits(path):
    """Columns of a FITS tiles file (HDU ``TILES``, else the first table HDU).  Strings
    whose bytes are not ASCII, which fitsio refuses for the whole table, are read as
    bytes (by astropy) so that :func:`_convert` finds the rows that hold them."""
    with fitsio.FITS(path) as fx:
        hdu = None
        if "TILES" in fx:
            hdu = fx["TILES"]
        else:
            hdu = next((h for h in fx if h.get_exttype() in ("BINARY_TBL", "ASCII_TBL")),
                       None)
        if hdu is None:
            raise InputError(f"tiles file {path}: no table HDU")
        try:
            data = hdu.read()
        except UnicodeDecodeError:
            from astropy.io import fits
            with fits.open(path, memmap=False) as hdus:
                data = np.array(hdus[hdu.get_extnum()].data)
    return {name.upper(): data[name] for name in data.dtype.names}


#: Line ends of a CSV tiles file (not str.splitlines, which also splits at \x0b, \x0c,
#: \x1c-\x1e, \x85, \u2028 ... inside a line).
_EOL = re.compile(r"\r\n|\r|\n")


#: A character a tiles-file line may not hold: desispec writes printable ASCII; the
#: columns are ASCII in the database, which refuses a NUL.
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def _unprintable(fields, header):
    """The problem of a line with a character outside printable ASCII, naming the
    columns (``fields`` as split)."""
    what = {}
    for i, f in enumerate(fields):
        m = _UNPRINTABLE.search(f)
        if m:
            kind = "non-ASCII text" if not f.isascii() else \
                f"a control character ({m.group()!r})"
            what.setdefault(kind, []).append(header[i] if i < len(header)
                                             else f"field {i + 1}")
    return "; ".join(f"{k} in {', '.join(v)}" for k, v in what.items()) \
        or "a control character in the line"


def _tiles_from_csv(data, path):
    """Columns of a CSV tiles file (its bytes ``data``); lines that are not whole are set
    aside.

    A line with more or fewer fields than the header is not parsed (astropy would pad a
    short line with masked values, silently for float columns and UPDATED, and read a
    field cut short, e.g. LASTNIGHT ``2024``, as a value); nor is a last line without
    its newline: the file ends mid-line (a writer that did not finish; desispec, through
    astropy, ends every line); nor a line with non-ASCII bytes (desispec writes ASCII;
    the columns are ASCII in the database) or that the ``csv`` module refuses (a NUL).
    A UTF-8 byte-order mark before the header is skipped.  Blank lines are skipped, as
    astropy skips them.  The fields are read with the standard ``csv`` module (quotes as
    astropy reads them; an empty field is missing, as astropy masks it) and converted per
    column by :func:`_convert`: importing astropy's table machinery cost 0.6 s of every
    load.

    Returns ``(columns, bad_lines, line_numbers)``: ``bad_lines`` maps a file line number
    to ``(TILEID or None, message)``; ``line_numbers`` gives the file line of each row.
    """
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    text = data.decode("latin-1")  # every byte one character; non-ASCII found per line
    cut = not text.endswith(("\n", "\r"))
    lines = text.split("\n") if "\r" not in text else _EOL.split(text)
    if not cut:
        lines.pop()  # the empty string after the last line end
    if not lines or not "".join(lines).strip():
        raise InputError(f"tiles file {path}: empty (no header line)")
    header = [h.strip() for h in next(csv.reader([lines[0]]))]
    width = len(header)
    upper = [h.upper() for h in header]
    tid_col = upper.index("TILEID") if "TILEID" in upper else 0
    keep, bad_lines, numbers = [], {}, []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        last = number == len(lines)
        try:
            fields = next(csv.reader([line]), [])
            problem = None
        except csv.Error as err:
            fields, problem = line.split(","), f"not a CSV line ({err})"
        whole = len(fields) == width and not (last and cut)
        if problem is None and not whole:
            problem = f"{len(fields)} fields, header has {width}"
            if last and cut:
                problem += "; the file ends mid-line (no newline after the last line)"
        if problem is None and _UNPRINTABLE.search(line):
            problem = _unprintable(fields, header)
        if problem is None:
            keep.append(fields)
            numbers.append(number)
            continue
        key = None
        # the TILEID is whole only if a separator follows it (or the line is whole)
        if tid_col < len(fields) and (whole or tid_col < len(fields) - 1):
            raw = fields[tid_col].strip()
            if raw.isascii() and raw.lstrip("+-").isdigit():
                key = int(raw)
        bad_lines[number] = (key, problem)
    columns = {}
    for i, name in enumerate(header):
        values = np.array([row[i].strip() for row in keep], dtype=str)
        columns[name.upper()] = np.ma.array(values, mask=values == "")
    return columns, bad_lines, numbers


def _convert(raw, dtype, name):
    """``raw`` as ``dtype``; returns (values, problems) with '' where a row is fine.

    The plan's fields are read by the plan's own parsers
    (:func:`specprod_db.load.plan.parse_updated`,
    :func:`specprod_db.load.plan.parse_night`); a value they refuse is a problem of its
    line, and is replaced by a fill value (0, NaN, '')."""
    from specprod_db.load.plan import parse_night, parse_updated
    raw = np.ma.asarray(raw)
    n = len(raw)
    mask = np.ma.getmaskarray(raw)
    data = np.asarray(raw.data)
    bad = np.full(n, "", dtype=object)
    if data.dtype.kind == "S":  # FITS: printable ASCII, NUL-padded
        if data.dtype.itemsize and n:
            octets = np.ascontiguousarray(data).view(np.uint8).reshape(n, -1)
            pad = np.cumsum(octets == 0, axis=1) > 0  # from the first NUL on
            nonascii = (octets >= 0x80).any(axis=1)
            control = (((octets < 0x20) & (octets > 0)) | (octets == 0x7f)
                       | (pad & (octets != 0))).any(axis=1)
            bad[control] = f"a control character in {name}"
            bad[nonascii] = f"non-ASCII text in {name}"
            data = np.where(bad != "", b"", data)
        data = np.char.decode(data.astype("S"), "ascii")
    if dtype.kind == "U":
        out = np.char.strip(data.astype(str))
        out = np.where(mask, "", out)
        blank = (out == "") & (bad == "")
        if name == "UPDATED":  # empty is fine (the oldest); a damaged value is not
            seen = {}
            for i in np.flatnonzero(out != ""):
                v = str(out[i])
                if v not in seen:
                    try:
                        parse_updated(v)
                        seen[v] = ""
                    except ValueError as err:
                        seen[v] = str(err)
                if seen[v]:
                    bad[i] = seen[v]
            out = np.where(bad != "", "", out)
            return out.astype(dtype), bad
        too_long = np.char.str_len(out) > dtype.itemsize // 4
        bad[too_long] = f"{name} longer than {dtype.itemsize // 4} characters"
        if name not in MAY_BE_EMPTY:
            bad[blank] = f"{name} missing"
        return np.where(bad != "", "", out).astype(dtype), bad
    if dtype.kind == "f":
        values = np.full(n, np.nan)
        ok = ~mask
        parsed, unparsable = _parse(data[ok], float)
        parsed[unparsable] = np.nan
        values[ok] = parsed
        bad[np.flatnonzero(ok)[unparsable]] = f"{name} not a number"
        if name in FINITE_COLUMNS:
            nonfinite = ok & ~np.isfinite(values) & (bad == "")
            for i in np.flatnonzero(nonfinite):  # error path only
                bad[i] = f"{name} {str(data[i]).strip()!r} not a finite number"
            bad[mask] = f"{name} missing"
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
    if name == "LASTNIGHT":
        fine = bad == ""
        for night in np.unique(values[fine]).tolist():
            try:
                parse_night(night)
            except ValueError as err:
                bad[fine & (values == night)] = str(err)
    values[bad != ""] = 0
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

    Only those qualify (datamodel.md §10.4, as the old loader selects them; unprocessed
    exposures have ``EFFTIME_SPEC == 0``, §2.4).  An exposure whose EFFTIME_SPEC is NaN
    does not qualify either, but is not silently dropped: its EXPIDs are listed in
    ``stats["nan_efftime_expids"]`` (the run counts and logs them,
    ``warnings.nan_efftime_exposures``).

    Raises :class:`InputError` (naming tile and file) when there is none, or when an
    MJD is not finite.
    """
    mine = exposures["TILEID"] == tileid
    efftime = np.asarray(exposures["EFFTIME_SPEC"], dtype=np.float64)
    nan = mine & np.isnan(efftime)
    if nan.any() and stats is not None:
        stats["nan_efftime_expids"] = sorted(
            stats.get("nan_efftime_expids", []) + exposures["EXPID"][nan].tolist())
    keep = mine & (efftime > 0)
    if not keep.any():
        also = (f" ({int(nan.sum())} with EFFTIME_SPEC NaN: EXPID "
                f"{exposures['EXPID'][nan].tolist()})") if nan.any() else ""
        raise InputError(f"tile {tileid}: {path}: tile has EFFTIME_SPEC>0 but no exposure "
                         f"with EFFTIME_SPEC>0{also}")
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
    """``frame`` rows of the exposures ``expids`` (at least one is required).

    One row per exposure and camera: a FRAMES HDU holding the same EXPID and CAMERA
    twice fails the tile (:class:`InputError` naming them; the table's primary key
    ``frameid`` and unique index ``(expid, camera)`` would refuse the second row)."""
    sel = frames[np.isin(frames["EXPID"], np.asarray(expids))]
    if len(sel) == 0:
        raise InputError(f"tile {tileid}: {path}: no FRAMES row for EXPID "
                         f"{sorted(np.asarray(expids).tolist())}")
    try:
        frameid = ids.frameid(sel["EXPID"], sel["CAMERA"])
    except ValueError as err:
        raise InputError(f"tile {tileid}: {path}: {err}") from None
    unique, first, counts = np.unique(frameid, return_index=True, return_counts=True)
    if (counts > 1).any():
        twice = np.flatnonzero(counts > 1)
        pairs = ", ".join(
            f"EXPID {int(sel['EXPID'][first[k]])} camera "
            f"{np.char.decode(np.asarray(sel['CAMERA'][first[k]], dtype='S2')).item()} "
            f"({int(counts[k])} rows)" for k in twice[:5])
        raise InputError(f"tile {tileid}: {path}: HDU FRAMES has the same EXPID and CAMERA "
                         f"more than once: {pairs}"
                         + (f" and {len(twice) - 5} more" if len(twice) > 5 else ""))
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
            header = header_dict(fx[0].read_header())
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


def header_dict(hdr: "fitsio.FITSHDR") -> dict:
    """A FITS header as {keyword: value}, without COMMENT, HISTORY and CONTINUE cards."""
    return {r["name"]: r["value"] for r in hdr.records()
            if r.get("name") and r["name"] not in ("COMMENT", "HISTORY", "CONTINUE")}
