"""Value-added catalogs (VACs) and afterburners: any FITS binary table as ``S.vac_NAME``.

``specprod-db vac load --schema S --name NAME FILE.fits[:HDU] ...`` (doc/vac.md):

1. **convert** (one task per file, :func:`convert_file`, on the worker ranks over MPI):
   the HDU's header decides every column's PostgreSQL type (:func:`describe_hdu`, the
   table in doc/vac.md); the raw big-endian rows are converted with numpy (unsigned and
   signed-byte conventions, scaling, logical, blank-padded strings) into an HDF5 stage
   file (:class:`~specprod_db.stage.StageFile`, array ``aux/vac``) and the task returns
   the file's column description;
2. **check** (rank 0): every file has the same columns; no key appears twice (the file,
   column and value named); nothing is written before this;
3. **build** (rank 0, one transaction): ``S.vac_NAME__new`` is created, every stage file
   COPYed into it by the binary encoder of :mod:`specprod_db.pgcopy` (a
   :class:`VacTable` plays ``schema.Table``), then its primary key, its foreign keys
   (checked first: an unmatched key is named with its file), its q3c index, its
   description (``COMMENT ON TABLE``, JSON) and ANALYZE;
4. **swap** (rank 0, one short transaction): the old ``S.vac_NAME`` is dropped and the
   new one renamed, with its constraints and indexes, and given the old one's readers.

The build is committed before the swap on purpose: the swap is then catalog changes
only, holds the old table's lock for milliseconds, and can wait for readers and retry
(:data:`SWAP_ATTEMPT`) without redoing the COPY.  A reader's statement sees the old table
or the new one, whole: a statement queued behind the swap resolves the name again once
it gets its lock and reads the new table.  (Like any DDL, the swap is not MVCC-safe for a
REPEATABLE READ transaction whose snapshot predates the build: it would find the new
table empty.)  A failure at any step leaves the old table as it was and no ``__new``
table; a crash between build and swap leaves one, which the next load of that VAC drops.

The description of each VAC is its table comment, so it moves with the table through
the swap and disappears with it: no bookkeeping table can disagree with the tables.
"""
import json
import os
import re
import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property

import numpy as np
import psycopg2
from psycopg2 import sql

from . import __version__, mpi, stage
from .db import ensure_q3c, qualified, schema_exists
from .errors import InputError, RunRefused
from .log import get_logger
from .pgcopy import Encoder, StreamReader, prefetch

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

#: (ra, dec) column pairs, in order of preference, for the q3c index.
Q3C_PAIRS = (("ra", "dec"), ("target_ra", "target_dec"),
             ("mean_fiber_ra", "mean_fiber_dec"), ("tilera", "tiledec"))

#: Rows read from a stage file and handed to the encoder at a time.
READ_ROWS = 200_000

#: Seconds the swap waits for its lock in one attempt (readers queue behind it meanwhile).
SWAP_ATTEMPT = 2.0

#: Advisory-lock class of VAC loads (one load per schema and VAC name).
LOCK_NAMESPACE = 0x5641

#: Unsigned conventions: (TFORM letter, TZERO) -> staged numpy dtype and PostgreSQL type.
_UNSIGNED = {("B", -128): ("i1", "smallint"), ("I", 32768): ("u2", "integer"),
             ("J", 2147483648): ("u4", "bigint"), ("K", 9223372036854775808): ("u8",
                                                                           "numeric(20)")}
#: Plain (unscaled) types of each TFORM letter: raw numpy dtype, staged dtype, pgtype.
_PLAIN = {"L": ("i1", "?", "boolean"), "B": ("u1", "u1", "smallint"),
          "I": (">i2", "i2", "smallint"), "J": (">i4", "i4", "integer"),
          "K": (">i8", "i8", "bigint"), "E": (">f4", "f4", "real"),
          "D": (">f8", "f8", "double precision")}
_UNSUPPORTED = {"X": "bit columns (X)", "C": "complex numbers (C)",
                "M": "complex numbers (M)", "P": "variable-length arrays (P)",
                "Q": "variable-length arrays (Q)"}
_TFORM = re.compile(r"^\s*(\d*)\s*([A-Za-z])(.*)$")


# --- the table description -----------------------------------------------------------

@dataclass(frozen=True)
class VacColumn:
    """One column of a VAC: its (lower-case) name, PostgreSQL type (``real[]`` for an
    array), the numpy dtype it is staged in (a subarray dtype for arrays) and the FITS
    column it comes from (name, TFORM) for messages."""
    name: str
    pgtype: str
    stage: str
    shape: tuple = ()
    fits_name: str = ""
    tform: str = ""

    @property
    def dtype(self):
        return np.dtype((self.stage, self.shape)) if self.shape else np.dtype(self.stage)

    @property
    def ddl_type(self):
        return self.pgtype.replace("varchar", "character varying")

    @property
    def scalar(self):
        return not self.shape

    def to_json(self):
        return [self.name, self.pgtype, self.stage, list(self.shape), self.fits_name,
                self.tform]

    @classmethod
    def from_json(cls, item):
        name, pgtype, stage_, shape, fits_name, tform = item
        return cls(name, pgtype, stage_, tuple(shape), fits_name, tform)


@dataclass(frozen=True)
class VacTable:
    """A VAC's columns, in the shape :class:`~specprod_db.pgcopy.Encoder` expects of a
    ``schema.Table`` (``columns``, ``column(name)``, ``names``, ``dtype``)."""
    name: str
    columns: tuple

    @cached_property
    def names(self):
        return tuple(c.name for c in self.columns)

    def column(self, name):
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no column {name!r}")

    @cached_property
    def dtype(self):
        return np.dtype([(c.name, c.dtype) for c in self.columns])


def table_name(name):
    return PREFIX + name


def check_name(name):
    """The VAC name, or :class:`RunRefused` when it cannot be one."""
    if not NAME_PATTERN.match(name or "") or len(name) > MAX_NAME:
        raise RunRefused(f"VAC name {name!r}: lower-case letters, digits and single "
                         f"underscores, starting with a letter, at most {MAX_NAME} "
                         f"characters (the table is {PREFIX}NAME)")
    return name


# --- FITS -> columns -------------------------------------------------------------------

def parse_source(text):
    """``FILE.fits[:HDU]`` -> (path, hdu): HDU a number, an EXTNAME, or None (the first
    binary table).  A path that exists as given is never split."""
    if os.path.exists(text) or ":" not in text:
        return text, None
    path, hdu = text.rsplit(":", 1)
    if not hdu:
        return path, None
    return path, int(hdu) if hdu.isdigit() else hdu


def source_label(path, hdu):
    return path if hdu is None else f"{path}[{hdu}]"


def _open_hdu(path, hdu):
    """(HDUList, the binary-table HDU) of ``path``; :class:`InputError` naming the file."""
    from astropy.io import fits
    try:
        hdul = fits.open(path, memmap=True)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as err:
        raise InputError(f"{path}: not a readable FITS file ({err})") from None
    try:
        if hdu is None:
            found = [h for h in hdul[1:] if isinstance(h, fits.BinTableHDU)]
            if not found:
                raise InputError(f"{path}: no binary table HDU")
            table = found[0]
        else:
            try:
                table = hdul[hdu]
            except (KeyError, IndexError):
                raise InputError(f"{path}: no HDU {hdu!r}") from None
            if not isinstance(table, fits.BinTableHDU):
                raise InputError(f"{source_label(path, hdu)}: not a binary table "
                                 f"({type(table).__name__})")
    except BaseException:
        hdul.close()
        raise
    return hdul, table


def _tdim(text):
    """TDIMn ``(3,2)`` -> numpy shape (2, 3) (FITS lists the fastest axis first)."""
    dims = [int(d) for d in text.strip().strip("()").split(",") if d.strip()]
    return tuple(reversed(dims))


def describe_column(header, n, label):
    """The :class:`VacColumn` of column ``n`` (1-based) of a binary-table ``header``, and
    how to convert its raw values (``'plain'``, ``'unsigned'``, ``'scaled'``,
    ``'logical'``, ``'string'``); ``None`` for a column of repeat 0 (no data)."""
    fits_name = str(header.get(f"TTYPE{n}", "")).strip()
    tform = str(header[f"TFORM{n}"]).strip()
    if not fits_name:
        raise InputError(f"{label}: column {n} has no name (TTYPE{n})")
    name = fits_name.lower()
    m = _TFORM.match(tform)
    if not m:
        raise InputError(f"{label}: column {fits_name}: TFORM {tform!r} not understood")
    repeat, letter = int(m.group(1) or 1), m.group(2).upper()
    where = f"{label}: column {fits_name} (TFORM {tform})"
    if letter in _UNSUPPORTED:
        raise InputError(f"{where}: {_UNSUPPORTED[letter]} are not supported")
    if letter not in _PLAIN and letter != "A":
        raise InputError(f"{where}: data type {letter!r} is not supported")
    if repeat == 0:
        return None, None
    tdim = header.get(f"TDIM{n}")
    if letter == "A":
        shape = _tdim(tdim) if tdim else (repeat,)
        width = shape[-1]
        shape = shape[:-1]
        if int(np.prod(shape or (1,))) * width != repeat:
            raise InputError(f"{where}: TDIM{n} {tdim!r} does not match the repeat count")
        pgtype = f"varchar({width})" + ("[]" if shape else "")
        return VacColumn(name, pgtype, f"S{width}", shape, fits_name, tform), "string"
    shape = _tdim(tdim) if tdim else ((repeat,) if repeat > 1 else ())
    if int(np.prod(shape or (1,))) != repeat:
        raise InputError(f"{where}: TDIM{n} {tdim!r} does not match the repeat count")
    if shape == (1,) and repeat == 1:
        shape = ()
    tscal = header.get(f"TSCAL{n}", 1)
    tzero = header.get(f"TZERO{n}", 0)
    if letter == "L":
        how, staged, pgtype = "logical", "?", "boolean"
    elif tscal == 1 and tzero == 0:
        how, (_, staged, pgtype) = "plain", _PLAIN[letter]
    elif tscal == 1 and (letter, tzero) in _UNSIGNED:
        how, (staged, pgtype) = "unsigned", _UNSIGNED[(letter, tzero)]
    else:
        how, staged, pgtype = "scaled", "f8", "double precision"
    if shape:
        pgtype += "[]"
    return VacColumn(name, pgtype, staged, shape, fits_name, tform), how


def describe_hdu(header, label):
    """[(VacColumn, how, column number)] of a binary table; :class:`InputError` on a
    column that cannot be loaded or two columns with one lower-case name."""
    out, seen = [], {}
    for n in range(1, int(header["TFIELDS"]) + 1):
        col, how = describe_column(header, n, label)
        if col is None:
            get_logger().warning("%s: column %s has no data (repeat 0): skipped", label,
                                 header.get(f"TTYPE{n}"))
            continue
        if col.name in seen:
            raise InputError(f"{label}: columns {seen[col.name]} and {col.fits_name} have "
                             f"the same lower-case name {col.name!r}")
        seen[col.name] = col.fits_name
        out.append((col, how, n))
    if not out:
        raise InputError(f"{label}: no column to load")
    return out


def _convert(raw, col, how, header, n):
    """Raw (big-endian, unscaled) values of one column -> staged values."""
    if how == "logical":
        return raw.view(np.uint8) == ord("T")
    if how == "string":
        return np.char.rstrip(raw, b" ")
    if how == "plain":
        return raw.astype(col.stage)
    if how == "unsigned":
        bits = {"i1": 8, "u2": 16, "u4": 32, "u8": 64}[col.stage]
        flip = np.array(1 << (bits - 1), dtype=f"u{bits // 8}")
        # the same bytes as unsigned, plus 2**(bits-1) modulo 2**bits: raw + TZERO
        unsigned = raw.view(raw.dtype.base.str.replace("i", "u"))
        native = unsigned.astype(f"u{bits // 8}") ^ flip
        return native.view(col.stage) if col.stage == "i1" else native
    # scaled: physical = raw * TSCAL + TZERO, as double precision
    return raw.astype("f8") * float(header.get(f"TSCAL{n}", 1)) \
        + float(header.get(f"TZERO{n}", 0))


def read_fits(path, hdu=None):
    """(VacTable, staged structured array) of one FITS binary table."""
    label = source_label(path, hdu)
    hdul, table = _open_hdu(path, hdu)
    try:
        header = table.header
        described = describe_hdu(header, label)
        vt = VacTable("vac", tuple(c for c, _, _ in described))
        nrows = int(header["NAXIS2"])
        rows = np.zeros(nrows, dtype=vt.dtype)
        if nrows:
            raw = table.data.view(np.ndarray)  # stored values: no astropy scaling
            fields = raw.dtype.names
            for col, how, n in described:
                values = raw[fields[n - 1]]
                if how == "unsigned" and values.dtype.kind not in "iu":
                    raise InputError(f"{label}: column {col.fits_name}: unexpected storage "
                                     f"{values.dtype}")
                rows[col.name] = _convert(values, col, how, header, n).reshape(
                    (nrows,) + col.shape)
    finally:
        hdul.close()
    return vt, rows


def fingerprint(path, hdu):
    st = os.stat(path)
    return f"{os.path.abspath(path)}:{hdu}:{st.st_size}:{st.st_mtime_ns}"


@dataclass
class ConvertTask:
    """One file to convert into the stage file ``stage``; named by its file in logs."""
    path: str
    hdu: object
    index: int
    stage: str

    def __str__(self):
        return f"file {os.path.basename(source_label(self.path, self.hdu))}"


def convert_file(task):
    """Worker task: one FITS file -> a stage file; returns what rank 0 needs."""
    path, hdu = task.path, task.hdu
    vt, rows = read_fits(path, hdu)
    st = os.stat(path)
    staged = stage.StageFile(task.stage).write(
        {}, fingerprint(path, hdu), extra={"vac": rows},
        info={"columns": [c.to_json() for c in vt.columns]})
    return {"stage": staged.path, "rows": len(rows), "index": task.index,
            "columns": [c.to_json() for c in vt.columns],
            "source": {"file": os.path.abspath(path), "hdu": hdu, "rows": len(rows),
                       "bytes": st.st_size,
                       "mtime": datetime.fromtimestamp(st.st_mtime, timezone.utc)
                       .isoformat(timespec="seconds")}}


#: Task kinds of a VAC load (``mpi.serve`` on the worker ranks).
HANDLERS = {"vac": convert_file}


def merge_columns(results):
    """The VAC's columns from every file's: the same names and types in the same order
    (strings may differ in width: the widest wins); else :class:`InputError`."""
    first = results[0]
    cols = [VacColumn.from_json(c) for c in first["columns"]]
    for r in results[1:]:
        other = [VacColumn.from_json(c) for c in r["columns"]]
        label = source_label(r["source"]["file"], r["source"]["hdu"])
        ref = source_label(first["source"]["file"], first["source"]["hdu"])
        if [c.name for c in other] != [c.name for c in cols]:
            extra = sorted(set(c.fits_name for c in other)
                           ^ set(c.fits_name for c in cols)) or ["(order)"]
            raise InputError(f"{label}: columns differ from {ref}'s: {', '.join(extra)}")
        for k, (a, b) in enumerate(zip(cols, other)):
            if a == b:
                continue
            if a.pgtype.startswith("varchar") and b.pgtype.startswith("varchar") \
                    and a.shape == b.shape and a.pgtype.endswith("[]") == \
                    b.pgtype.endswith("[]"):
                wide = a if a.dtype.base.itemsize >= b.dtype.base.itemsize else b
                cols[k] = VacColumn(a.name, wide.pgtype, wide.stage, a.shape, a.fits_name,
                                    wide.tform)
                continue
            raise InputError(f"{label}: column {b.fits_name} is {b.pgtype} "
                             f"(TFORM {b.tform}{', shape ' + str(b.shape) if b.shape else ''}"
                             f"), {ref} has {a.pgtype} (TFORM {a.tform})")
    return cols


# --- keys ------------------------------------------------------------------------------

def _read_stage(path, fields=None, start=0, stop=None):
    import h5py
    with h5py.File(path, "r") as f:
        ds = f["aux/vac"]
        if fields:
            return ds.fields(list(fields))[start:stop]
        return ds[start:stop]


def _stage_rows(path):
    import h5py
    with h5py.File(path, "r") as f:
        return len(f["aux/vac"])


class Keys:
    """The key values of every file, to name where a duplicate or an unmatched key is."""

    def __init__(self, names, results):
        self.names = list(names)
        self.labels = [source_label(r["source"]["file"], r["source"]["hdu"])
                       for r in results]
        parts, files, rows = [], [], []
        for k, r in enumerate(results):
            keys = _read_stage(r["stage"], self.names)
            keys = np.asarray(keys)
            if keys.dtype.names is None:  # one field read as a plain array
                keys = keys.astype([(self.names[0], keys.dtype)])
            # widest dtype of each field over the files (strings may differ)
            parts.append(keys)
            files.append(np.full(len(keys), k))
            rows.append(np.arange(len(keys)))
        if parts:
            dtype = [(c, max((p.dtype[c] for p in parts), key=lambda d: d.itemsize))
                     for c in self.names]
            self.values = np.concatenate([p.astype(dtype) for p in parts])
        else:
            self.values = None
        self.files = np.concatenate(files)
        self.rows = np.concatenate(rows)

    def describe(self, value):
        return ", ".join(f"{c}={_plain(v)}" for c, v in zip(self.names, value))

    def duplicate(self):
        """(key value, [(file label, row)] of its first two rows), or None."""
        if self.values is None or len(self.values) < 2:
            return None
        keyed = self.values if len(self.names) > 1 else self.values[self.names[0]]
        order = np.argsort(keyed, kind="stable")
        ordered = keyed[order]
        same = np.flatnonzero(ordered[1:] == ordered[:-1])
        if not len(same):
            return None
        i, j = order[same[0]], order[same[0] + 1]
        value = tuple(self.values[i][c] for c in self.names)
        return value, [(self.labels[self.files[k]], int(self.rows[k])) for k in (i, j)]

    def where(self, value):
        """(file label, row) of the first row whose key is ``value`` (a dict)."""
        match = np.ones(len(self.files), dtype=bool)
        for c in self.names:
            col = self.values[c]
            v = value[c]
            if col.dtype.kind == "S" and isinstance(v, str):
                v = v.encode()
            match &= col == v
        hit = np.flatnonzero(match)
        if not len(hit):
            return None
        return self.labels[self.files[hit[0]]], int(self.rows[hit[0]])


def _plain(v):
    if isinstance(v, (bytes, np.bytes_)):
        return repr(bytes(v).decode(errors="replace"))
    if isinstance(v, np.generic):
        return repr(v.item())
    return repr(v)


# --- the database ----------------------------------------------------------------------

@dataclass
class Options:
    schema: str
    name: str
    sources: list            # [(path, hdu)]
    dsn: str = None
    key: list = None         # None: targetid if present
    fk: bool = True
    stage_dir: str = None
    lock_timeout: float = 300.0


def _names(table):
    """Names of a VAC table's constraints and indexes (by its table name)."""
    return {"pkey": f"{table}_pkey", "q3c": f"ix_{table}_q3c_ang2ipix",
            **{f"fk_{ref}": f"{table}_{ref}_fkey" for ref, _ in REFERENCES}}


def _tables(cur, schema_name):
    cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema_name,))
    return {r[0] for r in cur.fetchall()}


def _column_names(cur, schema_name, table_name):
    cur.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = "
                "%s AND table_name = %s", (schema_name, table_name))
    return {r[0] for r in cur.fetchall()}


def _description(cur, schema_name, table_name):
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


def _readers(cur, schema_name, table_name):
    """Roles other than the owner with SELECT on a table."""
    cur.execute("""SELECT DISTINCT g.grantee FROM information_schema.role_table_grants g
                   JOIN pg_namespace n ON n.nspname = g.table_schema
                   JOIN pg_class c ON c.relname = g.table_name AND c.relnamespace = n.oid
                   WHERE g.table_schema = %s AND g.table_name = %s
                     AND g.privilege_type = 'SELECT'
                     AND g.grantee <> pg_get_userbyid(c.relowner)""",
                (schema_name, table_name))
    return sorted(r[0] for r in cur.fetchall())


def _lock(conn, schema_name, name):
    """One load or drop of a VAC at a time (a session advisory lock), else RunRefused."""
    key = zlib.crc32(f"{schema_name}.{name}".encode()) & 0x7FFFFFFF
    with conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s, %s)", (LOCK_NAMESPACE, key))
        got = cur.fetchone()[0]
    conn.commit()
    if not got:
        raise RunRefused(f"another load or drop of VAC {name} in schema {schema_name} is "
                         f"running; not starting")


def _check_schema(conn, schema_name):
    if not schema_exists(conn, schema_name):
        conn.rollback()
        raise RunRefused(f"schema {schema_name} does not exist (create it: CREATE SCHEMA, "
                         f"or specprod-db init for a production)")
    conn.rollback()


def choose_key(columns, key):
    """The key columns (lower-case): ``key`` if given (each a scalar column), else
    ``targetid`` when present, else none."""
    by_name = {c.name: c for c in columns}
    if key is None:
        key = ["targetid"] if "targetid" in by_name else []
    key = [k.strip().lower() for k in key if k.strip()]
    for k in key:
        if k not in by_name:
            raise InputError(f"key column {k!r} is not a column of the VAC (columns: "
                             f"{', '.join(by_name)})")
        if not by_name[k].scalar:
            raise InputError(f"key column {k!r} is an array ({by_name[k].pgtype})")
    if len(set(key)) != len(key):
        raise InputError(f"key column listed twice: {', '.join(key)}")
    return key


def foreign_keys(cur, schema_name, key):
    """[(referenced table, columns)] the key columns reference, present in the schema."""
    present = _tables(cur, schema_name)
    chosen = []
    for ref, cols in REFERENCES:
        if not set(cols) <= set(key) or ref not in present:
            continue
        if any(set(cols) <= set(c) for _, c in chosen):
            continue
        if set(cols) <= _column_names(cur, schema_name, ref):
            chosen.append((ref, cols))
    return chosen


def _q3c_pair(columns):
    kinds = {c.name: c for c in columns}
    for ra, dec in Q3C_PAIRS:
        if all(n in kinds and kinds[n].scalar
               and kinds[n].pgtype in ("real", "double precision") for n in (ra, dec)):
            return ra, dec
    return None


def _copy_blocks(encoder, results):
    """PGCOPY blocks of every stage file's rows, read a slice at a time."""
    from .pgcopy import HEADER, TRAILER
    yield HEADER
    for r in results:
        n = _stage_rows(r["stage"])
        for start in range(0, n, READ_ROWS):
            rows = _read_stage(r["stage"], start=start, stop=start + READ_ROWS)
            yield from encoder.iter_bytes(rows, header=False, trailer=False)
    yield TRAILER


def build(conn, opts, table, key, results, keys):
    """Create and fill ``S.vac_NAME__new`` in one committed transaction; returns the
    description stored in its comment."""
    log = get_logger()
    schema_name = opts.schema
    final = table_name(opts.name)
    new = final + BUILDING
    names = _names(new)
    target = qualified(schema_name, new)
    with conn.cursor() as cur:
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(target))  # a crashed load's
        cur.execute(sql.SQL("CREATE TABLE {} ({})").format(target, sql.SQL(", ").join(
            sql.SQL("{} {} NOT NULL").format(sql.Identifier(c.name), sql.SQL(c.ddl_type))
            for c in table.columns)))
        statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
            target, sql.SQL(", ").join(map(sql.Identifier, table.names)))
        t = time.time()
        cur.copy_expert(statement.as_string(conn),
                        StreamReader(prefetch(_copy_blocks(Encoder(table), results))),
                        size=1 << 20)
        rows = sum(r["rows"] for r in results)
        log.info("vac %s: %d rows copied in %.1f s", opts.name, rows, time.time() - t)
        if key:
            cur.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY ({})").format(
                target, sql.Identifier(names["pkey"]),
                sql.SQL(", ").join(map(sql.Identifier, key))))
        pair = _q3c_pair(table.columns)
        if pair:
            ensure_q3c(conn)
            cur.execute(sql.SQL("CREATE INDEX {} ON {} (q3c_ang2ipix({}, {}))").format(
                sql.Identifier(names["q3c"]), target, *map(sql.Identifier, pair)))
        fks = foreign_keys(cur, schema_name, key) if key and opts.fk else []
        for ref, cols in fks:
            _check_references(cur, opts, target, ref, cols, keys)
            cur.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) "
                                "REFERENCES {} ({})").format(
                target, sql.Identifier(names[f"fk_{ref}"]),
                sql.SQL(", ").join(map(sql.Identifier, cols)), qualified(schema_name, ref),
                sql.SQL(", ").join(map(sql.Identifier, cols))))
        info = {MARKER: 1, "name": opts.name, "rows": rows, "key": key,
                "foreign_keys": {ref: list(cols) for ref, cols in fks},
                "q3c": list(pair) if pair else None,
                "sources": [r["source"] for r in results],
                "columns": {c.name: c.pgtype for c in table.columns},
                "loaded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "loaded_by": f"specprod-db {__version__}"}
        cur.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(
            target, sql.Literal(json.dumps(info, sort_keys=True))))
        cur.execute(sql.SQL("ANALYZE {}").format(target))
    conn.commit()
    return info


def _check_references(cur, opts, target, ref, cols, keys):
    """:class:`InputError` naming a key with no row in ``ref`` (and its file)."""
    match = sql.SQL(" AND ").join(sql.SQL("r.{0} = v.{0}").format(sql.Identifier(c))
                                  for c in cols)
    select = sql.SQL(", ").join(sql.SQL("v.{}").format(sql.Identifier(c)) for c in cols)
    missing = sql.SQL("FROM {} v WHERE NOT EXISTS (SELECT 1 FROM {} r WHERE {})").format(
        target, qualified(opts.schema, ref), match)
    cur.execute(sql.SQL("SELECT {} {} LIMIT 1").format(select, missing))
    row = cur.fetchone()
    if row is None:
        return
    cur.execute(sql.SQL("SELECT count(*) {}").format(missing))
    n = cur.fetchone()[0]
    value = dict(zip(cols, row))
    where = keys.where(value) if keys is not None else None
    shown = ", ".join(f"{c.upper()} {value[c]!r}" for c in cols)
    raise InputError(
        f"{where[0] + ': ' if where else ''}column{'s' if len(cols) > 1 else ''} "
        f"{', '.join(c.upper() for c in cols)}: {shown}"
        f"{f' (row {where[1]})' if where else ''} has no row in {opts.schema}.{ref} "
        f"({n} key{'s' if n != 1 else ''} of the VAC without one); nothing loaded. Load "
        f"with --no-fk to keep such rows without the foreign key")


def swap(conn, schema_name, name, lock_timeout=300.0):
    """Replace ``vac_NAME`` by ``vac_NAME__new`` in one short transaction (drop, rename,
    same readers); retried while readers hold the old table, at most ``lock_timeout``
    seconds, else the new table is dropped and :class:`RunRefused` raised."""
    final = table_name(name)
    new = final + BUILDING
    old_names, new_names = _names(final), _names(new)
    deadline = time.time() + lock_timeout
    while True:
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT set_config('lock_timeout', %s, true)",
                            (f"{int(SWAP_ATTEMPT * 1000)}ms",))
                present = _tables(cur, schema_name)
                readers = []
                if final in present:
                    if _description(cur, schema_name, final) is None:
                        raise RunRefused(f"{schema_name}.{final} exists and is not a VAC "
                                         f"loaded by specprod-db; not replacing it")
                    readers = _readers(cur, schema_name, final)
                    cur.execute(sql.SQL("DROP TABLE {}").format(
                        qualified(schema_name, final)))
                elif "photometry" in present:
                    readers = _readers(cur, schema_name, "photometry")
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
            conn.commit()
            return readers
        except psycopg2.errors.LockNotAvailable:
            conn.rollback()
            get_logger().info("vac %s: %s.%s is in use; the replacement waits", name,
                              schema_name, final)
            if time.time() >= deadline:
                drop_building(conn, schema_name, name)
                raise RunRefused(f"{schema_name}.{final} stayed in use for "
                                 f"{lock_timeout:.0f} s: not replaced (the new version is "
                                 f"discarded; rerun when its readers are done)") from None
            time.sleep(0.2)
        except psycopg2.errors.DependentObjectsStillExist as err:
            conn.rollback()
            drop_building(conn, schema_name, name)
            raise RunRefused(f"{schema_name}.{final} cannot be replaced: "
                             f"{' '.join(str(err).split())}; the old version is kept"
                             ) from None
        except BaseException:
            conn.rollback()
            raise


def drop_building(conn, schema_name, name):
    """Drop ``vac_NAME__new`` if a load left it."""
    conn.rollback()
    with conn.cursor() as cur:
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(
            qualified(schema_name, table_name(name) + BUILDING)))
    conn.commit()


def _stage_directory(conn, opts):
    from .runlock import database_identity
    identity = database_identity(conn)
    base = opts.stage_dir or stage.default_directory(identity, opts.schema)
    stage.check_directory(base)
    stage.claim(base, identity, opts.schema)
    # a subdirectory: the daily load's clean-ups never see a VAC's files
    directory = os.path.join(base, "vac", opts.name)
    stage.check_directory(directory)
    stage.cleanup_temporaries(directory)
    return directory


def load(dispatcher, opts):
    """Rank 0 of ``specprod-db vac load``: convert (over ``dispatcher``), check, build,
    swap.  Returns the VAC's description."""
    from . import db
    log = get_logger()
    check_name(opts.name)
    if not opts.sources:
        raise RunRefused("no FITS file given")
    conn = db.connect(opts.dsn, application_name="specprod-db vac")
    staged = []
    try:
        _check_schema(conn, opts.schema)
        _lock(conn, opts.schema, opts.name)
        with conn.cursor() as cur:
            info = _description(cur, opts.schema, table_name(opts.name))
            exists = table_name(opts.name) in _tables(cur, opts.schema)
        conn.rollback()
        if exists and info is None:
            raise RunRefused(f"{opts.schema}.{table_name(opts.name)} exists and is not a "
                             f"VAC loaded by specprod-db; not replacing it")
        directory = _stage_directory(conn, opts)
        tasks = [ConvertTask(path, hdu, k, os.path.join(directory, f"{k:05d}.h5"))
                 for k, (path, hdu) in enumerate(opts.sources)]
        staged = [t.stage for t in tasks]
        t = time.time()
        done = dispatcher.map("vac", tasks, size=lambda task: _size(task.path))
        failures = [r for _, r in done if isinstance(r, mpi.TaskFailure)]
        if failures:
            for f in failures[1:]:
                log.error("%s", f.message)
            message = failures[0].message + (
                f" (and {len(failures) - 1} other file(s) failed)"
                if len(failures) > 1 else "") + "; nothing loaded"
            if failures[0].internal:  # a bug (logged with its traceback): exit 4
                raise RuntimeError(message)
            raise InputError(message)
        results = sorted((r for _, r in done), key=lambda r: r["index"])
        log.info("vac %s: %d file(s) converted in %.1f s", opts.name, len(results),
                 time.time() - t)
        table = VacTable(table_name(opts.name), tuple(merge_columns(results)))
        key = choose_key(table.columns, opts.key)
        keys = Keys(key, results) if key else None
        dup = keys.duplicate() if keys is not None else None
        if dup:
            value, (first, second) = dup
            same = first[0] == second[0]
            raise InputError(
                f"{first[0]}: duplicate key {keys.describe(value)} (column"
                f"{'s' if len(key) > 1 else ''} {', '.join(k.upper() for k in key)}) in rows "
                f"{first[1]} and {second[1]}" + ("" if same else f" of {second[0]}")
                + "; nothing loaded")
        try:
            info = build(conn, opts, table, key, results, keys)
        except psycopg2.Error as err:
            conn.rollback()
            raise InputError(f"VAC {opts.name}: the database refused the rows: "
                             f"{' '.join(str(err).split())}; nothing loaded") from None
        swap(conn, opts.schema, opts.name, opts.lock_timeout)
        log.info("vac %s: %s.%s holds %d rows from %d file(s)", opts.name, opts.schema,
                 table_name(opts.name), info["rows"], len(results))
        return info
    finally:
        for path in staged:
            stage.StageFile(path).remove()
        conn.close()


def _size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def describe_all(conn, schema_name):
    """Every VAC of a schema: [dict] from the table comments, with the table's name."""
    out = []
    with conn.cursor() as cur:
        cur.execute("SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = "
                    "c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r' AND "
                    "c.relname LIKE 'vac\\_%%' ORDER BY 1", (schema_name,))
        for (relname,) in cur.fetchall():
            if relname.endswith(BUILDING):
                continue
            info = _description(cur, schema_name, relname)
            if info is not None:
                out.append(dict(info, table=f"{schema_name}.{relname}"))
    conn.rollback()
    return out


def drop(conn, schema_name, name, lock_timeout=300.0):
    """Drop the VAC ``name`` (only a table this module made); True when it existed."""
    check_name(name)
    _check_schema(conn, schema_name)
    _lock(conn, schema_name, name)
    final = table_name(name)
    deadline = time.time() + lock_timeout
    while True:
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT set_config('lock_timeout', %s, true)",
                            (f"{int(SWAP_ATTEMPT * 1000)}ms",))
                if final not in _tables(cur, schema_name):
                    conn.rollback()
                    drop_building(conn, schema_name, name)
                    return False
                if _description(cur, schema_name, final) is None:
                    raise RunRefused(f"{schema_name}.{final} is not a VAC loaded by "
                                     f"specprod-db; not dropping it")
                cur.execute(sql.SQL("DROP TABLE {}").format(qualified(schema_name, final)))
                cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(
                    qualified(schema_name, final + BUILDING)))
            conn.commit()
            return True
        except psycopg2.errors.LockNotAvailable:
            conn.rollback()
            if time.time() >= deadline:
                raise RunRefused(f"{schema_name}.{final} stayed in use for "
                                 f"{lock_timeout:.0f} s: not dropped") from None
            time.sleep(0.2)
        except psycopg2.errors.DependentObjectsStillExist as err:
            conn.rollback()
            raise RunRefused(f"{schema_name}.{final} cannot be dropped: "
                             f"{' '.join(str(err).split())}") from None
        except BaseException:
            conn.rollback()
            raise
