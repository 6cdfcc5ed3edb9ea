"""FITS binary-table columns -> PostgreSQL types: the column description of a VAC.

:func:`describe_hdu` reads a binary table's header and gives every column's
:class:`VacColumn` (PostgreSQL type, staged numpy dtype, shape) and how its raw values
are converted (the table in doc/vac.md); :class:`VacTable` is the VAC's columns in the
shape :class:`~specprod_db.db.pgcopy.Encoder` expects of a ``schema.Table``.
"""
import re
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from specprod_db.errors import InputError
from specprod_db.log import get_logger

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
    """A VAC's columns, in the shape :class:`~specprod_db.db.pgcopy.Encoder` expects of a
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
