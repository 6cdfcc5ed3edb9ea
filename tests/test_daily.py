"""Daily semantics on the mock production (doc/daily.md), for 1 and 3 ranks.

* incremental == fresh: day 1, then days 2..4 (new tiles, re-observed tiles, a withdrawn
  tile, a changed fiberassign file) loaded one by one give exactly the tables (every
  column, primary flags included) of a fresh load of day 4;
* idempotence: a second run changes nothing and says so; ``plan`` / ``--dry-run`` print
  the actions with their reasons and touch nothing; REFRESH when only UPDATED moved;
* deletes: a tile that left tiles-daily is deleted without a flag (one withdrawn tile is
  not a mass delete), guarded by ``--no-delete`` and the mass-delete fraction and floor;
  a damaged tiles file (cut mid-line) deletes nothing, the next whole file deletes;
* concurrency: a second load of the same schema refuses to start, naming the first.

The helpers here are shared with ``test_bad_input.py`` and ``test_crash.py``.
"""
import json
import os
import re
import subprocess
import time

import pytest

from conftest import CLI, LOAD_TIMEOUT, dump_schema, load, mock_env, query

def tile_state(dsn, schema_name):
    return {r[0]: r[1:] for r in query(
        dsn, f'SELECT tileid, status, error FROM "{schema_name}".tile_state')}


def last_run(dsn, schema_name):
    rows = query(dsn, f'SELECT outcome, counts FROM "{schema_name}".load_run '
                      "ORDER BY id DESC LIMIT 1")
    if not rows:
        return None
    outcome, counts = rows[0]
    return outcome, json.loads(counts) if isinstance(counts, str) else counts


def tiles_of(dsn, schema_name):
    return sorted(r[0] for r in query(dsn, f'SELECT tileid FROM "{schema_name}".tile'))


def plan_lines(text):
    """``{TILEID: (ACTION, REASON)}`` from a printed plan."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^\s*(\d+)\s+([A-Z]+)\s+(.*)$", line)
        if m:
            out[int(m.group(1))] = (m.group(2), m.group(3))
    return out


def tiles_csv(prod):
    return os.path.join(prod, "spectro", "redux", "daily", "tiles-daily.csv")


def edit_tiles_csv(prod, func):
    """Rewrite tiles-daily.csv: ``func(header, rows) -> rows`` (rows as lists of str)."""
    path = tiles_csv(prod)
    with open(path) as f:
        lines = f.read().splitlines()
    header = lines[0].split(",")
    rows = func(header, [ln.split(",") for ln in lines[1:]])
    with open(path, "w") as f:
        f.write("\n".join([",".join(header)] + [",".join(r) for r in rows]) + "\n")


def rewrite_fiberassign(prod, tileid):
    """Change the content of a tile's fiberassign file (one header card), not its rows."""
    import fitsio
    from specprod_db.paths import Paths
    path = Paths.from_environment(mock_env(prod)).fiberassign_file(tileid)
    tmp = path + ".new.fits"
    with fitsio.FITS(path) as fin, fitsio.FITS(tmp, "rw", clobber=True) as fout:
        for hdu in fin:
            hdr = hdu.read_header()
            data = hdu.read()
            if hdu.get_extnum() == 0:
                hdr["REVISION"] = "test-rewrite"
                fout.write(data, header=hdr)
            else:
                fout.write(data, header=hdr, extname=hdu.get_extname())
    import gzip
    import shutil
    with open(tmp, "rb") as f, gzip.open(path, "wb") as g:
        shutil.copyfileobj(f, g)
    os.remove(tmp)


# --- tests -----------------------------------------------------------------------------

@pytest.mark.parametrize("ranks", [1, 3])
def test_incremental_equals_fresh(ranks, pg_dsn, schemas, copy_production, mpirun,
                                  tmp_path):
    from specprod_db.mock import advance_production
    prod = copy_production()
    inc = schemas()
    stage = tmp_path / "stage"
    load(mpirun, ranks, pg_dsn, inc, prod, stage)
    seen = set()
    days = [dict(new_tiles=2, reobserve=2),
            dict(new_tiles=1, reobserve=2, withdraw=True),
            dict(new_tiles=1, reobserve=1)]
    for day, kw in enumerate(days, start=2):
        s = advance_production(prod, **kw)
        if day == 4:  # a changed fiberassign file: full reload of that tile
            rewrite_fiberassign(prod, 1000)
        if ranks > 1:  # the plan is made by rank 0 alone: checked once, with 1 rank
            load(mpirun, ranks, pg_dsn, inc, prod, stage, "--max-delete-fraction", "0.5")
            continue
        plan = plan_lines(load(mpirun, 1, pg_dsn, inc, prod, stage, "--dry-run").stdout)
        for tid in s["new_tiles"]:
            assert plan[tid][0] in ("INSERT", "SKIP"), plan
        for tid in s["withdrawn"]:
            assert plan[tid] == ("DELETE", "EFFTIME_SPEC = 0.0"), plan
        if day == 4:
            assert plan[1000][0] == "UPDATE" and "fiberassign file changed" in plan[1000][1]
        seen |= {a for a, _ in plan.values()}
        load(mpirun, ranks, pg_dsn, inc, prod, stage, "--max-delete-fraction", "0.5")
        assert last_run(pg_dsn, inc)[0] == "ok"
    assert ranks > 1 or {"INSERT", "UPDATE", "DELETE"} <= seen
    fresh = schemas()
    load(mpirun, 1, pg_dsn, fresh, prod, tmp_path / "fresh")  # 1 rank == N ranks
    a, b = dump_schema(pg_dsn, inc), dump_schema(pg_dsn, fresh)
    assert a["tile"] and a["ztile"]
    for table in a:
        assert a[table] == b[table], f"table {table} differs"
    # UPDATEd tiles keep only the ztile rows of their current LASTNIGHT
    assert query(pg_dsn, f'SELECT count(*) FROM "{inc}".ztile z JOIN "{inc}".tile t '
                         "USING (tileid) WHERE z.lastnight <> t.lastnight")[0][0] == 0
    # nothing left behind in the stage directory
    assert not [f for f in os.listdir(stage) if f.endswith(".h5") or ".tmp-" in f]


def test_idempotent_plan_refresh(pg_dsn, schemas, copy_production, mpirun, tmp_path):
    from specprod_db.mock import advance_production
    prod = copy_production()
    name = schemas()
    stage = tmp_path / "stage"
    load(mpirun, 1, pg_dsn, name, prod, stage)
    s = advance_production(prod, new_tiles=1, reobserve=1)
    before = dump_schema(pg_dsn, name)
    nruns = query(pg_dsn, f'SELECT count(*) FROM "{name}".load_run')[0][0]
    state = query(pg_dsn, f'SELECT * FROM "{name}".tile_state ORDER BY tileid')
    # plan and --dry-run: same per-tile actions with reasons; nothing touched
    dry = load(mpirun, 1, pg_dsn, name, prod, stage, "--dry-run").stdout
    plan = load(mpirun, 1, pg_dsn, name, prod, stage, command="plan").stdout
    assert dry == plan
    actions = plan_lines(plan)
    for tid in s["new_tiles"]:
        assert actions[tid] == ("INSERT", "new tile")
    updated = [t for t in s["changed_tiles"] if t not in s["new_tiles"]]
    for tid in updated:
        action, reason = actions[tid]
        assert action == "UPDATE" and "LASTNIGHT" in reason and "redrock files changed" \
            in reason, actions
    assert dump_schema(pg_dsn, name) == before
    assert query(pg_dsn, f'SELECT count(*) FROM "{name}".load_run')[0][0] == nruns
    assert query(pg_dsn, f'SELECT * FROM "{name}".tile_state ORDER BY tileid') == state
    # load, then load again: the second run changes nothing and says so
    load(mpirun, 1, pg_dsn, name, prod, stage)
    after = dump_schema(pg_dsn, name)
    r = load(mpirun, 1, pg_dsn, name, prod, stage)
    assert "nothing to do" in r.stdout + r.stderr
    assert dump_schema(pg_dsn, name) == after
    assert not any(a in ("INSERT", "UPDATE", "DELETE", "REFRESH")
                   for a in last_run(pg_dsn, name)[1]["plan"])
    # only UPDATED moved: REFRESH, tile_state follows, nothing reloaded
    tid = s["new_tiles"][0]

    def bump(header, rows):
        i, u = header.index("TILEID"), header.index("UPDATED")
        for r in rows:
            if int(r[i]) == tid:
                r[u] = "2030-01-01T08:00:00-0800"
        return rows
    edit_tiles_csv(prod, bump)
    actions = plan_lines(load(mpirun, 1, pg_dsn, name, prod, stage, "--dry-run").stdout)
    assert actions[tid] == ("REFRESH", "only UPDATED moved")
    load(mpirun, 1, pg_dsn, name, prod, stage)
    assert dump_schema(pg_dsn, name) == after
    assert query(pg_dsn, f'SELECT updated FROM "{name}".tile_state WHERE tileid = %s',
                 (tid,))[0][0] == "2030-01-01T08:00:00-0800"
    r = load(mpirun, 1, pg_dsn, name, prod, stage)
    assert "nothing to do" in r.stdout + r.stderr


@pytest.mark.parametrize("ranks", [1, 3])
def test_touched_files_with_the_same_bytes_are_not_reloaded(ranks, pg_dsn, schemas,
                                                            copy_production, mpirun,
                                                            tmp_path):
    """Decision 2 with worker-side hashing: the planner sees new mtimes and plans an
    UPDATE; the worker finds the recorded contents and only the state is refreshed."""
    from specprod_db.load import fingerprints
    from specprod_db.extract import redshift, tile
    from specprod_db.mock import environment
    from specprod_db.paths import Paths
    prod = copy_production()
    name, stage = schemas(), tmp_path / "stage"
    load(mpirun, ranks, pg_dsn, name, prod, stage)
    before = dump_schema(pg_dsn, name)
    paths = Paths.from_environment(environment(prod))
    tid = tiles_of(pg_dsn, name)[0]
    lastnight = query(pg_dsn, f'SELECT lastnight FROM "{name}".tile WHERE tileid = %s',
                      (tid,))[0][0]
    for _, path in tile.fiberassign_files(paths, tid) + \
            redshift.redrock_files(paths, tid, lastnight):
        if path:
            os.utime(path, ns=(1_700_000_000_000_000_000,) * 2)
    actions = plan_lines(load(mpirun, 1, pg_dsn, name, prod, stage, command="plan").stdout)
    assert actions[tid][0] == "UPDATE" and "fiberassign file changed" in actions[tid][1]
    r = load(mpirun, ranks, pg_dsn, name, prod, stage)
    assert f"tile {tid}: inputs touched, same contents: state refreshed" in r.stdout + r.stderr
    assert dump_schema(pg_dsn, name) == before
    recorded = fingerprints.Fingerprint.from_text(query(
        pg_dsn, f'SELECT fiberassign_fingerprint FROM "{name}".tile_state WHERE '
                f'tileid = %s', (tid,))[0][0])
    assert {f.mtime_ns for f in recorded.files} == {1_700_000_000_000_000_000}
    r = load(mpirun, ranks, pg_dsn, name, prod, stage)
    assert "nothing to do" in r.stdout + r.stderr


def test_delete_guards(pg_dsn, schemas, copy_production, mpirun, tmp_path):
    prod = copy_production()
    name = schemas()
    stage = tmp_path / "stage"
    load(mpirun, 1, pg_dsn, name, prod, stage)
    loaded = tiles_of(pg_dsn, name)
    gone = 100  # the sv3 tile: its targets are on no other tile
    assert gone in loaded
    before = dump_schema(pg_dsn, name)
    photometry = {r[0] for r in query(pg_dsn, f'SELECT targetid FROM "{name}".target '
                                              "WHERE tileid = %s", (gone,))}
    edit_tiles_csv(prod, lambda h, rows: [r for r in rows if int(r[0]) != gone])
    plan = plan_lines(load(mpirun, 1, pg_dsn, name, prod, stage, "--dry-run").stdout)
    assert plan[gone] == ("DELETE", "no longer in the tiles file")
    # the guard still works: 1 delete > --max-delete-count 0 and >= 10 % of 5 loaded
    r = load(mpirun, 1, pg_dsn, name, prod, stage, "--max-delete-count", "0", check=False)
    assert r.returncode == 2 and "--allow-mass-delete" in r.stderr and str(gone) in r.stderr
    assert "1 of 5 loaded tiles" in r.stderr
    assert dump_schema(pg_dsn, name) == before
    # --no-delete: refused and reported
    r = load(mpirun, 1, pg_dsn, name, prod, stage, "--no-delete")
    assert re.search(rf"DELETE tile {gone}", r.stdout + r.stderr)
    assert "--no-delete" in r.stdout + r.stderr
    assert dump_schema(pg_dsn, name) == before
    # no flag: one withdrawn tile of five is not a mass delete (--max-delete-count 3);
    # every row of the tile goes, and the photometry only it referenced
    r = load(mpirun, 1, pg_dsn, name, prod, stage)
    assert r.returncode == 0 and last_run(pg_dsn, name)[0] == "ok"
    assert f"tile {gone} DELETED" in r.stdout + r.stderr
    assert gone not in tiles_of(pg_dsn, name)
    for table in ("exposure", "frame", "ztile", "fiberassign", "potential", "target"):
        assert query(pg_dsn, f'SELECT count(*) FROM "{name}".{table} WHERE tileid = %s',
                     (gone,))[0][0] == 0, table
    left = {r[0] for r in query(pg_dsn, f'SELECT targetid FROM "{name}".photometry '
                                        "WHERE targetid = ANY(%s)", (sorted(photometry),))}
    assert left == {r[0] for r in query(
        pg_dsn, f'SELECT targetid FROM "{name}".target WHERE targetid = ANY(%s)',
        (sorted(photometry),))}
    assert tile_state(pg_dsn, name)[gone][0] == "deleted"
    fresh = schemas()
    load(mpirun, 1, pg_dsn, fresh, prod, tmp_path / "fresh")
    assert dump_schema(pg_dsn, name) == dump_schema(pg_dsn, fresh)


DAMAGED = "tiles file damaged (1 bad lines): deletes suspended"
_damaged = {}


def _set_field(tileid, column, value):
    def edit(header, rows):
        i, k = header.index("TILEID"), header.index(column)
        for r in rows:
            if int(r[i]) == tileid:
                r[k] = value
        return rows
    return edit


def _cut_tiles_csv(prod, tileid):
    """Cut tiles-daily.csv one character into the line of ``tileid`` (no newline): that
    line and every later one are lost, and the TILEID of the cut line is unreadable."""
    path = tiles_csv(prod)
    with open(path) as f:
        text = f.read()
    start = text.index(f"\n{tileid},") + 1
    with open(path, "w") as f:
        f.write(text[:start + 1])
    return text[start + 1:]


def _damaged_load(pg_dsn, schemas, copy_production, mpirun, tmp_path):
    """Load the small production, then withdraw 1001 (EFFTIME_SPEC 0), change a column
    of 60000's line and cut the file inside the line of 40000 (40000 and 20000 lost).
    Returns the state before, the damaged run and the dry-run plan of the damaged file."""
    prod = copy_production()
    name = schemas()
    stage = tmp_path / "stage"
    load(mpirun, 1, pg_dsn, name, prod, stage)
    loaded = tiles_of(pg_dsn, name)
    edit_tiles_csv(prod, _set_field(1001, "EFFTIME_SPEC", "0.0"))
    edit_tiles_csv(prod, _set_field(60000, "GOALTIME", "1234.5"))
    with open(tiles_csv(prod)) as f:
        whole = f.read()
    _cut_tiles_csv(prod, 40000)
    with open(tiles_csv(prod)) as f:
        lost = {int(ln.split(",")[0]) for ln in whole.splitlines()[1:]} - {
            int(ln.split(",")[0]) for ln in f.read().splitlines()[1:-1]}
    before = dump_schema(pg_dsn, name)
    plan = plan_lines(load(mpirun, 1, pg_dsn, name, prod, stage, command="plan").stdout)
    r = load(mpirun, 1, pg_dsn, name, prod, stage, check=False)
    _damaged["returncode"] = r.returncode
    return dict(prod=prod, name=name, stage=stage, loaded=loaded, whole=whole, lost=lost,
                before=before, plan=plan, run=r)


def test_damaged_tiles_file_never_deletes(pg_dsn, schemas, copy_production, mpirun,
                                          tmp_path):
    d = _damaged_load(pg_dsn, schemas, copy_production, mpirun, tmp_path)
    prod, name, stage, r = d["prod"], d["name"], d["stage"], d["run"]
    out = r.stdout + r.stderr
    # what the damaged file would have deleted: the withdrawn tile and the loaded tiles
    # after the cut; each is SKIP with the reason, in the plan and in the load
    would_delete = {1001} | (set(d["lost"]) & set(d["loaded"]))
    assert {1001, 40000} <= would_delete and 1001 in d["loaded"]
    for tid in would_delete:
        assert d["plan"][tid] == ("SKIP", DAMAGED), d["plan"]
        assert f"tile {tid} not deleted" in out
    assert d["plan"][60000] == ("UPDATE", "changed: GOALTIME")
    assert "1 line(s) cannot be used" in out
    assert r.returncode != 2, out                 # not refused: the rest loads
    # nothing deleted; the well-formed changed line was loaded
    assert tiles_of(pg_dsn, name) == d["loaded"]
    after = dump_schema(pg_dsn, name)
    for table in after:
        if table != "tile":
            assert after[table] == d["before"][table], table
    assert query(pg_dsn, f'SELECT goaltime FROM "{name}".tile WHERE tileid = 60000'
                 )[0][0] == 1234.5
    assert {t: s[0] for t, s in tile_state(pg_dsn, name).items()} == {
        t: "loaded" for t in d["loaded"]}
    # the whole file again: the withdrawn tile is deleted, no flag needed
    with open(tiles_csv(prod), "w") as f:
        f.write(d["whole"])
    plan = plan_lines(load(mpirun, 1, pg_dsn, name, prod, stage, command="plan").stdout)
    assert plan[1001] == ("DELETE", "EFFTIME_SPEC = 0.0")
    assert not [t for t, (a, _) in plan.items() if a not in ("DELETE", "SKIP")
                and t != 1001 and a != "UNCHANGED"], plan
    r = load(mpirun, 1, pg_dsn, name, prod, stage)
    assert r.returncode == 0 and last_run(pg_dsn, name)[0] == "ok"
    assert "tile 1001 DELETED" in r.stdout + r.stderr
    assert tiles_of(pg_dsn, name) == sorted(set(d["loaded"]) - {1001})
    assert tile_state(pg_dsn, name)[1001][0] == "deleted"


def test_damaged_tiles_file_exits_1(pg_dsn, schemas, copy_production, mpirun, tmp_path):
    if "returncode" not in _damaged:  # run alone: make the damaged run here
        _damaged_load(pg_dsn, schemas, copy_production, mpirun, tmp_path)
    assert _damaged["returncode"] == 1


def test_second_load_refused_while_one_runs(pg_dsn, schemas, small_production, mpiexec,
                                            mpirun, tmp_path):
    prod = small_production[0]
    name = schemas()
    faults = tmp_path / "faults"
    faults.mkdir()
    env = mock_env(prod, SPECPROD_DB_DSN=pg_dsn, SPECPROD_DB_FAULT="pause:1000",
                   SPECPROD_DB_FAULT_DIR=str(faults))
    first = subprocess.Popen([mpiexec, "-n", "1", *CLI, "load", "--schema", name,
                              "--stage-dir", str(tmp_path / "s1")], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        end = time.time() + 120
        while not (faults / "paused-1000").exists():
            assert first.poll() is None, first.communicate()
            assert time.time() < end, "the first load never reached tile 1000"
            time.sleep(0.1)
        r = load(mpirun, 1, pg_dsn, name, prod, tmp_path / "s2", check=False)
        assert r.returncode == 2
        assert f"another load of schema {name} is running" in r.stderr
        run_id = query(pg_dsn, f'SELECT max(id) FROM "{name}".load_run')[0][0]
        assert re.search(rf"backend pid \d+ .*load run {run_id} started", r.stderr), r.stderr
        (faults / "resume-1000").touch()
        out, err = first.communicate(timeout=LOAD_TIMEOUT)
        assert first.returncode == 0, err
    finally:
        if first.poll() is None:
            os.killpg(first.pid, 9)
            first.communicate()
    assert last_run(pg_dsn, name)[0] == "ok"
    assert json.dumps(last_run(pg_dsn, name)[1]["plan"]) == '{"INSERT": 5, "SKIP": 1}'
