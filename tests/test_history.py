"""``tile_history``: every run records, per tile, the action, its reason and outcome, in
the tile's own transaction; ``specprod-db history`` prints it; ``-q`` keeps the load's
report.  One small production, loaded in process three times (module scope):

1. the first load: INSERT of every tile with EFFTIME_SPEC > 0 (20000 is a plain SKIP,
   not recorded);
2. tile 100 leaves the tiles file (DELETE), 1001's UPDATED moves (REFRESH), 1000's
   GOALTIME changes (UPDATE keeping its fiberassign file);
3. 40000 leaves the file while 60000's line is damaged: 40000's delete is suspended
   (SKIP, recorded since the tile stays loaded), 60000 fails (FAIL).

The helpers here are shared with ``test_status.py`` and ``test_verify.py``.
"""
import json
import os
import secrets
import subprocess

import pytest

from conftest import CLI, copy_mock, mock_env, query

from specprod_db import mpi, schema

from specprod_db.db import ddl

from specprod_db.db.connect import connect
from specprod_db.load import pipeline, tile_writer
from specprod_db.mock import environment
from specprod_db.paths import Paths


# --- helpers (shared) ------------------------------------------------------------------

def copy_prod(small_production, dest):
    """A private copy of the session's small production at ``dest``."""
    return copy_mock(small_production[0], dest)


def new_schema(dsn):
    name = "test_" + secrets.token_hex(4)
    conn = connect(dsn)
    ddl.create_schema(conn, name)
    conn.close()
    return name


def drop_schema(dsn, name):
    query(dsn, f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def load_in_process(dsn, name, prod, stage, **options):
    """One rank, in this process: the exit status of ``specprod-db load``."""
    paths = Paths.from_environment(environment(prod))
    return pipeline.load(mpi.SerialComm(), pipeline.Options(
        schema=name, paths=paths, dsn=dsn, stage_dir=str(stage), **options))


def tiles_csv(prod):
    return os.path.join(prod, "spectro", "redux", "daily", "tiles-daily.csv")


def edit_tiles(prod, drop=(), set_fields=None):
    """Rewrite tiles-daily.csv: remove the lines of ``drop``; ``set_fields`` =
    ``{tileid: {column: value}}``."""
    path = tiles_csv(prod)
    with open(path) as f:
        lines = f.read().splitlines()
    header = lines[0].split(",")
    out = [lines[0]]
    for ln in lines[1:]:
        r = ln.split(",")
        tid = int(r[0])
        if tid in drop:
            continue
        for col, value in (set_fields or {}).get(tid, {}).items():
            r[header.index(col)] = value
        out.append(",".join(r))
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def history_rows(dsn, name, run_id=None):
    where = "" if run_id is None else f" WHERE run_id = {int(run_id)}"
    rows = query(dsn, f'SELECT run_id, tileid, action, reason, outcome, error, counts, '
                      f'tile_rows FROM "{name}".tile_history{where} ORDER BY id')
    keys = ("run_id", "tileid", "action", "reason", "outcome", "error", "counts",
            "tile_rows")
    out = []
    for r in rows:
        d = dict(zip(keys, r))
        d["counts"] = json.loads(d["counts"]) if d["counts"] else None
        d["tile_rows"] = json.loads(d["tile_rows"]) if d["tile_rows"] else None
        out.append(d)
    return out


def rows_per_tile(dsn, name, tileid):
    return {t.name: query(dsn, f'SELECT count(*) FROM "{name}".{t.name} WHERE tileid = %s',
                          (tileid,))[0][0] for t in schema.tile_tables()}


def last_run_id(dsn, name):
    return query(dsn, f'SELECT max(id) FROM "{name}".load_run')[0][0]


# --- the module's production -----------------------------------------------------------

@pytest.fixture(scope="module")
def runs(pg_dsn, small_production, tmp_path_factory):
    base = tmp_path_factory.mktemp("history")
    prod = copy_prod(small_production, base / "production")
    name, stage = new_schema(pg_dsn), base / "stage"
    out = {"schema": name, "prod": prod, "stage": stage}
    try:
        out["status1"] = load_in_process(pg_dsn, name, prod, stage)
        out["run1"] = last_run_id(pg_dsn, name)
        edit_tiles(prod, drop=(100,), set_fields={
            1001: {"UPDATED": "2030-01-01T08:00:00-0800"},
            1000: {"GOALTIME": "1234.0"}})
        out["status2"] = load_in_process(pg_dsn, name, prod, stage)
        out["run2"] = last_run_id(pg_dsn, name)
        edit_tiles(prod, drop=(40000,), set_fields={60000: {"EFFTIME_SPEC": "lots"}})
        out["status3"] = load_in_process(pg_dsn, name, prod, stage)
        out["run3"] = last_run_id(pg_dsn, name)
        yield out
    finally:
        drop_schema(pg_dsn, name)


def test_first_load_records_each_insert_with_its_rows(runs, pg_dsn):
    name = runs["schema"]
    assert runs["status1"] == 0
    h = history_rows(pg_dsn, name, runs["run1"])
    loaded = sorted(r[0] for r in query(pg_dsn, f'SELECT tileid FROM "{name}".tile_state '
                                                f"WHERE run_id = {runs['run1']}"))
    # 20000 (EFFTIME_SPEC = 0, never loaded) is a plain SKIP: not recorded
    assert sorted(r["tileid"] for r in h) == [100, 1000, 1001, 40000, 60000]
    assert 20000 not in loaded
    for r in h:
        assert (r["action"], r["reason"], r["outcome"], r["error"]) == \
            ("INSERT", "new tile", "loaded", None)
        assert r["counts"]["ztile"] > 0 and r["counts"]["tile"] == 1
        assert set(r["tile_rows"]) == {t.name for t in schema.tile_tables()}
    # 40000 and 60000 hold their first load still (runs 2 and 3 did not write them)
    for tid in (40000, 60000):
        assert h[[r["tileid"] for r in h].index(tid)]["tile_rows"] == \
            rows_per_tile(pg_dsn, name, tid)


def test_delete_refresh_update(runs, pg_dsn):
    name = runs["schema"]
    assert runs["status2"] == 0
    h = {r["tileid"]: r for r in history_rows(pg_dsn, name, runs["run2"])}
    assert set(h) == {100, 1000, 1001}  # unchanged tiles are not recorded
    d = h[100]
    assert (d["action"], d["reason"], d["outcome"]) == \
        ("DELETE", "no longer in the tiles file", "deleted")
    assert d["counts"]["ztile"] > 0 and set(d["tile_rows"].values()) == {0}
    assert (h[1001]["action"], h[1001]["reason"], h[1001]["outcome"]) == \
        ("REFRESH", "only UPDATED moved", "refreshed")
    assert h[1001]["counts"] is None and h[1001]["tile_rows"] is None
    u = h[1000]
    assert (u["action"], u["outcome"]) == ("UPDATE", "loaded")
    assert u["reason"] == "changed: GOALTIME"
    # an UPDATE that kept the fiberassign file: fiberassign/potential/target not copied,
    # their counts carried from the first load; every count is what the tile holds
    assert "fiberassign" not in u["counts"]
    assert u["tile_rows"] == rows_per_tile(pg_dsn, name, 1000)
    assert u["tile_rows"]["fiberassign"] > 0


def test_failure_and_suspended_delete_are_recorded(runs, pg_dsn):
    name = runs["schema"]
    assert runs["status3"] == 1
    h = {r["tileid"]: r for r in history_rows(pg_dsn, name, runs["run3"])}
    assert set(h) == {40000, 60000}
    s = h[40000]
    assert (s["action"], s["outcome"]) == ("SKIP", "skipped")
    assert s["reason"] == "tiles file damaged (1 bad lines): deletes suspended"
    f = h[60000]
    assert (f["action"], f["outcome"]) == ("FAIL", "failed")
    assert "EFFTIME_SPEC" in f["error"] and f["counts"] is None and f["tile_rows"] is None
    state = dict(query(pg_dsn, f'SELECT tileid, status FROM "{name}".tile_state'))
    assert state[60000] == "failed" and state[40000] == "loaded"


def test_history_command(runs, pg_dsn, capsys):
    from specprod_db import cli
    name = runs["schema"]
    assert cli.main(["history", "--schema", name, "--db", pg_dsn, "--since", "today",
                     "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["schema"] == name and out["since"] == "today"
    rows = out["rows"]
    assert len(rows) == len(history_rows(pg_dsn, name))
    assert set(rows[0]) == {"id", "run_id", "tileid", "action", "reason", "outcome", "error",
                            "at", "counts", "tile_rows"}
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)
    assert cli.main(["history", "--schema", name, "--db", pg_dsn, "--tile", "1000",
                     "--tile", "100,60000"]) == 0
    text = capsys.readouterr().out
    assert "changed: GOALTIME" in text and "no longer in the tiles file" in text
    assert " 1001 " not in text and "EFFTIME_SPEC" in text
    assert cli.main(["history", "--schema", name, "--db", pg_dsn, "--since",
                     "2999-01-01"]) == 0
    assert capsys.readouterr().out.strip() == "no history rows"
    assert cli.main(["history", "--schema", name, "--db", pg_dsn, "--since",
                     "not a date"]) == 2
    assert "--since" in capsys.readouterr().err


def test_history_is_written_in_the_tiles_transaction(runs, pg_dsn, monkeypatch):
    """A tile whose transaction fails after its rows were replaced leaves neither its
    history row nor any change: history and data are committed together."""
    from specprod_db.load.plan import TileAction
    name = runs["schema"]
    before = rows_per_tile(pg_dsn, name, 1001)
    n = len(history_rows(pg_dsn, name))

    def boom(*args, **kwargs):
        raise RuntimeError("injected after the COPY")
    monkeypatch.setattr(tile_writer, "flag_staged", boom)
    conn = connect(pg_dsn)
    try:
        action = TileAction(1001, "UPDATE", "test", {}, False, {})
        with pytest.raises(RuntimeError):
            tile_writer.write_tile(conn, name, action,
                              {t.name: t.empty() for t in schema.tile_tables()}, {},
                              runs["run3"])
    finally:
        conn.close()
    assert len(history_rows(pg_dsn, name)) == n
    assert rows_per_tile(pg_dsn, name, 1001) == before


def test_init_adds_the_table_to_an_existing_schema(pg_dsn, schema_name):
    conn = connect(pg_dsn)
    try:
        ddl.create_schema(conn, schema_name)
        with conn.cursor() as cur:
            cur.execute(f'DROP TABLE "{schema_name}".tile_history')
        conn.commit()
    finally:
        conn.close()
    from specprod_db import cli
    assert cli.main(["history", "--schema", schema_name, "--db", pg_dsn]) == 2
    subprocess.run(CLI + ["init", "--schema", schema_name, "--db", pg_dsn, "--no-grant"],
                   check=True, capture_output=True, timeout=120)
    assert query(pg_dsn, "SELECT to_regclass(%s) IS NOT NULL",
                 (f'"{schema_name}".tile_history',))[0][0]


def test_quiet_keeps_warnings_and_the_report(runs, pg_dsn, tmp_path):
    """-q: no INFO lines, warnings still logged, the load's report still printed."""
    env = mock_env(runs["prod"], SPECPROD_DB_DSN=pg_dsn)
    env.pop("DESI_LOGLEVEL", None)
    r = subprocess.run(CLI + ["load", "--schema", runs["schema"], "--stage-dir",
                              str(runs["stage"]), "-q"], env=env, capture_output=True,
                       text=True, timeout=300)
    log = r.stdout + r.stderr  # desiutil logs to stdout
    assert r.returncode == 1, log  # 60000's line is still damaged
    assert "INFO:" not in log and "WARNING:" in log and "deletes suspended" in log
    assert "load run" in r.stdout and "FAILED tiles (bad input)" in r.stdout
    r = subprocess.run(CLI + ["plan", "--schema", runs["schema"], "-q", "-v"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "not allowed with argument" in r.stderr


def test_commands_that_log_take_quiet():
    from specprod_db import cli
    for command in ("init", "plan", "load", "status", "verify", "history"):
        args = cli.parse([command, "--schema", "x", "-q"])
        assert args.quiet and not args.verbose
