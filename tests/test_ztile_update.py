"""A tile's redrock files through real loads (1 and 3 ranks): DESINAME, a LASTNIGHT
directory holding another tile's files, a petal gone from a re-reduced tile.

One sequence per rank count (module scope), on a private copy of the small production:

1. one petal of a tile carries a FIBERMAP DESINAME column (as files written since Jura
   do) with two wrong names (desispec#2238): the load exits 0, stores the computed
   names, and counts ``warnings.desiname_mismatch`` = 2 with one log line naming the
   tile and an example;
2. then, for the next morning: tile A's LASTNIGHT directory holds only tile B's files
   (issue 20: a copy made by mistake), and one petal of tile Y (the mock's tile that
   never had petal 3) is gone.  The load exits 1 naming A and its directory; every row
   of A is as before (its transaction is not written); Y loads what is there now, its
   lost petal named and counted (``warnings.petals_lost`` = 1), the petal it never had
   not counted.
"""
import json
import os
import secrets
import shutil

import fitsio
import numpy as np
import pytest
from desiutil.names import radec_to_desiname

from conftest import copy_mock, dump_schema, init, load, mock_env, query
from specprod_db import ids
from specprod_db.paths import Paths

WRONG = b"DESI J999.9999+99.9999"


def _paths(prod):
    return Paths.from_environment(mock_env(prod))


def _last_run(dsn, name):
    outcome, counts = query(dsn, f'SELECT outcome, counts FROM "{name}".load_run '
                                 "ORDER BY id DESC LIMIT 1")[0]
    return outcome, json.loads(counts) if isinstance(counts, str) else counts


def add_wrong_desiname(path):
    """A FIBERMAP DESINAME column, right but for two loaded rows; their TARGETIDs."""
    from numpy.lib import recfunctions
    with fitsio.FITS(path) as fx:
        hdus = [(h.get_extname(), h.read_header(), h.read()) for h in fx]
    bad = []
    tmp = path + ".tmp"
    with fitsio.FITS(tmp, "rw", clobber=True) as f:
        for i, (name, hdr, data) in enumerate(hdus):
            if name == "FIBERMAP":
                names = radec_to_desiname(data["TARGET_RA"], data["TARGET_DEC"]).astype("S22")
                rows = np.flatnonzero(ids.no_sky(data["TARGETID"]))[[1, 4]]
                names[rows] = WRONG
                bad = data["TARGETID"][rows].tolist()
                data = recfunctions.append_fields(data, "DESINAME", names, dtypes="S22",
                                                  usemask=False)
            if i == 0:
                f.write(None, header=hdr)
            else:
                f.write(data, header=hdr, extname=name)
    os.replace(tmp, path)
    return bad


def _ztile(dsn, name, tileid):
    return query(dsn, f'SELECT * FROM "{name}".ztile WHERE tileid = %s ORDER BY id',
                 (tileid,))


def _petal_rows(dsn, name, tileid):
    """``{petal: ztile rows}`` of a tile (petal from its fiberassign rows)."""
    return dict(query(dsn, f'SELECT f.petal_loc, count(*) FROM "{name}".ztile z JOIN '
                           f'"{name}".fiberassign f USING (tileid, targetid) WHERE '
                           "z.tileid = %s GROUP BY 1", (tileid,)))


@pytest.fixture(scope="module", params=[1, 3], ids=["1rank", "3ranks"])
def runs(request, pg_dsn, small_production, mpiexec, tmp_path_factory):
    from conftest import run_mpi
    ranks = request.param
    base = tmp_path_factory.mktemp(f"ztile{ranks}")
    prod = copy_mock(small_production[0], base / "production")
    special = small_production[1]["special"]
    y = special["missing_petal"]
    name = "test_" + secrets.token_hex(4)
    init(pg_dsn, name)

    def mpirun(n, argv, **kw):
        return run_mpi(mpiexec, n, argv, **kw)
    try:
        paths = _paths(prod)
        # morning 1: a tile whose petal file has a DESINAME column with two wrong names
        tiles = small_production[1]["tiles"]
        nights = {}
        from specprod_db.extract import tile as T
        table, _, _ = T.read_tiles_file(paths.tiles())
        for line in table:                      # the last line of a tile wins (mock)
            nights[int(line["TILEID"])] = int(line["LASTNIGHT"])
        loaded = [t for t in tiles if os.path.isdir(paths.cumulative_dir(t, nights[t]))
                  and t != special["efftime_zero"]]
        x = next(t for t in loaded if t != y)
        petal_x = next(p for p in range(10)
                       if os.path.exists(paths.redrock_file(x, nights[x], p)))
        wrong = add_wrong_desiname(paths.redrock_file(x, nights[x], petal_x))
        first = load(mpirun, ranks, pg_dsn, name, prod, base / "stage")
        one = dict(log=first.stdout + first.stderr, run=_last_run(pg_dsn, name),
                   x=x, petal_x=petal_x, wrong=wrong)
        one["desiname"] = dict(query(pg_dsn, f'SELECT targetid, desiname FROM "{name}".ztile '
                                             "WHERE tileid = %s", (x,)))
        before = dump_schema(pg_dsn, name)
        petals_y = _petal_rows(pg_dsn, name, y)

        # morning 2: A's directory holds only B's files; a petal of Y is gone
        a, b = [t for t in loaded if t not in (x, y)][:2]
        dst, src = paths.cumulative_dir(a, nights[a]), paths.cumulative_dir(b, nights[b])
        held = sorted(os.listdir(dst))
        for n in held:
            os.remove(os.path.join(dst, n))
        for n in os.listdir(src):
            shutil.copy2(os.path.join(src, n), dst)
        lost = max(petals_y)
        for n in os.listdir(paths.cumulative_dir(y, nights[y])):
            if f"-{lost}-{y}-thru" in n:
                os.remove(os.path.join(paths.cumulative_dir(y, nights[y]), n))
        second = load(mpirun, ranks, pg_dsn, name, prod, base / "stage", check=False)
        two = dict(returncode=second.returncode, stdout=second.stdout,
                   log=second.stdout + second.stderr, run=_last_run(pg_dsn, name),
                   a=a, b=b, dir_a=dst, y=y, lost=lost, petals_y=petals_y,
                   state=dict((t, (s, e)) for t, s, e in query(
                       pg_dsn, f'SELECT tileid, status, error FROM "{name}".tile_state')),
                   before=before, after=dump_schema(pg_dsn, name),
                   petals_y_after=_petal_rows(pg_dsn, name, y))
        yield one, two
    finally:
        query(pg_dsn, f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def test_desiname_computed_and_mismatch_counted(runs):
    one, _ = runs
    outcome, counts = one["run"]
    assert outcome == "ok"
    assert counts["warnings"]["desiname_mismatch"] == 2
    lines = [l for l in one["log"].splitlines() if "FIBERMAP DESINAME differs" in l]
    assert len(lines) == 1, one["log"][-3000:]
    assert f"tile {one['x']}: 2 row(s) whose FIBERMAP DESINAME differs" in lines[0]
    assert (f"e.g. TARGETID {one['wrong'][0]} in redrock-{one['petal_x']}-{one['x']}-"
            f"thru") in lines[0] and WRONG.decode() in lines[0]
    names = one["desiname"]
    assert all(names[t] != WRONG.decode() and names[t].startswith("DESI J")
               for t in one["wrong"])


def test_directory_of_another_tile_fails_and_keeps_the_rows(runs):
    _, two = runs
    a, b = two["a"], two["b"]
    assert two["returncode"] == 1, two["log"][-3000:]
    message = (f"tile {a}: no redrock or zbest file of tile {a} in {two['dir_a']}: it holds")
    assert message in two["stdout"], two["stdout"][-3000:]
    assert f"petal files of tile(s) {b}" in two["log"]
    status, error = two["state"][a]
    assert status == "failed" and message in error
    assert two["run"][0] == "failed" and message in two["run"][1]["failed"][str(a)]
    # nothing of A changed (but the primary flags of TARGETIDs it shares with Y, whose
    # rows changed)
    for table, rows in two["before"].items():
        names = _columns(table)
        if "tileid" not in names:
            continue
        k = names.index("tileid")
        keep = [i for i, c in enumerate(names) if not c.endswith(("_primary", "_nspec"))]

        def of_a(rows):
            return [tuple(r[i] for i in keep) for r in rows if r[k] == a]
        assert of_a(rows) and of_a(rows) == of_a(two["after"][table]), table
    assert sum(two["petals_y"].values()) > 0


def test_lost_petal_warned_and_counted(runs):
    _, two = runs
    y, lost = two["y"], two["lost"]
    assert 3 not in two["petals_y"]                    # the mock's tile without petal 3
    assert two["petals_y_after"] == {p: n for p, n in two["petals_y"].items() if p != lost}
    assert two["state"][y][0] == "loaded"
    assert two["run"][1]["warnings"]["petals_lost"] == 1
    lines = [l for l in two["log"].splitlines() if "loaded before have no redrock" in l]
    assert len(lines) == 1 and f"tile {y}: petal(s) {lost} loaded before" in lines[0], \
        two["log"][-3000:]


def _columns(table):
    from specprod_db import schema
    return list(schema.table(table).names)
