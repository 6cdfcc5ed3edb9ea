"""A reader of the ECSV tables DESI writes (ToO ledgers), without astropy.

``gather_targetphot`` reads the ToO ledgers named by a fiberassign header
(``.../mtl/main/ToO/ToO.ecsv``) with ``astropy.table.Table.read(format='ascii.ecsv')``.
Every tile of the main survey names one, so a loader process paid astropy's import
(~1.5 s) and its pure-Python reader (~0.5 s per 6,000-row ledger, ~17 MB of reference
cycles left for the garbage collector: workers' memory grew with every tile until a
full collection) for each.  This reader handles what astropy writes for such tables:

* ECSV 1.x: ``# %ECSV`` first line, a YAML header in ``# `` comment lines giving each
  column's ``name`` and ``datatype`` (and the ``delimiter``, a space by default), then
  one line of column names and the rows, fields quoted with ``"`` where needed;
* datatypes ``bool``, ``int8``..``int64``, ``uint8``..``uint64``, ``float16``..``float64``
  and ``string``; a column with a ``subtype`` (multidimensional or variable-length, JSON
  encoded) is refused when it is asked for;
* an empty field is a masked value; :func:`read` returns it filled as
  ``numpy.ma.filled(column, 0)`` would fill astropy's masked column (0, False or ``'0'``),
  which is what :mod:`specprod_db.extract.targetphot` did with astropy's table.

Values are converted as astropy converts them (numbers parsed in double precision, then
cast to the column's datatype), so the arrays equal astropy's (``tests/test_ecsv.py``).
"""
import csv

import numpy as np

_NUMERIC = {f"{k}{n}" for k in ("int", "uint") for n in (8, 16, 32, 64)} \
    | {"float16", "float32", "float64"}


class ECSVError(ValueError):
    """A file that is not an ECSV table this reader understands (the message says why)."""


_LOADER = None


def _loader():
    """Safe loading; tags of astropy's serialized mixins (irrelevant here) -> None.
    libyaml's parser when PyYAML has it (CSafeLoader: the same documents, several
    times faster than the pure-Python one), made once per process."""
    global _LOADER
    if _LOADER is None:
        import yaml

        class Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
            pass

        Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
        _LOADER = Loader
    return _LOADER


def _yaml_header(lines):
    import yaml

    Loader = _loader()
    try:
        return yaml.load("\n".join(lines), Loader=Loader) or {}
    except yaml.YAMLError as err:
        raise ECSVError(f"its YAML header cannot be parsed: {err}") from None


def read(path, columns=None):
    """``{name: numpy array}`` of the ECSV table ``path`` (only ``columns`` if given;
    names absent from the table are skipped).  Raises :class:`ECSVError` (or OSError)
    naming the problem; the caller names the file."""
    with open(path, newline="") as f:
        text = f.read()
    lines = text.splitlines()
    if not lines or not lines[0].startswith("# %ECSV"):
        raise ECSVError("not an ECSV file (its first line is not '# %ECSV ...')")
    n = 1
    while n < len(lines) and lines[n].startswith("#"):
        n += 1
    header = _yaml_header(line[2:] if line.startswith("# ") else line[1:]
                          for line in lines[1:n])
    spec = header.get("datatype") if isinstance(header, dict) else None
    if not isinstance(spec, list) or not all(isinstance(c, dict) and "name" in c
                                             for c in spec):
        raise ECSVError("its header has no 'datatype' list of columns")
    delimiter = header.get("delimiter", " ")
    if delimiter not in (" ", ","):
        raise ECSVError(f"delimiter {delimiter!r} (ECSV allows ' ' and ',')")
    body = csv.reader(lines[n:], delimiter=delimiter, quotechar='"', strict=True)
    try:
        names = next(body)
        rows = list(body)
    except StopIteration:
        raise ECSVError("no line of column names after the header") from None
    except csv.Error as err:
        raise ECSVError(f"a line cannot be split into fields: {err}") from None
    declared = [c["name"] for c in spec]
    if names != declared:
        raise ECSVError(f"its column names {names} differ from its header's {declared}")
    for i, row in enumerate(rows):
        if len(row) != len(names):
            raise ECSVError(f"data line {i + 1} has {len(row)} fields, not {len(names)}")
    wanted = [i for i, c in enumerate(names) if columns is None or c in columns]
    out = {}
    for i in wanted:
        values = [row[i] for row in rows]
        out[names[i]] = _column(names[i], spec[i], values)
    return out


def _column(name, spec, values):
    datatype = spec.get("datatype", "string")
    if spec.get("subtype"):
        raise ECSVError(f"column {name}: subtype {spec['subtype']} is not supported")
    text = np.array(values, dtype=str) if values else np.zeros(0, dtype="U1")
    masked = text == ""
    if datatype == "string":
        return np.where(masked, "0", text) if masked.any() else text
    if datatype == "bool":
        good = np.isin(text, ["True", "False", ""])
        if not good.all():
            raise ECSVError(f"column {name}: {text[~good][0]!r} is not True or False")
        return text == "True"
    if datatype not in _NUMERIC:
        raise ECSVError(f"column {name}: datatype {datatype!r} is not supported")
    text = np.where(masked, "0", text)
    try:
        if datatype.startswith("float"):
            return text.astype(np.float64).astype(datatype)
        return text.astype(datatype)
    except (ValueError, OverflowError) as err:
        raise ECSVError(f"column {name} ({datatype}): {err}") from None
