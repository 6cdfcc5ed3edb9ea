"""Columns and rows of a FITS binary table, read without fitsio's HDU description.

fitsio describes a table HDU keyword by keyword when it is first used
(``get_hdu_info``): 6.9 ms for a 181-column DR9 tractor file, 2.0 of the 2.7 s of
brick extraction in a 4-tile morning (``doc/scale.md``). :class:`BinTable` reads the
headers (one ``os.pread`` for most files), finds the few keywords it needs in their
bytes, parses a column layout once for the files that share it, reads the wanted rows
(``os.pread``, or ``mmap`` for a large table) and copies only the wanted columns of
them: the same values and dtypes as
fitsio's ``read(columns=..., rows=..., upper=True)`` (``tests/test_fitstable.py``
compares the two on every column of the mock tractor files and on a table of every
type) for the column types of Legacy Surveys catalogues:

* ``L`` (bool: True where the byte is ``T``), ``B``, ``I``, ``J``, ``K``, ``E``, ``D``,
  with a repeat count (a 1-D array; a TDIM must equal the repeat);
* ``A`` (fitsio's unicode ``<Un``; bytes other than ASCII raise ``UnicodeDecodeError``);
* the unsigned-integer TZERO convention (``I`` + 32768, ``J`` + 2**31, ``K`` + 2**63:
  ``>u2``, ``>u4``, ``>u8``; ``B`` - 128: ``i1``).

Anything else the wanted columns use (TSCAL, other TZEROs, bit, complex, ASCII or
variable-length columns, a multi-dimensional TDIM) raises :class:`Unsupported`; the
caller then reads the file with fitsio. A damaged file raises ``ValueError`` or
``OSError`` naming the problem.
"""
import mmap
import os

import numpy as np

from specprod_db.errors import InputError

BLOCK = 2880
CARD = 80
#: :meth:`BinTable.read` reads at most this many rows one by one, more with the table.
FEW_ROWS = 64
#: ... and reads a whole table of at most this many bytes, maps a larger one.
MAP_BYTES = 1 << 20

#: TFORM code -> (bytes per element, big-endian numpy type)
_TYPES = {"L": (1, "u1"), "B": (1, "u1"), "I": (2, ">i2"), "J": (4, ">i4"),
          "K": (8, ">i8"), "E": (4, ">f4"), "D": (8, ">f8"), "A": (1, "S")}
#: sizes of the codes this reader does not convert (to lay out the other columns)
_OTHER = {"C": 8, "M": 16, "P": 8, "Q": 16}
#: unsigned-integer convention: (code, TZERO) -> output type, sign bit flip
_UNSIGNED = {("I", 32768): (">u2", np.uint16(1 << 15)),
             ("J", 2 ** 31): (">u4", np.uint32(1 << 31)),
             ("K", 2 ** 63): (">u8", np.uint64(1 << 63)),
             ("B", -128): ("i1", np.uint8(1 << 7))}


class Unsupported(Exception):
    """The table uses a feature this reader leaves to fitsio."""


def _value(text):
    """The value of a header card's value field (after ``= ``)."""
    text = text.strip()
    if text.startswith("'"):
        out, i = [], 1
        while True:
            j = text.find("'", i)
            if j < 0:
                raise ValueError(f"unterminated string value {text!r}")
            out.append(text[i:j])
            if text[j + 1:j + 2] == "'":  # '' is a quote
                out.append("'")
                i = j + 2
                continue
            return "".join(out).rstrip()
    text = text.split("/", 1)[0].strip()
    if text in ("T", "F"):
        return text == "T"
    try:
        return int(text)
    except ValueError:
        return float(text.replace("D", "E")) if text else None


#: Column keywords of a table header: all that :meth:`BinTable._layout_of` reads.
_COLUMN_KEYS = ("TTYPE", "TFORM", "TZERO", "TSCAL", "TDIM")
#: Their first four bytes as big-endian integers: how :meth:`_Cards.column_cards`
#: finds a header's column cards (a superset: a card "TTYPX..." is taken too, harmless
#: in a key).
_COLUMN_PREFIXES = tuple(int.from_bytes(k[:4].encode(), "big") for k in _COLUMN_KEYS)
#: A header's cards, whole.
_CARD_TEXT = np.dtype("S80")

class _Keywords(dict):
    """Value fields by keyword (the first card of each keyword), parsed when asked for."""

    def get(self, key, default=None):
        text = super().get(key)
        return default if text is None else _value(text)

    def __getitem__(self, key):
        text = super().get(key)
        if text is None:
            raise ValueError(f"the table's header has no {key} keyword")
        return _value(text)


class _Cards:
    """A header's keywords, found in its cards (``raw``: the bytes before END) when
    asked for: a tractor header has ~370 cards, of which a file whose column layout is
    known (:data:`_LAYOUTS`) needs five.  A keyword's value is that of its first card
    with a value indicator (``= `` in bytes 9-10); :meth:`with_columns` parses them all
    (to lay out the columns)."""

    def __init__(self, raw):
        self._raw = raw

    def _find(self, key):
        """The offset of the first card ``key`` with a value, or -1."""
        if len(key) > 8:
            return -1
        raw, pattern = self._raw, f"{key:<8}= ".encode()
        i = raw.find(pattern)
        while i >= 0 and i % CARD:
            i = raw.find(pattern, i + 1)
        return i

    def _field(self, key):
        """The value field (bytes 11-80) of the first card ``key`` with a value, or None."""
        i = self._find(key)
        return None if i < 0 else self._raw[i + 10:i + CARD].decode("ascii")

    def get(self, key, default=None):
        text = self._field(key)
        return default if text is None else _value(text)

    def __getitem__(self, key):
        text = self._field(key)
        if text is None:
            raise ValueError(f"the table's header has no {key} keyword")
        return _value(text)

    def raw(self, key):
        """The value field of ``key`` as written (None if none): part of a layout's key."""
        return self._field(key)

    def column_cards(self):
        """The header's column cards (:data:`_COLUMN_KEYS`) in file order, as bytes:
        two headers with the same column cards have the same layout."""
        raw = self._raw
        keys = np.frombuffer(raw, dtype=">u4")[::CARD // 4]  # each card's first 4 bytes
        a, b, c, d, e = _COLUMN_PREFIXES
        mask = (keys == a) | (keys == b) | (keys == c) | (keys == d) | (keys == e)
        return np.frombuffer(raw, dtype=_CARD_TEXT)[mask].tobytes()

    def without(self, key):
        """The header's cards but the first card ``key`` with a value, as bytes."""
        i, raw = self._find(key), self._raw
        return raw if i < 0 else raw[:i] + raw[i + CARD:]

    def with_columns(self):
        """Every keyword (the first card of each), for :meth:`BinTable._layout_of`."""
        text = self._raw.decode("ascii")
        cards = [text[k:k + CARD] for k in range(0, len(text), CARD)]
        # the first card of each keyword: later ones set first, then overwritten
        return _Keywords({card[:8].rstrip(): card[10:] for card in reversed(cards)
                          if card[8:10] == "= "})


def _end(buf, start):
    """The position in ``buf`` of the first END card of the header at ``start``, or
    None."""
    i = buf.find(b"END", start)
    while i >= 0:
        if (i - start) % CARD == 0 and buf[i:i + 8].rstrip() == b"END":
            return i
        i = buf.find(b"END", i + 1)
    return None


#: Bytes of a file read at once for its headers (a mock tractor file's two take 12
#: blocks; a DR9 file's table header alone ~16, 181 columns of three cards, after a
#: primary header of a few); a longer header is read again, in a larger piece.
HEAD_READ = 32 * BLOCK


class _File:
    """An open file (descriptor ``fd``) read in pieces of at least :data:`HEAD_READ`
    bytes: ``buf``, from offset ``at``; ``eof`` when it reaches the end of the file."""

    def __init__(self, fd):
        self.fd, self.at, self.buf, self.eof = fd, 0, b"", False

    def read(self, offset, size=HEAD_READ):
        """``(buf, i)``: the file from ``offset`` is ``buf[i:]``, read anew."""
        self.at, self.buf = offset, os.pread(self.fd, size, offset)
        self.eof = len(self.buf) < size
        return self.buf, 0

    def span(self, offset):
        """``(buf, i)``: the file from ``offset`` is ``buf[i:]`` (at least a byte of it,
        or the end of the file), from what was read if it holds ``offset``."""
        i = offset - self.at
        if 0 <= i < len(self.buf):
            return self.buf, i
        return self.read(offset)


def _header(file, offset, path):
    """The keywords of the header at ``offset`` of the :class:`_File` (:class:`_Cards`),
    and the bytes it took (whole blocks).  A header must be ASCII up to the end of its
    END card's block (``UnicodeDecodeError`` otherwise)."""
    buf, i = file.span(offset)
    while True:
        n = len(buf) - i
        if n <= 0:
            raise ValueError(f"{path}: no binary table HDU")
        end = _end(buf, i)
        full = n - n % BLOCK  # the whole blocks of buf[i:]
        if end is not None and end - i < full:
            size = ((end - i) // BLOCK + 1) * BLOCK
            head = buf[i:i + size]
            if not head.isascii():
                head.decode("ascii")  # raises, naming the byte
            return _Cards(head[:end - i]), size
        if file.eof:
            if not buf[i:i + full].isascii():
                buf[i:i + full].decode("ascii")
            raise ValueError(f"{path}: file ends inside a header")
        buf, i = file.read(offset, max(4 * n, HEAD_READ))


def _data_size(h):
    naxis = h.get("NAXIS", 0)
    n = 0
    if naxis:
        n = abs(h.get("BITPIX", 8)) // 8 * h.get("GCOUNT", 1)
        for i in range(1, naxis + 1):
            n *= h.get(f"NAXIS{i}", 0)
        n += h.get("PCOUNT", 0)
    return -(-n // BLOCK) * BLOCK


#: The column layouts already parsed, most recently used first, with their keys
#: (:func:`_layout_key`): the tractor files of a run (hundreds of bricks) share one
#: layout, parsed once (the ~900 keyword values of a 181-column header took 2 of the
#: 2.4 ms a file took).
_LAYOUTS: list = []
_MAX_LAYOUTS = 64
#: The same layouts by their whole headers but NAXIS2 (:meth:`_Cards.without`), the
#: most recent first: a header the same as one seen before but for its number of rows
#: (the tractor files of a run) has its layout without its column cards picked out.
#: Both lists are compared key by key (``memcmp`` of ~30 kB), not hashed.
_HEADERS: list = []
_MAX_HEADERS = 8


def _layout_key(h, tfields):
    """What the column layout depends on: TFIELDS, NAXIS1 and the column cards (two
    headers with the same :meth:`_Cards.column_cards` have the same layout)."""
    return tfields, h.raw("NAXIS1"), h.column_cards()


def _known(known, key):
    """The layout of ``key`` in list ``known`` (moved to its front), or None."""
    for k, (seen, layout) in enumerate(known):
        if seen == key:
            if k:
                known.insert(0, known.pop(k))
            return layout
    return None


def _remember(known, key, layout, size):
    """``key``'s layout at the front of list ``known``, kept to ``size`` entries."""
    del known[size - 1:]
    known.insert(0, (key, layout))


class BinTable:
    """The first binary table of FITS file ``path`` (the first non-image HDU, as the
    tractor reader takes it with fitsio)."""

    def __init__(self, path, _hdu=None):
        self.path = path
        if _hdu is not None:  # from :func:`tables`: (header, offset of its data, file size)
            self._setup(*_hdu)
            return
        fd = os.open(path, os.O_RDONLY)
        try:
            file_size = os.fstat(fd).st_size
            file = _File(fd)
            if file.span(0)[0][:10] != b"SIMPLE  = ":
                raise ValueError(f"{path}: not a FITS file (it does not start with SIMPLE)")
            offset = 0
            while True:
                h, size = _header(file, offset, path)
                offset += size
                xt = h.get("XTENSION")
                if xt == "BINTABLE":
                    break
                if xt not in (None, "IMAGE"):
                    raise Unsupported(f"{path}: first table is a {xt} HDU")
                offset += _data_size(h)
        finally:
            os.close(fd)
        self._setup(h, offset, file_size)

    def _setup(self, h, offset, file_size):
        path = self.path
        self.nrows, self.rowbytes = int(h["NAXIS2"]), int(h["NAXIS1"])
        self.offset = offset
        need = offset + self.nrows * self.rowbytes
        if file_size < need:
            raise ValueError(f"{path}: file truncated ({file_size} bytes, its "
                             f"table needs {need})")
        tfields = int(h["TFIELDS"])
        header = h.without("NAXIS2")  # TFIELDS, NAXIS1 and the column cards with it
        layout = _known(_HEADERS, header)
        if layout is None:
            key = _layout_key(h, tfields)
            layout = _known(_LAYOUTS, key)
            if layout is None:
                layout = self._layout_of(h.with_columns(), tfields, path)
                _remember(_LAYOUTS, key, layout, _MAX_LAYOUTS)
            _remember(_HEADERS, header, layout, _MAX_HEADERS)
        self._columns, colnames, self._reads, self.upper_names = layout
        self.colnames = list(colnames)

    def _layout_of(self, h, tfields, path):
        """``({NAME: column layout}, [names])`` of the header's ``tfields`` columns."""
        columns, at = {}, 0
        colnames = []
        for i in range(1, tfields + 1):
            name = str(h.get(f"TTYPE{i}", f"COL{i}")).strip()
            form = str(h[f"TFORM{i}"]).strip()
            digits = len(form) - len(form.lstrip("0123456789"))
            repeat, code = int(form[:digits] or 1), form[digits:digits + 1]
            if code in _TYPES:
                width = _TYPES[code][0] * repeat
            elif code == "X":
                width = (repeat + 7) // 8
            elif code in _OTHER:
                width = _OTHER[code] * repeat
            else:
                raise ValueError(f"{path}: column {name} has an unknown TFORM {form!r}")
            columns[name.upper()] = (name, code, repeat, at, h.get(f"TZERO{i}"),
                                     h.get(f"TSCAL{i}"), h.get(f"TDIM{i}"))
            colnames.append(name)
            at += width
        if at != self.rowbytes:
            raise ValueError(f"{path}: columns take {at} bytes a row, NAXIS1 says "
                             f"{self.rowbytes}")
        # the third: the plans of reads of this layout (``_plan``), by columns asked;
        # the fourth: the file's column names by their upper case (the last of a case)
        return columns, tuple(colnames), {}, {c.upper(): c for c in colnames}

    def _layout(self, column):
        try:
            name, code, repeat, at, tzero, tscal, tdim = self._columns[column.upper()]
        except KeyError:
            raise ValueError(f"{self.path}: no column {column}") from None
        if code not in _TYPES or repeat == 0:
            raise Unsupported(f"column {name}: TFORM {repeat}{code}")
        if tscal not in (None, 1, 1.0):
            raise Unsupported(f"column {name}: TSCAL {tscal}")
        if tdim is not None and tdim.replace(" ", "") != f"({repeat})":
            raise Unsupported(f"column {name}: TDIM {tdim}")
        flip = None
        if tzero not in (None, 0):
            if (code, tzero) not in _UNSIGNED or repeat != 1:
                raise Unsupported(f"column {name}: TZERO {tzero}")
            out, flip = _UNSIGNED[(code, tzero)]
        elif code == "A":
            out = f"<U{repeat}"
        elif code == "L":
            out = "|b1"
        else:
            out = _TYPES[code][1]
        raw = f"S{repeat}" if code == "A" else _TYPES[code][1]
        shape = (repeat,) if repeat > 1 and code != "A" else ()
        return name.upper(), at, np.dtype((raw, shape)), np.dtype((out, shape)), code, flip

    def _plan(self, columns):
        """How to read ``columns``: their layouts in the file's order, the output dtype,
        the dtype of the file's rows they are read through, the byte runs copied as
        they are (``(offset in a row, offset in an output row, length)``: adjacent
        columns whose output type is the file's, merged) and the other columns'
        ``(name, code, flip)``; once per layout and set of columns (a brick's reads are
        the same for every tractor file)."""
        key = tuple(columns)
        plan = self._reads.get(key)
        if plan is None:
            # fitsio returns the columns in the file's order (their byte offsets' order),
            # whatever the request's
            lay = sorted((self._layout(c) for c in columns), key=lambda x: x[1])
            out_dtype = np.dtype([(x[0], x[3]) for x in lay])
            runs, others = [], []
            for name, at, raw, out, code, flip in lay:
                if raw != out or flip is not None:  # strings, logical, unsigned
                    others.append((name, code, flip))
                    continue
                dest = out_dtype.fields[name][1]
                last = runs[-1] if runs else None
                if last and last[0] + last[2] == at and last[1] + last[2] == dest:
                    runs[-1] = (last[0], last[1], last[2] + raw.itemsize)
                else:
                    runs.append((at, dest, raw.itemsize))
            plan = (lay, out_dtype,
                    np.dtype({"names": [x[0] for x in lay],
                              "formats": [x[2] for x in lay],
                              "offsets": [x[1] for x in lay],
                              "itemsize": self.rowbytes}),
                    runs, others)
            self._reads[key] = plan
        return plan

    def read(self, columns, rows=None, upper=True):
        """The ``columns`` (any case) of ``rows`` (indices, or all), as fitsio's
        ``read(columns=columns, rows=rows, upper=True)`` returns them (in the file's
        column order); with ``upper=False`` named as in the file, as fitsio's
        ``read(columns=columns, rows=rows)``.

        A few rows (at most :data:`FEW_ROWS`) are read row by row (``os.pread`` of each
        row's NAXIS1 bytes), more with the whole table (read if at most
        :data:`MAP_BYTES`, else mapped); the rows are viewed through the file's record
        type, the columns whose output type is the file's copied as runs of bytes
        (``_plan``), the others converted (``_convert``)."""
        lay, out_dtype, view_dtype, runs, others = self._plan(columns)
        if not upper:
            names = [self._columns[x[0]][0] for x in lay]
            if len(set(names)) < len(names):
                raise Unsupported(f"{self.path}: column names differing only in case")
        nrows, rowbytes = self.nrows, self.rowbytes
        if rows is not None:
            idx = np.asarray(rows, dtype=np.int64).reshape(-1)
            if idx.size and (idx.min() < -nrows or idx.max() >= nrows):
                raise IndexError(f"{self.path}: row index out of range for {nrows} rows")
        n = nrows if rows is None else len(idx)
        out = np.empty(n, dtype=out_dtype)
        if n == 0:
            return out if upper else _renamed(out, names)
        few = rows is not None and n <= FEW_ROWS
        size = nrows * rowbytes
        mapped = None
        fd = os.open(self.path, os.O_RDONLY)
        try:
            if few:
                start = self.offset
                data = b"".join([os.pread(fd, rowbytes, start + r * rowbytes)
                                 for r in (idx % nrows).tolist()])
            elif size <= MAP_BYTES:
                data = os.pread(fd, size, self.offset)
            else:  # mapped, not copied: the pages are read as the columns are taken
                mapped = data = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        try:
            if mapped is not None:
                if len(mapped) < self.offset + size:
                    raise ValueError(f"{self.path}: file truncated while read")
                view = np.frombuffer(mapped, dtype=view_dtype, count=nrows,
                                     offset=self.offset)
            else:
                if len(data) != (n if few else nrows) * rowbytes:
                    raise ValueError(f"{self.path}: file truncated while read")
                view = np.frombuffer(data, dtype=view_dtype)
            if rows is not None and not few:
                view = view[idx]
            self._convert(view, out, runs, others)
        finally:
            view = None
            if mapped is not None:
                try:
                    mapped.close()
                except BufferError:  # an error's traceback holds a view: unmapped later
                    pass
        return out if upper else _renamed(out, names)

    @staticmethod
    def _convert(view, out, runs, others):
        """The file's rows ``view`` into ``out``: the byte runs copied, then the other
        columns converted (``A`` to unicode as numpy casts, ``L`` and unsigned from
        their bytes)."""
        if runs:
            src = view.view(np.uint8).reshape(len(view), -1)
            dst = out.view(np.uint8).reshape(len(out), -1)
            for at, dest, size in runs:
                dst[:, dest:dest + size] = src[:, at:at + size]
        for name, code, flip in others:
            col = view[name]
            if code == "L":
                out[name] = col == ord("T")
            elif flip is not None:
                value = col.view(col.dtype.str.replace("i", "u")) ^ flip
                out[name] = value.view(np.int8) if code == "B" else value
            else:
                out[name] = col


def _renamed(out, names):
    """``out`` with its fields named ``names``, through a new dtype (the planned one is
    shared by later reads)."""
    return out.view(np.dtype([(nm,) + tuple(d[1:]) for nm, d in zip(names, out.dtype.descr)]))


def tables(path):
    """The HDUs of FITS file ``path`` by upper-case EXTNAME, reading only the headers:
    a binary table as a :class:`BinTable`, an image as None.  fitsio describes every HDU
    of a file, column by column, the first time one is looked up by name (6-10 ms for a
    redrock file).  Raises what :class:`BinTable` raises; :class:`Unsupported` for an
    HDU of another type, a name given by HDUNAME only, or two HDUs of one name (fitsio
    then decides)."""
    out: dict = {}
    fd = os.open(path, os.O_RDONLY)
    try:
        size_of_file = os.fstat(fd).st_size
        file = _File(fd)
        if file.span(0)[0][:10] != b"SIMPLE  = ":
            raise ValueError(f"{path}: not a FITS file (it does not start with SIMPLE)")
        offset = 0
        while offset < size_of_file:
            h, size = _header(file, offset, path)
            offset += size
            xt = h.get("XTENSION")
            if xt not in (None, "IMAGE", "BINTABLE"):
                raise Unsupported(f"{path}: a {xt} HDU")
            name = str(h.get("EXTNAME", "") or "").strip().upper()
            if not name and str(h.get("HDUNAME", "") or "").strip():
                raise Unsupported(f"{path}: an HDU named by HDUNAME")
            if name in out:
                raise Unsupported(f"{path}: two HDUs named {name}")
            if name:
                out[name] = (BinTable(path, _hdu=(h, offset, size_of_file))
                             if xt == "BINTABLE" else None)
            offset += _data_size(h)
    finally:
        os.close(fd)
    return out


class Tables:
    """What the extractors use of a ``fitsio.FITS`` (``name in fx``, ``fx[name]``'s
    ``get_colnames()`` and ``read(columns=...)``), for the binary tables of
    :func:`tables`: the same arrays as fitsio (column names as in the file)."""

    def __init__(self, path):
        self.path = path
        self._hdus = tables(path)

    def __contains__(self, name):
        return str(name).upper() in self._hdus

    def __getitem__(self, name):
        hdu = self._hdus[str(name).upper()]
        if hdu is None:
            raise Unsupported(f"{self.path}: HDU {name} is an image")
        return _TableHDU(hdu)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _TableHDU:
    def __init__(self, table):
        self._table = table

    def get_colnames(self):
        return list(self._table.colnames)

    def read(self, columns):
        return self._table.read(columns, upper=False)


def read_tables(path, read, *args):
    """``read(fx, *args)`` of FITS file ``path`` opened as :class:`Tables` (headers
    parsed once, no fitsio description of every HDU); on any error there but
    :class:`~specprod_db.errors.InputError` (what ``read`` finds wrong with the file's
    contents), the file is read again with ``fitsio.FITS``, whose result, or error, it
    is."""
    try:
        return read(Tables(path), *args)
    except InputError:
        raise
    except Exception:  # noqa: BLE001 - fitsio reads it, or says why not
        pass
    import fitsio
    with fitsio.FITS(path) as fx:
        return read(fx, *args)
