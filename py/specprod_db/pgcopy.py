"""Structured numpy arrays -> PostgreSQL binary COPY (PGCOPY) bytes; no database needed.

The encoder is columnar: every row of a chunk is laid out in a 2-D ``uint8`` matrix
(one slot per field: a 4-byte big-endian length, then the value at its widest), a mask
keeps the bytes actually used (strings are variable length), and ``matrix[mask]`` is the
row-major concatenation of the rows: no Python object per row.

Field encodings (PostgreSQL ``*_send`` functions): integers and floats big-endian;
``boolean`` one byte; ``varchar`` the raw bytes without trailing NULs;
``timestamptz`` int64 microseconds since 2000-01-01 UTC; ``numeric(39)`` (our 128-bit
composite ids, staged as [high, low] uint64 words) as a fixed 10-digit base-10000
numeric (ndigits=10, weight=9, sign=+, dscale=0); the server strips leading zeros.

Kept apart from where the bytes go (``writer``), so it is tested byte for byte against
the server's own ``COPY ... TO STDOUT (FORMAT binary)``.
"""
import numpy as np

from .schema import PG_TO_NUMPY

HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
TRAILER = (-1).to_bytes(2, "big", signed=True)

#: Rows encoded per matrix; bounds the encoder's memory to a few tens of MB.
CHUNK_ROWS = 20000

_NUMERIC_DIGITS = 10  # ceil(39 / 4) base-10000 digits hold any value < 2**128


def _numeric_digits(words):
    """(N, 2) uint64 [high, low] -> (N, 10) base-10000 digits, most significant first.

    Long division of the four 32-bit limbs by 10000, vectorised over rows.
    """
    words = np.asarray(words, dtype=np.uint64).reshape(-1, 2)
    mask32 = np.uint64(0xFFFFFFFF)
    limbs = [words[:, 0] >> np.uint64(32), words[:, 0] & mask32,
             words[:, 1] >> np.uint64(32), words[:, 1] & mask32]
    base = np.uint64(10000)
    digits = np.zeros((words.shape[0], _NUMERIC_DIGITS), dtype=np.uint16)
    for k in range(_NUMERIC_DIGITS - 1, -1, -1):
        rem = np.zeros(words.shape[0], dtype=np.uint64)
        for i in range(4):
            cur = (rem << np.uint64(32)) | limbs[i]
            limbs[i] = cur // base
            rem = cur % base
        digits[:, k] = rem.astype(np.uint16)
    if any(l.any() for l in limbs):
        raise OverflowError("composite id does not fit NUMERIC(39)")
    return digits


class _Field:
    """How one column is written into its slot of the row matrix."""

    def __init__(self, column):
        self.name = column.name
        self.pgtype = column.pgtype
        dt = column.dtype
        if self.pgtype.startswith("varchar"):
            self.width = dt.itemsize
            self.kind = "string"
        elif self.pgtype == "numeric(39)":
            self.width = 8 + 2 * _NUMERIC_DIGITS
            self.kind = "numeric"
        else:
            self.width = PG_TO_NUMPY[self.pgtype].itemsize
            self.kind = "fixed"
            self.be = PG_TO_NUMPY[self.pgtype].newbyteorder(">")

    def fill(self, matrix, mask, offset, values):
        n = matrix.shape[0]
        slot = matrix[:, offset + 4: offset + 4 + self.width]
        if self.kind == "fixed":
            data = np.ascontiguousarray(values, dtype=self.be)
            slot[:] = data.view(np.uint8).reshape(n, self.width)
            length = np.full(n, self.width, dtype=">i4")
        elif self.kind == "numeric":
            head = np.zeros((n, 4), dtype=">i2")
            head[:, 0] = _NUMERIC_DIGITS
            head[:, 1] = _NUMERIC_DIGITS - 1
            slot[:, :8] = head.view(np.uint8).reshape(n, 8)
            digits = _numeric_digits(values).astype(">i2")
            slot[:, 8:] = digits.view(np.uint8).reshape(n, 2 * _NUMERIC_DIGITS)
            length = np.full(n, self.width, dtype=">i4")
        else:
            raw = np.ascontiguousarray(values, dtype=f"S{self.width}")
            raw = raw.view(np.uint8).reshape(n, self.width)
            slot[:] = raw
            # Length up to the last non-NUL byte (numpy strips trailing NULs likewise).
            nonzero = raw != 0
            used = np.where(nonzero.any(axis=1),
                            self.width - np.argmax(nonzero[:, ::-1], axis=1), 0)
            mask[:, offset + 4: offset + 4 + self.width] = (
                np.arange(self.width) < used[:, None])
            length = used.astype(">i4")
        matrix[:, offset: offset + 4] = length.view(np.uint8).reshape(n, 4)


class Encoder:
    """Encode rows of one schema table (``schema.Table``) as PGCOPY bytes."""

    def __init__(self, table, columns=None):
        cols = table.columns if columns is None else [table.column(c) for c in columns]
        self.fields = [_Field(c) for c in cols]
        self.names = [f.name for f in self.fields]
        self.rowwidth = 2 + sum(4 + f.width for f in self.fields)

    def _chunk(self, rows):
        n = len(rows)
        matrix = np.zeros((n, self.rowwidth), dtype=np.uint8)
        mask = np.ones((n, self.rowwidth), dtype=bool)
        matrix[:, :2] = np.frombuffer(len(self.fields).to_bytes(2, "big"), np.uint8)
        offset = 2
        for f in self.fields:
            f.fill(matrix, mask, offset, rows[f.name])
            offset += 4 + f.width
        if all(f.kind != "string" for f in self.fields):
            return matrix.tobytes()
        return matrix[mask].tobytes()

    def iter_bytes(self, rows, header=True, trailer=True, chunk_rows=CHUNK_ROWS):
        """Yield PGCOPY byte blocks for ``rows`` (a structured array)."""
        if header:
            yield HEADER
        for start in range(0, len(rows), chunk_rows):
            yield self._chunk(rows[start: start + chunk_rows])
        if trailer:
            yield TRAILER

    def encode(self, rows):
        """The whole PGCOPY stream for ``rows`` as one bytes object."""
        return b"".join(self.iter_bytes(rows))


class StreamReader:
    """A file-like object over an iterator of byte blocks, for ``copy_expert``.

    Keeps one block and a read position, so reading it in small pieces copies each byte
    once.
    """

    def __init__(self, blocks):
        self._blocks = iter(blocks)
        self._block = b""
        self._pos = 0

    def read(self, size=-1):
        if size is None or size < 0:
            rest = self._block[self._pos:] + b"".join(self._blocks)
            self._block, self._pos = b"", 0
            return rest
        while self._pos >= len(self._block):
            try:
                self._block, self._pos = next(self._blocks), 0
            except StopIteration:
                return b""
        out = self._block[self._pos: self._pos + size]
        self._pos += len(out)
        return out
