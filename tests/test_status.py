"""``specprod-db status``: loaded, failed and pending tiles, runs, tables; exit 0 only
when nothing is failed or pending.  One load of the small production (module scope),
then tiles-file edits that make tiles pending and failed."""
import json
import shutil

import pytest

from test_history import copy_prod, drop_schema, edit_tiles, load_in_process, new_schema

from specprod_db import cli, schema
from specprod_db.mock import environment

KEYS = {"schema", "checked_at", "ok", "tiles", "runs", "tables", "size_bytes",
        "q3c_indexes", "q3c_missing", "unfinished_initial_load"}


@pytest.fixture(scope="module")
def loaded(pg_dsn, small_production, tmp_path_factory):
    base = tmp_path_factory.mktemp("status")
    prod = copy_prod(small_production, base / "production")
    name = new_schema(pg_dsn)
    try:
        assert load_in_process(pg_dsn, name, prod, base / "stage") == 0
        yield name, prod, base / "stage"
    finally:
        drop_schema(pg_dsn, name)


@pytest.fixture
def status(loaded, pg_dsn, monkeypatch, capsys):
    """``status(*options) -> (exit, JSON report)`` through the CLI, in process."""
    name, prod, _ = loaded
    for k, v in environment(prod).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("DESI_LOGLEVEL", "INFO")

    def run(*options, json_output=True):
        capsys.readouterr()
        code = cli.main(["status", "--schema", name, "--db", pg_dsn, "-q", *options]
                        + (["--json"] if json_output else []))
        out = capsys.readouterr().out
        return code, json.loads(out) if json_output else out
    return run


def test_after_a_clean_load(status, loaded):
    code, r = status()
    assert code == 0 and r["ok"]
    assert set(r) == KEYS and r["schema"] == loaded[0]
    t = r["tiles"]
    assert t["loaded"] == 5 and t["failed"] == [] and t["pending"] == []
    assert t["pending_error"] is None
    assert sum(x["tiles"] for x in t["by_survey_program"]) == 5
    assert {(x["survey"], x["program"]) for x in t["by_survey_program"]} >= {("main", "dark")}
    [run] = r["runs"]
    assert run["outcome"] == "ok" and run["seconds"] > 0 and run["rows_written"] > 0
    assert run["tables"]["ztile"] > 0 and run["failed"] == 0
    tables = {x["table"]: x for x in r["tables"]}
    assert set(tables) == {t.name for t in schema.TABLES}
    assert tables["tile"]["rows"] == 5 and tables["tile"]["exact"]
    assert tables["ztile"]["last_analyzed"] is not None  # the load ANALYZEs
    assert r["size_bytes"] == sum(x["bytes"] for x in r["tables"]) > 0
    assert {i["table"] for i in r["q3c_indexes"]} == {t.name for t in schema.TABLES
                                                      if t.q3c}
    assert r["q3c_missing"] == []


def test_text_fits_80_columns(status):
    code, text = status(json_output=False)
    assert code == 0
    assert "5 tile(s) loaded, 0 failed, 0 pending" in text
    assert max(map(len, text.splitlines())) <= 80


def test_pending_and_failed(status, loaded, pg_dsn, tmp_path):
    name, prod, stage = loaded
    tiles = prod + "/spectro/redux/daily/tiles-daily.csv"
    shutil.copy(tiles, tmp_path / "tiles.csv")
    try:
        # 60000's line damaged and loaded: failed; then 1000 changed: pending
        edit_tiles(prod, set_fields={60000: {"EFFTIME_SPEC": "lots"}})
        assert load_in_process(pg_dsn, name, prod, stage) == 1
        edit_tiles(prod, set_fields={1000: {"GOALTIME": "1234.0"}})
        code, r = status()
        assert code == 1 and not r["ok"]
        [f] = r["tiles"]["failed"]
        assert (f["tileid"], f["status"], f["holds_rows"]) == (60000, "failed", True)
        assert "EFFTIME_SPEC" in f["error"] and f["since"] and f["run_id"] == 2
        pending = {p["tileid"]: p for p in r["tiles"]["pending"]}
        assert pending[1000]["action"] == "UPDATE"
        assert pending[1000]["reason"] == "changed: GOALTIME"
        assert pending[60000]["action"] == "FAIL"
        assert r["runs"][0]["outcome"] == "failed" and r["runs"][0]["failed"] == 1
        code, text = status(json_output=False)
        assert code == 1 and "FAILED tiles (1)" in text and "PENDING tiles (2)" in text
        assert max(map(len, text.splitlines())) <= 80
        # the tiles file unreachable: said so, the rest still reported, exit 1
        code, r = status("--tiles-file", str(tmp_path / "nowhere.csv"))
        assert code == 1 and r["tiles"]["pending"] is None
        assert "nowhere.csv" in r["tiles"]["pending_error"]
        assert r["tiles"]["loaded"] == 5 and r["tables"]
        # a repaired file: the next load clears everything
        shutil.copy(tmp_path / "tiles.csv", tiles)
        assert load_in_process(pg_dsn, name, prod, stage) == 0
        assert status()[0] == 0
    finally:
        shutil.copy(tmp_path / "tiles.csv", tiles)


def test_no_such_schema(pg_dsn, capsys):
    assert cli.main(["status", "--schema", "no_such_schema_xyz", "--db", pg_dsn]) == 2
    assert "does not exist" in capsys.readouterr().err
