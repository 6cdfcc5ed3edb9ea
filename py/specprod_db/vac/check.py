"""The checks of a VAC load on rank 0, before anything is written.

Every file has the same columns (:func:`merge_columns`), the key columns exist and are
scalars (:func:`choose_key`), and no key appears twice (:class:`Keys`, which also names the
file and row of a key, for this message and for an unmatched foreign key).  Keys are
compared as PostgreSQL's primary key compares them: a float ``NaN`` equals ``NaN`` (numpy's
``NaN != NaN`` would let two through, for the database to refuse without naming them)
and ``-0.0`` equals ``0.0``.
"""
import numpy as np

from specprod_db.errors import InputError
from specprod_db.vac.columns import VacColumn
from specprod_db.vac.convert import read_stage, source_label


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


class Keys:
    """The key values of every file, to name where a duplicate or an unmatched key is."""

    def __init__(self, names, results):
        self.names = list(names)
        self.labels = [source_label(r["source"]["file"], r["source"]["hdu"])
                       for r in results]
        parts, files, rows = [], [], []
        for k, r in enumerate(results):
            keys = read_stage(r["stage"], self.names)
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
        """(key value, [(file label, row)] of its first two rows), or None.  Equal as
        the database's key compares (:func:`comparable`): NaN = NaN, -0.0 = 0.0."""
        if self.values is None or len(self.values) < 2:
            return None
        keyed = comparable(self.values)
        order = np.argsort(keyed, kind="stable")
        ordered = keyed[order]
        same = np.flatnonzero(ordered[1:] == ordered[:-1])
        if not len(same):
            return None
        # the first pair in file order: the two earliest rows of that key
        hit = keyed == ordered[same[0]]
        i, j = np.flatnonzero(hit)[:2]
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


def comparable(values):
    """One opaque, bytewise-comparable value per row of the structured array ``values``
    (its key columns), equal exactly where PostgreSQL's key equality holds: every NaN of
    a float column made one NaN, every -0.0 made 0.0."""
    packed = np.zeros(len(values), dtype=[(c, values.dtype[c]) for c in values.dtype.names])
    for c in values.dtype.names:
        col = np.array(values[c], copy=True)
        if col.dtype.kind == "f":
            col[np.isnan(col)] = np.nan
            col[col == 0] = 0.0
        packed[c] = col
    return np.ascontiguousarray(packed).view(f"V{packed.dtype.itemsize}").ravel()


def _plain(v):
    if isinstance(v, (bytes, np.bytes_)):
        return repr(bytes(v).decode(errors="replace"))
    if isinstance(v, np.generic):
        return repr(v.item())
    return repr(v)
