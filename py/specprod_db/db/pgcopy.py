"""Structured numpy arrays -> PostgreSQL binary COPY (PGCOPY) bytes; no database needed.

The encoder is columnar: a chunk of rows is one numpy structured array laid out as PGCOPY
rows (each field: a 4-byte big-endian length, then the value at its widest); a mask keeps
the bytes actually used (strings are variable length), and ``raw[mask]`` is the
row-major concatenation of the rows: no Python object per row.

Field encodings (PostgreSQL ``*_send`` functions): integers and floats big-endian;
``boolean`` one byte; ``varchar`` the raw bytes without trailing NULs;
``timestamptz`` int64 microseconds since 2000-01-01 UTC; ``numeric(39)`` (our 128-bit
composite ids, staged as [high, low] uint64 words) as a fixed 10-digit base-10000
numeric (ndigits=10, weight=9, sign=+, dscale=0); the server strips leading zeros;
``numeric(20)`` (unsigned 64-bit integers of value-added catalogs, staged as uint64) the
same way with a zero high word.

Arrays (``TYPE[]``, for value-added catalogs: :mod:`specprod_db.vac`): a column whose
``dtype`` is a numpy subarray (``('f4', (2, 3))``) is sent as ``array_send`` does: ndim,
no-NULL flag, the element type's OID, (size, lower bound 1) per dimension, then every
element as length + value in C order; numeric elements are fixed width, so an array is
one fixed-width field of the row; ``varchar(n)[]`` elements are trimmed like strings.

Kept apart from where the bytes go (:mod:`specprod_db.load.tile_writer`), so it is
tested byte for byte against the server's own ``COPY ... TO STDOUT (FORMAT binary)``.
"""
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol, cast

import numpy as np
from numpy.lib.stride_tricks import as_strided

from specprod_db.schema import PG_TO_NUMPY

HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
TRAILER = (-1).to_bytes(2, "big", signed=True)

#: Rows encoded per block: small enough for the block to stay in cache (wide tables
#: encode 1.5x faster with 5000 than with 20000 rows, bench/), large enough to amortise
#: numpy's per-call overhead.
CHUNK_ROWS = 5000

_NUMERIC_DIGITS = 10  # ceil(39 / 4) base-10000 digits hold any value < 2**128

#: numeric types sent as 10 base-10000 digits: from [high, low] uint64 words, or uint64
_NUMERIC_TYPES = ("numeric(39)", "numeric(20)")

#: OID of each array element type (``array_recv`` checks it against the column's)
_ELEMENT_OID = {"boolean": 16, "smallint": 21, "integer": 23, "bigint": 20, "real": 700,
                "double precision": 701, "numeric": 1700, "varchar": 1043}

#: A block of a PGCOPY stream: bytes, or a 1-D uint8 array (:meth:`Encoder.iter_blocks`).
Block = bytes | np.ndarray


class ColumnLike(Protocol):
    """What the encoder reads of a column (:class:`specprod_db.schema.Column`, a VAC's
    :class:`specprod_db.vac.columns.VacColumn`)."""

    @property
    def name(self) -> str: ...

    @property
    def pgtype(self) -> str: ...

    @property
    def dtype(self) -> np.dtype: ...


class TableLike(Protocol):
    """What the encoder reads of a table (:class:`specprod_db.schema.Table`,
    :class:`specprod_db.vac.columns.VacTable`)."""

    @property
    def columns(self) -> Sequence[ColumnLike]: ...

    def column(self, name: str) -> ColumnLike: ...


def _field(dtype: np.dtype, name: str) -> tuple[np.dtype, int]:
    """(dtype, byte offset) of the field ``name`` of a structured dtype."""
    fields = dtype.fields
    assert fields is not None, f"{dtype} is not a structured dtype"
    return fields[name][0], fields[name][1]


def _numeric_digits(words: np.ndarray) -> np.ndarray:
    """(N, 2) uint64 [high, low] -> (N, 10) base-10000 digits, most significant first.

    Long division of the four 32-bit limbs by 10**8 (the remainder times 2**32 still
    fits in 64 bits), vectorised over rows; each base-10**8 group is two digits.
    """
    words = np.asarray(words, dtype=np.uint64).reshape(-1, 2)
    mask32 = np.uint64(0xFFFFFFFF)
    limbs = [words[:, 0] >> np.uint64(32), words[:, 0] & mask32,
             words[:, 1] >> np.uint64(32), words[:, 1] & mask32]
    base = np.uint64(10**8)
    digits = np.zeros((words.shape[0], _NUMERIC_DIGITS), dtype=np.uint16)
    for k in range(_NUMERIC_DIGITS // 2 - 1, -1, -1):
        rem = np.zeros(words.shape[0], dtype=np.uint64)
        for i in range(4):
            cur = (rem << np.uint64(32)) | limbs[i]
            limbs[i] = cur // base
            rem = cur - limbs[i] * base
        digits[:, 2 * k] = rem // np.uint64(10000)
        digits[:, 2 * k + 1] = rem % np.uint64(10000)
    if any(limb.any() for limb in limbs):
        raise OverflowError("composite id does not fit NUMERIC(39)")
    return digits


def _used_lengths(block: np.ndarray) -> np.ndarray:
    """(N, width) uint8 string slots -> bytes up to each one's last non-NUL byte (how
    numpy strips the padding of ``S`` values)."""
    if _str_len is not None:
        return _str_len(block.view(f"S{block.shape[1]}")[:, 0])
    nonzero = block != 0
    width = block.shape[1]
    return np.where(nonzero.any(axis=1), width - np.argmax(nonzero[:, ::-1], axis=1), 0)


_str_len = getattr(getattr(np, "strings", None), "str_len", None)  # numpy >= 2


def _words(values: np.ndarray, pgtype: str) -> np.ndarray:
    """The [high, low] words of a numeric column's values (uint64 values: high = 0)."""
    if pgtype == "numeric(20)":
        values = np.asarray(values, dtype=np.uint64).reshape(-1)
        return np.stack([np.zeros_like(values), values], axis=1)
    return values


def _array_format(col: ColumnLike) -> tuple[str, str, tuple[int, ...], np.dtype]:
    """(element kind, element pgtype, shape, field dtype) of an array column."""
    elem = col.pgtype[:-2]
    shape, base = col.dtype.shape, col.dtype.base
    if not shape:
        raise ValueError(f"array column {col.name} ({col.pgtype}) has no shape")
    count = int(np.prod(shape))
    if elem.startswith("varchar"):
        ekind, efmt = "string", np.dtype(f"S{base.itemsize}")
    elif elem in _NUMERIC_TYPES:
        ekind, efmt = "numeric", np.dtype((">i2", (4 + _NUMERIC_DIGITS,)))
    else:
        ekind, efmt = "fixed", PG_TO_NUMPY[elem].newbyteorder(">")
    fmt = np.dtype([("hdr", ">i4", (3 + 2 * len(shape),)),
                    ("els", [("len", ">i4"), ("v", efmt)], (count,))])
    return ekind, elem, shape, fmt


class Encoder:
    """Encode rows of one schema table (``schema.Table``) as PGCOPY bytes.

    A chunk of rows is laid out as a numpy structured array whose dtype *is* the PGCOPY
    row: a big-endian field count, then per column a big-endian int32 length and the
    value (big-endian numbers, fixed-width string bytes, numeric header + digits).  The
    constant parts come from a template row; each column is one strided cast.  Strings
    are variable length on the wire: a byte mask drops their unused tail.
    """

    def __init__(self, table: TableLike, columns: Sequence[str] | None = None) -> None:
        cols = table.columns if columns is None else [table.column(c) for c in columns]
        self.names = [c.name for c in cols]
        formats: list[Any] = [">i2"]
        names = ["_nfields"]
        self.kinds: list[str] = []
        self.pgtypes = [c.pgtype for c in cols]
        #: column index -> (element kind, element pgtype, shape)
        self.arrays: dict[int, tuple[str, str, tuple[int, ...]]] = {}
        for i, c in enumerate(cols):
            fmt: Any
            if c.pgtype.endswith("[]"):
                ekind, elem, shape, fmt = _array_format(c)
                kind = "array"
                self.arrays[i] = (ekind, elem, shape)
            elif c.pgtype.startswith("varchar"):
                kind, fmt = "string", c.dtype
            elif c.pgtype in _NUMERIC_TYPES:
                kind, fmt = "numeric", np.dtype((">i2", (4 + _NUMERIC_DIGITS,)))
            else:
                kind, fmt = "fixed", PG_TO_NUMPY[c.pgtype].newbyteorder(">")
            self.kinds.append(kind)
            names += [f"_len{i}", f"_val{i}"]
            formats += [">i4", fmt]
        self.row = np.dtype({"names": names, "formats": formats}, align=False)
        self.rowwidth = self.row.itemsize
        template = np.zeros(1, dtype=self.row)
        template["_nfields"] = len(cols)
        for i, kind in enumerate(self.kinds):
            template[f"_len{i}"] = self.row[f"_val{i}"].itemsize
            if kind == "numeric":
                template[f"_val{i}"][:, 0] = _NUMERIC_DIGITS
                template[f"_val{i}"][:, 1] = _NUMERIC_DIGITS - 1
            elif kind == "array":
                ekind, elem, shape = self.arrays[i]
                base = "varchar" if elem.startswith("varchar") else \
                    "numeric" if elem in _NUMERIC_TYPES else elem
                hdr = [len(shape), 0, _ELEMENT_OID[base]]
                for d in shape:
                    hdr += [d, 1]
                val = template[f"_val{i}"]
                val["hdr"] = hdr
                els = val["els"]
                els["len"] = self.row[f"_val{i}"]["els"].base["v"].itemsize
                if ekind == "numeric":
                    els["v"][..., 0] = _NUMERIC_DIGITS
                    els["v"][..., 1] = _NUMERIC_DIGITS - 1
        self.template = template
        # variable-length values: (column, [offsets of its strings], width, array header
        # bytes or None for a plain string)
        self.string_slots: list[tuple[int, list[int], int, int | None]] = []
        for i, kind in enumerate(self.kinds):
            off = _field(self.row, f"_val{i}")[1]
            if kind == "string":
                self.string_slots.append((i, [off], self.row[f"_val{i}"].itemsize, None))
            elif kind == "array" and self.arrays[i][0] == "string":
                fmt = self.row[f"_val{i}"]
                elements: np.dtype = fmt["els"]
                width = elements.base["v"].itemsize
                start = off + _field(fmt, "els")[1]
                offs = [start + j * elements.base.itemsize + 4
                        for j in range(elements.shape[0])]
                self.string_slots.append((i, offs, width, fmt["hdr"].itemsize))
        self.strings = [slot[0] for slot in self.string_slots]
        self._template_bytes = template.view(np.uint8)
        # bytes kept whatever the string lengths: all but the strings' fixed-width slots
        self._keep = np.ones(self.rowwidth, dtype=bool)
        for _, offs, width, _ in self.string_slots:
            for off in offs:
                self._keep[off: off + width] = False
        self._ramp = np.arange(max([s[2] for s in self.string_slots], default=0))
        self._plans: dict[np.dtype, list[tuple[str, str, int, int]]] = {}

    def _plan(self, dtype: np.dtype) -> list[tuple[str, str, int, int]]:
        """How to fill a block from rows of ``dtype``: a list of (kind, name, column
        index, count).  Runs of ``count`` consecutive fixed-width columns of one numpy
        type, adjacent in the rows as on the wire, are filled by one 2-D strided cast
        (one pass over the block instead of one per column: photometry has 73 ``real``
        columns in a row)."""
        cached = self._plans.get(dtype)
        if cached is not None:
            return cached
        plan: list[tuple[str, str, int, int]] = []
        for i, (name, kind) in enumerate(zip(self.names, self.kinds)):
            src, src_off = _field(dtype, name)
            if kind == "fixed" and not src.shape and plan and plan[-1][0] == "fixed":
                _, name0, i0, count = plan[-1]
                src0, off0 = _field(dtype, name0)
                if (src == src0 and self.pgtypes[i] == self.pgtypes[i0]
                        and src_off == off0 + count * src.itemsize):
                    plan[-1] = ("fixed", name0, i0, count + 1)
                    continue
            plan.append((kind, name, i, 1))
        self._plans[dtype] = plan
        return plan

    def _chunk(self, rows: np.ndarray) -> np.ndarray:
        """One block of rows -> its PGCOPY bytes, a 1-D uint8 array."""
        n = len(rows)
        buf = np.empty(n, dtype=self.row)
        raw = buf.view(np.uint8).reshape(n, self.rowwidth)
        # constant parts (field count, lengths, headers) as bytes: a structured copy
        # field by field is 40x slower
        raw[...] = self._template_bytes
        for kind, name, i, count in self._plan(rows.dtype):
            if kind == "numeric":
                buf[f"_val{i}"][:, 4:] = _numeric_digits(_words(rows[name], self.pgtypes[i]))
            elif kind == "array":
                ekind, elem, shape = self.arrays[i]
                values = rows[name].reshape(n, -1)
                els = buf[f"_val{i}"]["els"]
                if ekind == "numeric":
                    els["v"][..., 4:] = _numeric_digits(_words(values, elem)).reshape(
                        n, -1, _NUMERIC_DIGITS)
                else:
                    els["v"] = values
            elif count == 1:
                buf[f"_val{i}"] = rows[name]
            else:
                src, dst = rows[name], buf[f"_val{i}"]
                step = _field(self.row, f"_val{i + 1}")[1] - _field(self.row, f"_val{i}")[1]
                as_strided(dst, (n, count), (dst.strides[0], step))[...] = as_strided(
                    src, (n, count), (src.strides[0], src.itemsize))
        if not self.string_slots:
            return raw.reshape(-1)
        # strings are variable length: keep the bytes up to each one's last non-NUL
        mask = np.empty((n, self.rowwidth), dtype=bool)
        mask[...] = self._keep
        for i, offs, width, header in self.string_slots:
            total: Any = 0
            for j, off in enumerate(offs):
                used = _used_lengths(raw[:, off: off + width])
                if header is None:
                    buf[f"_len{i}"] = used
                else:
                    buf[f"_val{i}"]["els"]["len"][:, j] = used
                    total = total + 4 + used
                np.less(self._ramp[:width], used[:, None], out=mask[:, off: off + width])
            if header is not None:
                buf[f"_len{i}"] = header + total
        return raw[mask]

    def iter_blocks(self, rows: np.ndarray, header: bool = True, trailer: bool = True,
                    chunk_rows: int = CHUNK_ROWS,
                    first_rows: int | None = None) -> Iterator[Block]:
        """Yield the PGCOPY stream of ``rows`` as blocks: bytes-like objects (bytes or
        1-D uint8 arrays), for :class:`StreamReader` and ``bytes.join`` (no extra copy).

        ``first_rows``: the first block has that many rows and each next one twice as
        many, up to ``chunk_rows``: the server starts parsing sooner when the blocks are
        encoded while it reads (:func:`prefetch`).
        """
        if header:
            yield HEADER
        start, size = 0, min(first_rows or chunk_rows, chunk_rows)
        while start < len(rows):
            yield self._chunk(rows[start: start + size])
            start, size = start + size, min(2 * size, chunk_rows)
        if trailer:
            yield TRAILER

    def iter_bytes(self, rows: np.ndarray, header: bool = True, trailer: bool = True,
                   chunk_rows: int = CHUNK_ROWS,
                   first_rows: int | None = None) -> Iterator[bytes]:
        """Yield PGCOPY byte blocks for ``rows`` (a structured array)."""
        for block in self.iter_blocks(rows, header, trailer, chunk_rows, first_rows):
            yield block if isinstance(block, bytes) else block.tobytes()

    def encode(self, rows: np.ndarray) -> bytes:
        """The whole PGCOPY stream for ``rows`` as one bytes object."""
        # numpy's stubs do not declare ndarray a buffer; its blocks are 1-D uint8 arrays
        return b"".join(cast(Iterator[bytes], self.iter_blocks(rows)))


_END = object()


def prefetch(blocks: Iterable[Block], depth: int = 3) -> Iterator[Block]:
    """Produce ``blocks`` in a background thread, ``depth`` blocks ahead.

    Encoding (numpy, which releases the GIL) then overlaps with the server reading the
    previous blocks (psycopg2 releases the GIL while sending): without it the two run one
    after the other (doc/benchmarks.md).  An exception in the producer is raised in the
    consumer; a consumer that stops early stops the producer.
    """
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for block in blocks:
                while not stop.is_set():
                    try:
                        q.put(block, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as err:  # handed to the consumer
            q.put(err)
            return
        q.put(_END)

    thread = threading.Thread(target=produce, name="pgcopy-encoder", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


class StreamReader:
    """A file-like object over an iterator of byte blocks, for ``copy_expert``.

    Blocks are bytes or other bytes-like objects (:meth:`Encoder.iter_blocks`: 1-D
    uint8 arrays).  Keeps one block and a read position; each byte is copied once, into
    the ``bytes`` that ``read`` returns (a whole ``bytes`` block read at once is returned
    as it is).
    """

    def __init__(self, blocks: Iterable[Block]) -> None:
        # numpy's stubs do not declare ndarray a buffer; its blocks are 1-D uint8 arrays
        self._blocks = cast(Iterator[bytes], iter(blocks))
        self._block: bytes | memoryview = b""
        self._pos = 0

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (all that is left when ``size`` is None or negative)."""
        if size is None or size < 0:
            rest = b"".join([self._block[self._pos:], *self._blocks])
            self._block, self._pos = b"", 0
            return rest
        while self._pos >= len(self._block):
            try:
                block = next(self._blocks)
            except StopIteration:
                return b""
            self._block = block if isinstance(block, bytes) else memoryview(block).cast("B")
            self._pos = 0
        block, pos = self._block, self._pos
        if pos == 0 and size >= len(block) and isinstance(block, bytes):
            out = block
        else:
            out = bytes(block[pos: pos + size])
        self._pos += len(out)
        return out
