"""The schema reference (doc/schema.rst): every table and column of schema.TABLES has a
meaning in doc/_data/columns.txt, and every meaning there belongs to a real column.

The generator is doc/_ext/schema_ref.py; `make docs` builds the page (warnings as errors).
"""
import sys
from pathlib import Path

import pytest

from specprod_db import schema

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "doc" / "_ext"))
import schema_ref  # noqa: E402

TOY = (schema.Table("toy", """
integer: id
real: flux_g flux_r
text: note
""", primary_key=("id",), nullable=("note",)),)


def write(tmp_path, text):
    path = tmp_path / "columns.txt"
    path.write_text(text)
    return path


def test_every_column_has_a_meaning_and_every_meaning_a_column():
    problems = schema_ref.problems()
    assert not problems, (
        "doc/_data/columns.txt and py/specprod_db/schema.py disagree; add or fix the "
        "meanings:\n  " + "\n  ".join(problems))


def test_reference_lists_every_table_and_column_with_its_type():
    text = "\n".join(schema_ref.reference_rst())
    for t in schema.TABLES:
        section = text.split(f".. _table-{t.name}:", 1)[1].split(".. _table-", 1)[0]
        for c in t.columns:
            assert f"     - ``{c.name}``\n     - {c.ddl_type}" in section, (t.name, c.name)
        assert f"``{t.name}_pkey``" in section
        for col, ref in t.foreign_keys.items():
            assert f"``{col}`` → :ref:`{ref.split('.')[0]} <table-" in section
        for col in t.indexes:
            assert f"``ix_{t.name}_{col}``" in section
        if t.q3c:
            assert f"``ix_{t.name}_q3c_ang2ipix``" in section


def test_braces_expand_and_placeholders_fill(tmp_path):
    path = write(tmp_path, "[toy]\n= A toy.\nid = Row.\nflux_{g,r} = Flux in {1}\n"
                           "  ({1U} band).\nnote = A note.\n")
    assert schema_ref.problems(TOY, path) == []
    _, columns = schema_ref.resolve(TOY, path)
    assert columns["toy", "flux_r"] == "Flux in r (R band)."


def test_shared_meaning_used_unless_the_table_has_its_own(tmp_path):
    path = write(tmp_path, "[*]\nid = Shared.\nnote = Shared note.\n"
                           "[toy]\n= A toy.\nflux_{g,r} = Flux.\nnote = Own note.\n")
    problems = schema_ref.problems(TOY, path)
    assert problems == ["[*] note: no table uses this meaning (no such column, or every "
                        "table with it has its own)"]
    _, columns = schema_ref.resolve(TOY, path)
    assert columns["toy", "id"] == "Shared." and columns["toy", "note"] == "Own note."


def test_missing_meanings_and_unknown_names_are_reported(tmp_path):
    path = write(tmp_path, "[toy]\nid = Row.\nflux_g = Flux.\nflux_i = No such band.\n"
                           "[nosuch]\n= Not a table.\n[*]\nmag = Nowhere.\n")
    assert set(schema_ref.problems(TOY, path)) == {
        "[toy] flux_i: no such column",
        "[nosuch]: no such table in schema.TABLES",
        "[*] mag: no table uses this meaning (no such column, or every table with it has "
        "its own)",
        "toy: no table meaning ('= ...' under [toy])",
        "toy.flux_r: no meaning (under [toy] or [*])",
        "toy.note: no meaning (under [toy] or [*])",
    }


@pytest.mark.parametrize("text, message", [
    ("id = Row.\n", "entry before the first [section]"),
    ("[toy]\nid = Row.\nid = Again.\n", "id given twice"),
    ("[toy]\nid Row.\n", "expected 'name = text'"),
    ("[toy]\n  continued\n", "continuation line without an entry"),
    ("[toy]\n[toy]\n", "section [toy] given twice"),
])
def test_malformed_file_names_the_line(tmp_path, text, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        schema_ref.read_meanings(write(tmp_path, text))
