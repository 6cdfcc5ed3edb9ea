"""The schema reference: ``schema.TABLES`` joined with the meanings in doc/_data/columns.txt.

Names, types, keys, indexes and foreign keys come from :mod:`specprod_db.schema` (the only
place a column is declared); what a table or column *means* comes from
``doc/_data/columns.txt`` (the only place that is written).  Nothing here lists a column.

* :func:`read_meanings` parses the meanings file;
* :func:`problems` lists columns without a meaning and meanings of columns that do not
  exist (``tests/test_doc_schema.py`` asserts there are none; the Sphinx build warns, so
  ``make docs`` fails too);
* :func:`reference_rst` renders reStructuredText, which the ``schema-reference``
  directive (:func:`setup`, used by ``doc/schema.rst``) parses into the page.

Imports Sphinx only inside :func:`setup`, so the tests need no Sphinx.
"""
import itertools
import re
from pathlib import Path

from specprod_db import schema

MEANINGS = Path(__file__).resolve().parent.parent / "_data" / "columns.txt"
COMMON = "*"

_GROUP = re.compile(r"\{([^{}]*,[^{}]*)\}")
_PLACEHOLDER = re.compile(r"\{(\d)(U?)\}")


def _expand(key, text):
    """``[(name, text)]`` for a key with ``{a,b}`` groups (every combination)."""
    groups = [g.split(",") for g in _GROUP.findall(key)]
    if not groups:
        return [(key, text)]
    template = _GROUP.sub("{}", key)
    out = []
    for words in itertools.product(*groups):
        def fill(m, words=words):
            word = words[int(m.group(1)) - 1]
            return word.upper() if m.group(2) else word
        out.append((template.format(*words), _PLACEHOLDER.sub(fill, text)))
    return out


def read_meanings(path=MEANINGS):
    """``{section: {name: text}}`` from the meanings file; ``""`` is a table's own meaning.

    Raises ValueError (with the line number) for a malformed line or a name given twice
    in one section.
    """
    entries, current = [], None  # [section, key, text, where]
    sections = {}
    for number, raw in enumerate(Path(path).read_text().splitlines(), 1):
        where = f"{path}:{number}"
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if raw[0].isspace():
            if not entries or entries[-1][0] != current:
                raise ValueError(f"{where}: continuation line without an entry above")
            entries[-1][2] += " " + raw.strip()
            continue
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1].strip()
            if current in sections:
                raise ValueError(f"{where}: section [{current}] given twice")
            sections[current] = {}
            continue
        if current is None:
            raise ValueError(f"{where}: entry before the first [section]")
        key, sep, text = line.partition("=")
        if not sep or not text.strip():
            raise ValueError(f"{where}: expected 'name = text' or '= text', got {line!r}")
        entries.append([current, key.strip(), text.strip(), where])
    for section, key, text, where in entries:
        for name, meaning in _expand(key, text):
            if name in sections[section]:
                raise ValueError(f"{where}: {name or 'the table meaning'} given twice")
            sections[section][name] = meaning
    return sections


def resolve(tables=schema.TABLES, path=MEANINGS):
    """``({table: text}, {(table, column): text})``: each table's and column's meaning,
    a table's own entry winning over the shared ``[*]`` one; absent ones are left out."""
    sections = read_meanings(path)
    common = sections.get(COMMON, {})
    table_text, column_text = {}, {}
    for t in tables:
        own = sections.get(t.name, {})
        if own.get(""):
            table_text[t.name] = own[""]
        for c in t.columns:
            text = own.get(c.name, common.get(c.name))
            if text:
                column_text[t.name, c.name] = text
    return table_text, column_text


def problems(tables=schema.TABLES, path=MEANINGS):
    """Every mismatch between the schema and the meanings file, one message each."""
    sections = read_meanings(path)
    names = {t.name: set(t.names) for t in tables}
    out = []
    for section, entries in sections.items():
        if section == COMMON:
            if "" in entries:
                out.append("[*] cannot have a table meaning ('= ...')")
            for col in entries:
                if col and not any(col in cols and col not in sections.get(t, {})
                                   for t, cols in names.items()):
                    out.append(f"[*] {col}: no table uses this meaning (no such column, "
                               f"or every table with it has its own)")
            continue
        if section not in names:
            out.append(f"[{section}]: no such table in schema.TABLES")
            continue
        for col in entries:
            if col and col not in names[section]:
                out.append(f"[{section}] {col}: no such column")
    table_text, column_text = resolve(tables, path)
    for t in tables:
        if t.name not in table_text:
            out.append(f"{t.name}: no table meaning ('= ...' under [{t.name}])")
        for c in t.columns:
            if (t.name, c.name) not in column_text:
                out.append(f"{t.name}.{c.name}: no meaning (under [{t.name}] or [*])")
    return out


def _literal(names):
    return ", ".join(f"``{n}``" for n in names)


def _ref(table_name, column=None):
    label = f":ref:`{table_name} <table-{table_name}>`"
    return f"{label}\\ ``.{column}``" if column else label


def _first_sentence(text):
    m = re.match(r"(.+?\.)(\s|$)", text)
    return m.group(1) if m else text


def _facts(t):
    """The field list under a table's title: keys, indexes, foreign keys."""
    facts = [("Primary key", f"{_literal(t.primary_key)} (``{t.name}_pkey``)")]
    unique = []
    if t.unique:
        unique.append(f"``ix_{t.name}_unique`` ({_literal(t.unique)})")
    unique += [f"``{t.name}_{c}_key`` (``{c}``)" for c in t.unique_columns]
    if unique:
        facts.append(("Unique", "; ".join(unique)))
    indexes = [f"``ix_{t.name}_{c}``" for c in t.indexes]
    if t.q3c:
        indexes.append(f"``ix_{t.name}_q3c_ang2ipix`` on ``q3c_ang2ipix({t.q3c[0]}, "
                       f"{t.q3c[1]})`` (the table is clustered on it after an initial load)")
    if indexes:
        facts.append(("Indexes", "; ".join(indexes)))
    if t.foreign_keys:
        facts.append(("Foreign keys", "; ".join(
            f"``{col}`` → {_ref(*ref.split('.'))}" for col, ref in t.foreign_keys.items())))
    referencing = schema.referencing(t.name)
    if referencing:
        facts.append(("Referenced by", "; ".join(_ref(r.name, col) for r, col in referencing)))
    if t.tile_input:
        facts.append(("A tile's rows", f"made from its {t.tile_input} input, replaced in "
                      "the tile's transaction"))
    if t.bookkeeping:
        facts.append(("Bookkeeping", "ours, not part of the specprod-db 1.3 layout"))
    return facts


def _key_cell(t, c):
    keys = []
    if c.name in t.primary_key:
        keys.append("PK")
    if c.name in t.foreign_keys:
        keys.append(f"FK → {_ref(*t.foreign_keys[c.name].split('.'))}")
    if c.name in t.unique or c.name in t.unique_columns:
        keys.append("unique")
    if c.name in t.indexes:
        keys.append("index")
    if c.name in t.q3c:
        keys.append("q3c")
    return ", ".join(keys)


def reference_rst(tables=schema.TABLES, path=MEANINGS):
    """The schema reference as reStructuredText lines (a summary, then a section per
    table with its keys and a row per column)."""
    table_text, column_text = resolve(tables, path)
    missing = "*(no meaning recorded)*"
    out = [".. list-table:: Tables, in creation (foreign-key) order",
           "   :header-rows: 1", "   :widths: 20 10 70", "",
           "   * - table", "     - columns", "     - what a row is"]
    for t in tables:
        out += [f"   * - {_ref(t.name)}", f"     - {len(t.columns)}",
                f"     - {_first_sentence(table_text.get(t.name, missing))}"]
    out.append("")
    for t in tables:
        title = f"``{t.name}``"
        out += [f".. _table-{t.name}:", "", title, "-" * len(title), "",
                table_text.get(t.name, missing), ""]
        out += [f":{name}: {value}" for name, value in _facts(t)]
        out += ["", ".. list-table::", "   :header-rows: 1", "   :widths: 4 22 16 14 44",
                "", "   * - #", "     - column", "     - type", "     - keys", "     - meaning"]
        for number, c in enumerate(t.columns, 1):
            ddl = c.ddl_type + (", NULL allowed" if c.name in t.nullable else "")
            out += [f"   * - {number}", f"     - ``{c.name}``", f"     - {ddl}",
                    f"     - {_key_cell(t, c)}",
                    f"     - {column_text.get((t.name, c.name), missing)}"]
        out.append("")
    return out


def setup(app):
    from docutils.statemachine import StringList
    from sphinx.util import logging
    from sphinx.util.docutils import SphinxDirective
    from sphinx.util.nodes import nested_parse_with_titles
    from docutils import nodes

    log = logging.getLogger(__name__)

    class SchemaReference(SphinxDirective):
        """``.. schema-reference::``: every table of ``schema.TABLES``."""

        def run(self):
            self.env.note_dependency(str(MEANINGS))
            self.env.note_dependency(schema.__file__)
            for message in problems():
                log.warning("schema reference: %s (%s)", message, MEANINGS,
                            location=self.get_location())
            container = nodes.container()
            source = self.get_source_info()[0]
            content = StringList(reference_rst(), source=source)
            nested_parse_with_titles(self.state, content, container)
            return container.children

    app.add_directive("schema-reference", SchemaReference)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
