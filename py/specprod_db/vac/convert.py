"""The worker task of a VAC load: one FITS file -> one HDF5 stage file.

:func:`convert_file` (one task per file, on the worker ranks over MPI) reads the binary
table's stored (big-endian, unscaled) rows, converts them with numpy (unsigned and
signed-byte conventions, scaling, logical, blank-padded strings) into the staged dtypes
of :mod:`~specprod_db.vac.columns`, writes them to a stage file
(:class:`~specprod_db.stage.StageFile`, array ``aux/vac``) and returns the file's column
description.  Rank 0 reads the stage files back with :func:`read_stage`.
"""
import os
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from specprod_db import stage
from specprod_db.errors import InputError
from specprod_db.vac.columns import VacTable, describe_hdu


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


def read_stage(path, fields=None, start=0, stop=None):
    """Rows ``start:stop`` of a stage file (only ``fields``, if given)."""
    import h5py
    with h5py.File(path, "r") as f:
        ds = f["aux/vac"]
        if fields:
            return ds.fields(list(fields))[start:stop]
        return ds[start:stop]


def stage_rows(path):
    """The number of rows of a stage file."""
    import h5py
    with h5py.File(path, "r") as f:
        return len(f["aux/vac"])
