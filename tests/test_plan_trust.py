"""The plan never publishes wrong or stale data (issue 16 §1 bullets 1-2, §2; issue 20).

* a tile holding rows is deleted whatever its recorded status; a failed tile that never
  held rows and left the file is marked gone, so ``status`` returns to 0 (1 and 3 ranks);
* a value the plan depends on that does not parse is a bad line, never a decision
  (blank/NaN/inf EFFTIME_SPEC, UPDATED the parser refuses, LASTNIGHT not a calendar
  night, non-ASCII text); a UTF-8 BOM is accepted; an empty PROGRAM is loaded
  (desispec#2251);
* ``--tiles`` naming a tile absent from the tiles file says so, exit 1;
* the tiles file is read with a size limit (``/dev/zero``: exit 2, naming the limit);
* a newer line changing PROGRAM or SURVEY redoes the rows that carry them (every table
  equals a fresh load, 1 and 3 ranks);
* an exposure whose EFFTIME_SPEC is NaN is counted and logged with its EXPID;
* the tiles file read (a symlink) is recorded in ``load_run.options``: path as given,
  resolved path, size, SHA-256.
"""
import hashlib
import json
import math
import os
import subprocess

import fitsio
import numpy as np
import pytest

from conftest import (CLI, dump_schema, fresh_load_dump, load, mock_env, query)
from test_bad_input import rewrite_fits
from test_daily import (edit_tiles_csv, last_run, plan_lines, tile_state, tiles_csv,
                        tiles_of)

from specprod_db.load import plan
from specprod_db.extract import tile
from specprod_db.extract.faflavor import faflavor2program
from specprod_db.paths import InputError

# --- the parsers ------------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    "2024-11-01T08:42:26.1234567-0700",   # seven fraction digits
    "2024-02-30T00:00:00-0800",           # no such day
    "2024-11-01T99:00:00-0700",           # hour 99
    "2024-11-01T08:42:26+2400",           # offset of a day
    "2024-1-1T1:2:3",                     # not zero-padded (strptime alone takes it)
    "2024-11-01 08:42:26-0700", "yesterday", "nan"])
def test_parse_updated_refuses(value):
    with pytest.raises(ValueError, match="not a timestamp"):
        plan.parse_updated(value)


def test_parse_updated_and_night():
    utc = plan.parse_updated("2024-11-01T15:42:26+00:00")
    for v in ("2024-11-01T08:42:26-0700", "2024-11-01T15:42:26Z", "2024-11-01T15:42:26",
              "2024-11-01T08:42:26.000000-07:00"):
        assert plan.parse_updated(v) == utc, v
    assert plan.parse_updated("") == plan.parse_updated(None) < utc
    assert plan.parse_night("20240229") == plan.parse_night(20240229) == 20240229
    for v in ("20230229", "20241301", "2024103", "0", "-1", "202410311", "2024-10-31"):
        with pytest.raises(ValueError, match="LASTNIGHT"):
            plan.parse_night(v)


# --- the reader ---------------------------------------------------------------------------

def _mock_csv(tmp_path, small_production):
    """The small production's tiles-daily.csv as (header, rows of str)."""
    with open(tiles_csv(small_production[0])) as f:
        lines = f.read().splitlines()
    return lines[0].split(","), [ln.split(",") for ln in lines[1:]]


def _write(path, header, rows, prefix=b""):
    text = "\n".join([",".join(header)] + [",".join(r) for r in rows]) + "\n"
    path.write_bytes(prefix + text.encode("utf-8"))
    return str(path)


BAD_VALUES = [
    ("EFFTIME_SPEC", "", "EFFTIME_SPEC missing"),
    ("EFFTIME_SPEC", "nan", "EFFTIME_SPEC 'nan' not a finite number"),
    ("EFFTIME_SPEC", "NaN", "not a finite number"),
    ("EFFTIME_SPEC", "inf", "EFFTIME_SPEC 'inf' not a finite number"),
    ("EFFTIME_SPEC", "-Infinity", "not a finite number"),
    ("UPDATED", "2024-11-01T08:42:26.1234567-0700", "not a timestamp"),
    ("UPDATED", "2024-02-30T00:00:00-0800", "not a timestamp"),
    ("UPDATED", "2024-11-01T99:00:00-0700", "not a timestamp"),
    ("LASTNIGHT", "20240230", "LASTNIGHT '20240230' not a calendar date"),
    ("LASTNIGHT", "2024103", "not a night YYYYMMDD"),
    ("LASTNIGHT", "0", "not a night YYYYMMDD"),
    ("SURVEY", "", "SURVEY missing"),
    ("SURVEY", "ma\u00efn", "non-ASCII text in SURVEY"),
    ("OBSSTATUS", "obs\u00e9nd", "non-ASCII text in OBSSTATUS"),
    ("PROGRAM", "\u2013dark", "non-ASCII text in PROGRAM"),
]


@pytest.mark.parametrize("column,value,message", BAD_VALUES)
def test_bad_value_is_a_bad_line(column, value, message, tmp_path, small_production):
    """One bad value in the line of tile 1001: a bad line of that tile (the file is
    damaged), whatever the column; the other lines are read as before."""
    header, rows = _mock_csv(tmp_path, small_production)
    good, problems, bad = tile.read_tiles_file(_write(tmp_path / "good.csv", header, rows))
    assert (problems, bad) == ({}, 0)
    k = header.index(column)
    for r in rows:
        if r[0] == "1001":
            r[k] = value
    table, problems, bad = tile.read_tiles_file(_write(tmp_path / "t.csv", header, rows))
    assert bad == 1 and set(problems) == {1001}, problems
    assert message in problems[1001] and "line 3" in problems[1001], problems
    # the other lines are read as before (a line set aside whole, e.g. non-ASCII, is
    # not in the table; a line with a bad field is, its fields filled)
    assert table[table["TILEID"] != 1001].tolist() == good[good["TILEID"] != 1001].tolist()
    # the plan of this file: 1001 FAIL (never a DELETE, never an older line's values)
    state = {1001: {"status": "loaded", "in_tile_table": True}}
    actions = {a.tileid: a for a in plan.make_plan(
        table, problems, state, lambda *a: {}, bad_lines=bad)}
    assert actions[1001].action == plan.FAIL and message in actions[1001].reason


def test_bom_non_ascii_and_empty_program(tmp_path, small_production):
    """A UTF-8 byte-order mark is accepted (it was "missing column TILEID"); a latin-1
    byte is a bad line of its tile (it was an internal error); an empty PROGRAM is
    faflavor2program(FAFLAVOR), as DESI patches it (desispec#2251: a quarter of the real
    rows)."""
    header, rows = _mock_csv(tmp_path, small_production)
    ref, _, _ = tile.read_tiles_file(_write(tmp_path / "ref.csv", header, rows))
    path = _write(tmp_path / "bom.csv", header, rows, prefix=b"\xef\xbb\xbf")
    table, problems, bad = tile.read_tiles_file(path)
    assert (problems, bad) == ({}, 0) and table.tolist() == ref.tolist()
    k = header.index("PROGRAM")
    for r in rows:
        if r[0] == "100":
            r[k] = ""
    path = tmp_path / "latin1.csv"
    _write(path, header, rows)
    data = path.read_bytes().replace(b"1001,main,dark", b"1001,main,d\xe9rk")
    path.write_bytes(data)
    table, problems, bad = tile.read_tiles_file(str(path))
    assert bad == 1 and set(problems) == {1001}
    assert "non-ASCII text in PROGRAM" in problems[1001]
    sel = table["TILEID"] == 100
    assert table["PROGRAM"][sel].tolist() == [faflavor2program(table["FAFLAVOR"][sel][0])]
    assert table["PROGRAM"][sel].tolist() == ref["PROGRAM"][ref["TILEID"] == 100].tolist()
    # a NUL byte (which the database would refuse): a bad line too
    path.write_bytes(data.replace(b"d\xe9rk", b"d\x00rk"))
    _, problems, bad = tile.read_tiles_file(str(path))
    assert bad == 1 and set(problems) == {1001}


def test_fits_tiles_file_values(tmp_path, small_production):
    """The FITS form follows the same rules: NaN EFFTIME_SPEC, non-ASCII bytes, an
    empty SURVEY are bad rows; an empty PROGRAM is not (faflavor2program(FAFLAVOR))."""
    header, rows = _mock_csv(tmp_path, small_production)
    table, _, _ = tile.read_tiles_file(_write(tmp_path / "t.csv", header, rows))
    data = np.zeros(len(table), dtype=[(n, f"S{table.dtype[n].itemsize // 4}")
                                       if table.dtype[n].kind == "U" else (n, table.dtype[n])
                                       for n in table.dtype.names])
    for n in table.dtype.names:
        data[n] = np.char.encode(table[n], "ascii") if table.dtype[n].kind == "U" \
            else table[n]
    data["EFFTIME_SPEC"][1] = np.nan          # 1001
    data["OBSSTATUS"][2] = b"obs\xe9nd"       # 100
    data["SURVEY"][3] = b""                   # 60000
    data["PROGRAM"][5] = b""                  # 40000: fine
    path = str(tmp_path / "tiles.fits")
    fitsio.write(path, data, extname="TILES")
    got, problems, bad = tile.read_tiles_file(path)
    assert bad == 3 and set(problems) == {1001, 100, 60000}, problems
    assert "EFFTIME_SPEC 'nan' not a finite number" in problems[1001]
    assert "non-ASCII text in OBSSTATUS" in problems[100]
    assert "SURVEY missing" in problems[60000]
    assert got["PROGRAM"][5] == table["PROGRAM"][5] == faflavor2program(table["FAFLAVOR"][5])


def test_size_limit(tmp_path):
    """A tiles file larger than the limit is refused, naming file and limit: a regular
    file by its size (nothing read), a device by reading one byte past the limit."""
    path = tmp_path / "tiles.csv"
    path.write_text("TILEID\n" + "1\n" * 100)
    with pytest.raises(InputError, match=r"tiles\.csv: larger than the limit of 100 "
                                         r"bytes"):
        tile.read_tiles_file(str(path), max_bytes=100)
    with pytest.raises(InputError, match="/dev/zero: larger than the limit of 4096 bytes"):
        tile.read_tiles_file("/dev/zero", max_bytes=4096)
    assert tile.TILES_FILE_MAX_BYTES >= 100 * 2**20


# --- the planner alone --------------------------------------------------------------------

DT = [("TILEID", "i4"), ("EFFTIME_SPEC", "f8"), ("LASTNIGHT", "i4"), ("SURVEY", "U8"),
      ("PROGRAM", "U8"), ("UPDATED", "U32")]


def _fp(tileid, line, old):
    return {"exposures_hash": "e", "redrock_fingerprint": "r",
            "fiberassign_fingerprint": "f"}


def _state(loaded, **over):
    d = {"status": "loaded", "tile_hash": plan.tile_hash(loaded), "exposures_hash": "e",
         "redrock_fingerprint": "r", "fiberassign_fingerprint": "f", "in_tile_table": True,
         "updated": loaded["UPDATED"], "line": json.dumps(loaded)}
    d.update(over)
    return d


def _line(tid, eff=10.0, survey="main", program="dark"):
    return (tid, eff, 20241101, survey, program, "")


def test_plan_deletes_a_failed_tile_holding_rows():
    lines = {t: plan.line_dict(np.array([_line(t)], dtype=DT), 0) for t in range(1, 9)}
    failed = dict(status="failed", error="tile: boom")
    state = {1: _state(lines[1], **failed),                         # withdrawn
             2: _state(lines[2], **failed),                         # left the file
             3: _state(lines[3], **failed, in_tile_table=False),    # left, no rows
             4: _state(lines[4], status="internal_error", in_tile_table=False),  # withdrawn
             5: _state(lines[5], status="deleted", in_tile_table=False),         # left
             6: _state(lines[6], **failed),                         # still there: retried
             7: _state(lines[7]), 8: _state(lines[8])}
    t = np.array([_line(1, 0.0), _line(4, 0.0), _line(6), _line(7), _line(8)], dtype=DT)
    actions = {a.tileid: a for a in plan.make_plan(t, {}, state, _fp)}
    assert (actions[1].action, actions[1].reason) == (plan.DELETE, "EFFTIME_SPEC = 0.0")
    assert (actions[2].action, actions[2].reason) == (plan.DELETE,
                                                      "no longer in the tiles file")
    for tid in (3, 4):
        assert actions[tid].action == plan.DELETE and "marked gone" in actions[tid].reason
    assert 5 not in actions
    assert actions[6].action == plan.UPDATE and actions[6].full
    # guards apply: a damaged file suspends them all, --no-delete refuses them
    actions = plan.make_plan(t, {}, state, _fp, bad_lines=1)
    assert not [a for a in actions if a.action == plan.DELETE]
    actions = plan.make_plan(t, {}, state, _fp, no_delete=True)
    assert not [a for a in actions if a.action == plan.DELETE]
    # a mass delete counts tiles holding rows (2 of 5 here, under the floor of 3); marking
    # a tile gone deletes nothing and is not counted
    with pytest.raises(plan.MassDeleteRefused, match="2 of 5 loaded tiles"):
        plan.make_plan(t, {}, state, _fp, max_delete_count=1, max_delete_fraction=0.1)


def test_plan_never_decides_on_a_bad_value():
    """A table handed to the planner with a NaN EFFTIME_SPEC or an unknown SURVEY: FAIL,
    never DELETE; an UPDATED the parser refuses is not "the oldest"."""
    lines = {t: plan.line_dict(np.array([_line(t)], dtype=DT), 0) for t in (1, 2)}
    state = {t: _state(lines[t]) for t in (1, 2)}
    t = np.array([_line(1, math.nan), _line(2, survey="unknown"), _line(3, math.inf)],
                 dtype=DT)
    actions = {a.tileid: a for a in plan.make_plan(t, {}, state, _fp)}
    assert actions[1].action == plan.FAIL and "not a finite number" in actions[1].reason
    assert actions[2].action == plan.FAIL and "SURVEY 'unknown'" in actions[2].reason
    assert actions[3].action == plan.FAIL
    bad = np.array([_line(1), (1, 20.0, 20241102, "main", "dark",
                               "2024-11-01T08:42:26.1234567-0700")], dtype=DT)
    with pytest.raises(ValueError, match="not a timestamp"):
        plan.winning_lines(bad)


@pytest.mark.parametrize("column,value,full", [
    ("PROGRAM", "bright", True), ("SURVEY", "sv3", True),
    ("EFFTIME_SPEC", 20.0, False), ("LASTNIGHT", 20241102, False)])
def test_update_is_full_when_a_field_of_target_changes(column, value, full):
    line = plan.line_dict(np.array([_line(1)], dtype=DT), 0)
    new = np.array([_line(1)], dtype=DT)
    new[column] = value
    [a] = plan.make_plan(new, {}, {1: _state(line)}, _fp)
    assert a.action == plan.UPDATE and a.full == full and column in a.reason
    # an old line not recorded (an older version): full, to be safe
    [a] = plan.make_plan(new, {}, {1: _state(line, line=None)}, _fp)
    assert a.action == plan.UPDATE and a.full


def test_absent_tiles():
    line = plan.line_dict(np.array([_line(1)], dtype=DT), 0)
    state = {1: _state(line), 2: _state(line, status="deleted", in_tile_table=False)}
    t = np.array([_line(1), _line(3, 0.0)], dtype=DT)
    actions = plan.make_plan(t, {}, state, _fp, tiles=[1, 2, 3, 4])
    assert plan.absent_tiles([1, 2, 3, 4], actions) == [2, 4]
    assert plan.absent_tiles(None, actions) == []


# --- through real loads -------------------------------------------------------------------

def _status(dsn, name, prod):
    r = subprocess.run(CLI + ["status", "--schema", name, "--db", dsn, "--json"],
                       env=mock_env(prod), capture_output=True, text=True, timeout=120)
    report = json.loads(r.stdout[r.stdout.index("{"):])
    return r.returncode, report


def _set(edits):
    """``edit_tiles_csv`` function: ``{tileid: {column: value}}``; value None drops the
    tile's lines."""
    def edit(header, rows):
        out = []
        for r in rows:
            change = edits.get(int(r[0]), {})
            if change is None:
                continue
            for k, v in change.items():
                r[header.index(k)] = v
            out.append(r)
        return out
    return edit


def _add_line(tileid, like, **fields):
    def edit(header, rows):
        r = list(next(r for r in rows if int(r[0]) == like))
        r[0] = str(tileid)
        for k, v in fields.items():
            r[header.index(k)] = v
        return rows + [r]
    return edit


@pytest.mark.parametrize("ranks", [1, 3])
def test_failed_tile_can_still_be_deleted(ranks, pg_dsn, schemas, copy_production, mpirun,
                                          mpiexec, tmp_path):
    """1001 and 100 fail their UPDATE (LASTNIGHT without a cumulative directory): their
    older rows stay; 1999 fails its INSERT (no rows).  Then 1001 is withdrawn, 100 and
    1999 leave the file: 1001 and 100 are DELETEd, 1999 is marked gone, the run exits 0,
    every table equals a fresh load of the tree, and ``status`` exits 0."""
    prod = copy_production()
    name = schemas()
    stage = tmp_path / "stage"
    load(mpirun, ranks, pg_dsn, name, prod, stage)
    loaded = tiles_of(pg_dsn, name)
    assert {1001, 100} <= set(loaded)
    edit_tiles_csv(prod, _set({1001: {"LASTNIGHT": "20241105"},
                               100: {"LASTNIGHT": "20241105"}}))
    edit_tiles_csv(prod, _add_line(1999, 1001))
    r = load(mpirun, ranks, pg_dsn, name, prod, stage, check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    state = tile_state(pg_dsn, name)
    assert state[1001][0] == state[100][0] == state[1999][0] == "failed"
    assert tiles_of(pg_dsn, name) == loaded            # the older rows are kept
    code, report = _status(pg_dsn, name, prod)
    assert code == 1
    assert {(f["tileid"], f["holds_rows"]) for f in report["tiles"]["failed"]} == {
        (1001, True), (100, True), (1999, False)}

    edit_tiles_csv(prod, _set({1001: {"EFFTIME_SPEC": "0.0"}, 100: None, 1999: None}))
    planned = plan_lines(load(mpirun, 1, pg_dsn, name, prod, stage, command="plan").stdout)
    assert planned[1001] == ("DELETE", "EFFTIME_SPEC = 0.0")
    assert planned[100] == ("DELETE", "no longer in the tiles file")
    assert planned[1999][0] == "DELETE" and "marked gone" in planned[1999][1]
    r = load(mpirun, ranks, pg_dsn, name, prod, stage)
    assert last_run(pg_dsn, name)[0] == "ok"
    assert tiles_of(pg_dsn, name) == sorted(set(loaded) - {1001, 100})
    state = tile_state(pg_dsn, name)
    assert state[1001][0] == state[100][0] == state[1999][0] == "deleted"
    fresh = fresh_load_dump(pg_dsn, mpiexec, prod, tmp_path / "fresh")
    mine = dump_schema(pg_dsn, name)
    for table in fresh:
        assert mine[table] == fresh[table], f"table {table} differs from a fresh load"
    code, report = _status(pg_dsn, name, prod)
    assert code == 0 and report["ok"] and report["tiles"]["failed"] == []


def test_bad_values_never_decide(pg_dsn, schemas, copy_production, mpirun, tmp_path):
    """A loaded tile's EFFTIME_SPEC emptied (was: DELETEd, exit 0), a newer line whose
    UPDATED has seven fraction digits (was: taken as the oldest, the older line kept,
    exit 0), non-ASCII text (was: an internal error), in a file starting with a BOM (was:
    "missing column TILEID"), an empty PROGRAM on a line that is not loaded: three bad
    lines, those tiles FAIL with the reason, nothing deleted, every table unchanged,
    exit 1."""
    prod = copy_production()
    name = schemas()
    stage = tmp_path / "stage"
    load(mpirun, 1, pg_dsn, name, prod, stage)
    before = dump_schema(pg_dsn, name)
    edit_tiles_csv(prod, _set({1001: {"EFFTIME_SPEC": ""},
                               40000: {"OBSSTATUS": "obs\u00e9nd"},
                               20000: {"PROGRAM": ""}}))
    edit_tiles_csv(prod, _add_line(60000, 60000, GOALTIME="999.0",
                                   UPDATED="2024-11-05T08:00:00.1234567-0700"))
    path = tiles_csv(prod)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(b"\xef\xbb\xbf" + data)
    r = load(mpirun, 1, pg_dsn, name, prod, stage, command="plan")
    planned = plan_lines(r.stdout)
    assert planned[1001][0] == "FAIL" and "EFFTIME_SPEC missing" in planned[1001][1]
    assert planned[60000][0] == "FAIL" and "not a timestamp" in planned[60000][1]
    assert planned[40000][0] == "FAIL" and "non-ASCII text in OBSSTATUS" in planned[40000][1]
    assert planned[20000][0] == "SKIP"
    r = load(mpirun, 1, pg_dsn, name, prod, stage, check=False)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "3 line(s) cannot be used" in out and "Traceback" not in out
    after = dump_schema(pg_dsn, name)
    for table in after:
        assert after[table] == before[table], table
    state = tile_state(pg_dsn, name)
    assert {state[t][0] for t in (1001, 40000, 60000)} == {"failed"}


def test_tiles_absent_from_the_file(pg_dsn, schemas, copy_production, mpirun, tmp_path):
    prod = copy_production()
    name = schemas()
    r = load(mpirun, 1, pg_dsn, name, prod, tmp_path / "stage", "--tiles", "1000,4242",
             check=False)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "tile 4242: not in the tiles file" in out
    assert tiles_of(pg_dsn, name) == [1000]
    assert "4242" in last_run(pg_dsn, name)[1]["failed"]
    assert 4242 not in tile_state(pg_dsn, name)      # nothing recorded for no tile
    r = load(mpirun, 1, pg_dsn, name, prod, tmp_path / "stage", "--tiles", "4242",
             command="plan", check=False)
    assert r.returncode == 1 and "tile 4242: not in the tiles file" in r.stdout + r.stderr


def test_tiles_file_size_limit(pg_dsn, schemas, copy_production, mpirun, tmp_path):
    prod = copy_production()
    name = schemas()
    r = load(mpirun, 1, pg_dsn, name, prod, tmp_path / "stage", "--tiles-file",
             "/dev/zero", check=False, command="plan")
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"tiles file /dev/zero: larger than the limit of {tile.TILES_FILE_MAX_BYTES} " \
           "bytes" in r.stderr


@pytest.mark.parametrize("ranks", [1, 3])
def test_program_and_survey_changes_reach_target(ranks, pg_dsn, schemas, copy_production,
                                                 mpirun, mpiexec, tmp_path):
    """Newer lines change PROGRAM of 1001 (dark -> bright) and SURVEY of 100 (sv3 ->
    sv1), fiberassign files unchanged: target rows follow (they kept the old values), and
    every table equals a fresh load of the same tree."""
    prod = copy_production()
    name = schemas()
    stage = tmp_path / "stage"
    load(mpirun, ranks, pg_dsn, name, prod, stage)
    edit_tiles_csv(prod, _add_line(1001, 1001, PROGRAM="bright",
                                   UPDATED="2024-11-05T08:00:00-0800"))
    edit_tiles_csv(prod, _add_line(100, 100, SURVEY="sv1",
                                   UPDATED="2024-11-05T08:00:00-0800"))
    load(mpirun, ranks, pg_dsn, name, prod, stage)
    assert last_run(pg_dsn, name)[0] == "ok"
    assert query(pg_dsn, f'SELECT DISTINCT program FROM "{name}".target WHERE tileid = '
                         "1001") == [("bright",)]
    assert query(pg_dsn, f'SELECT DISTINCT survey FROM "{name}".target WHERE tileid = '
                         "100") == [("sv1",)]
    fresh = fresh_load_dump(pg_dsn, mpiexec, prod, tmp_path / "fresh")
    mine = dump_schema(pg_dsn, name)
    for table in fresh:
        assert mine[table] == fresh[table], f"table {table} differs from a fresh load"


def _exposures_fits(prod):
    return os.path.join(prod, "spectro", "redux", "daily", "exposures-daily.fits")


@pytest.mark.parametrize("ranks", [1, 3])
def test_nan_efftime_exposure_counted(ranks, pg_dsn, schemas, copy_production, mpirun,
                                      tmp_path):
    prod = copy_production()
    name = schemas()
    exps = fitsio.read(_exposures_fits(prod), "EXPOSURES")
    mine = np.flatnonzero((exps["TILEID"] == 1001) & (exps["EFFTIME_SPEC"] > 0))
    assert len(mine) >= 2
    expid = int(exps["EXPID"][mine[0]])

    def change(i, n, h, d):
        if n == "EXPOSURES":
            d["EFFTIME_SPEC"][d["EXPID"] == expid] = np.nan
        return h, d
    rewrite_fits(_exposures_fits(prod), change)
    r = load(mpirun, ranks, pg_dsn, name, prod, tmp_path / "stage")
    outcome, counts = last_run(pg_dsn, name)
    assert outcome == "ok" and counts["warnings"]["nan_efftime_exposures"] == 1
    assert f"EFFTIME_SPEC NaN not loaded (only EFFTIME_SPEC > 0 qualifies): EXPID {expid}" \
        in r.stdout + r.stderr
    loaded = {e for (e,) in query(pg_dsn, f'SELECT expid FROM "{name}".exposure '
                                          "WHERE tileid = 1001")}
    assert expid not in loaded and len(loaded) == len(mine) - 1


def test_tiles_file_symlink_recorded(pg_dsn, schemas, copy_production, mpirun, tmp_path):
    prod = copy_production()
    name = schemas()
    link = tiles_csv(prod)
    real = str(tmp_path / "elsewhere" / "tiles-other.csv")
    os.makedirs(os.path.dirname(real))
    os.replace(link, real)
    os.symlink(real, link)
    r = load(mpirun, 1, pg_dsn, name, prod, tmp_path / "stage")
    with open(real, "rb") as f:
        data = f.read()
    [(options,)] = query(pg_dsn, f'SELECT options FROM "{name}".load_run')
    assert json.loads(options)["tiles_file"] == {
        "path": link, "resolved": real, "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest()}
    out = r.stdout + r.stderr
    assert f"tiles file {link} is {real}" in out
    assert f"tiles file: {link} -> {real} ({len(data)} bytes, sha256 " in r.stdout


def test_suspended_delete_of_a_failed_tile_is_recorded(pg_dsn, schemas, copy_production,
                                                       mpirun, tmp_path):
    """1001 fails its UPDATE and keeps its older rows; then it is withdrawn in a damaged
    tiles file: its delete is suspended (SKIP), and, as for a loaded tile, the SKIP is
    in its history and among the pending tiles of ``status`` (both looked at status
    ``loaded`` only, so the tile holding rows went unrecorded)."""
    prod = copy_production()
    name = schemas()
    stage = tmp_path / "stage"
    load(mpirun, 1, pg_dsn, name, prod, stage)
    edit_tiles_csv(prod, _set({1001: {"LASTNIGHT": "20241105"}}))
    assert load(mpirun, 1, pg_dsn, name, prod, stage, check=False).returncode == 1
    assert tile_state(pg_dsn, name)[1001][0] == "failed"
    edit_tiles_csv(prod, _set({1001: {"EFFTIME_SPEC": "0.0", "LASTNIGHT": "20241105"},
                               40000: {"EFFTIME_SPEC": "nan"}}))
    r = load(mpirun, 1, pg_dsn, name, prod, stage, check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert 1001 in tiles_of(pg_dsn, name)
    rows = query(pg_dsn, f'SELECT action, outcome, reason FROM "{name}".tile_history '
                         f'WHERE tileid = 1001 ORDER BY id DESC LIMIT 1')
    assert rows[0][:2] == ("SKIP", "skipped") and "deletes suspended" in rows[0][2], rows
    code, report = _status(pg_dsn, name, prod)
    assert code == 1
    pending = {p["tileid"]: p for p in report["tiles"]["pending"]}
    assert pending[1001]["action"] == "SKIP", report["tiles"]["pending"]
