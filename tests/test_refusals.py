"""Refusals of a tile's rows in the inputs' terms, through real loads (1 and 3 ranks; 4
ranks with ``--writers 2``, the writer ranks' path): never a 38-digit composite id.

One damaged copy of the small production per rank count (module scope), two mornings:

1. tile 100: one row of a petal's redrock file twice (REDSHIFTS, FIBERMAP and TSNR2):
   a duplicate ``ztile.id``; tile 60000: a redrock TARGETID that is no target of its
   fiberassign file (no ``target`` row: the foreign key ``ztile.targetphotid``), both
   found before the COPY; tile 40000: one FRAMES row of its exposure twice in the
   exposures file (``frame_rows``).  Each fails naming what, where (TARGETID, petal,
   file; EXPID and camera, file); the other tiles load; exit 1.
2. tile 1000, loaded on morning 1, is re-reduced with a TARGETID of another tile in a
   petal file: an UPDATE that keeps its fiberassign rows, so only the database sees the
   missing target row; its refusal is decoded (TARGETID, petal, file); the tile keeps
   its rows.
"""
import os
import re
import secrets

import fitsio
import numpy as np
import pytest

from conftest import copy_mock, dump_schema, init, load, mock_env, query, run_mpi
from test_bad_input import rewrite_fits

from specprod_db import ids
from specprod_db.paths import Paths

DUP, FK, FRAME, LATER = 100, 60000, 40000, 1000


def _paths(prod):
    return Paths.from_environment(mock_env(prod))


def _night(paths, tileid):
    from specprod_db.extract import tile as T
    table, _, _ = T.read_tiles_file(paths.tiles())
    return [int(line["LASTNIGHT"]) for line in table if int(line["TILEID"]) == tileid][-1]


def _petal(paths, tileid, night):
    return next(p for p in range(10) if os.path.exists(paths.redrock_file(tileid, night, p)))


def _no_afterburners(paths, tileid, night, petal):
    """The petal's afterburner files go (row-matched to REDSHIFTS, they would fail the
    tile first): absent afterburners are not an error."""
    for prefix in ("emline", "qso_mgii", "qso_qn"):
        path = paths.redrock_file(tileid, night, petal, prefix=prefix)
        if os.path.exists(path):
            os.remove(path)


def duplicate_row(path):
    """Row k of REDSHIFTS, FIBERMAP and TSNR2 written twice; (TARGETID, k)."""
    tid = fitsio.read(path, ext="REDSHIFTS", columns=["TARGETID"])["TARGETID"]
    k = int(np.flatnonzero(ids.no_sky(tid))[2])

    def change(i, name, hdr, data):
        if name in ("REDSHIFTS", "FIBERMAP", "TSNR2"):
            data = np.concatenate([data[:k + 1], data[k:]])
        return hdr, data
    rewrite_fits(path, change)
    return int(tid[k]), k


def replace_targetid(path, new):
    """One kept row's TARGETID becomes ``new`` in REDSHIFTS, FIBERMAP and TSNR2; its row."""
    tid = fitsio.read(path, ext="REDSHIFTS", columns=["TARGETID"])["TARGETID"]
    k = int(np.flatnonzero(ids.no_sky(tid))[1])

    def change(i, name, hdr, data):
        if name in ("REDSHIFTS", "FIBERMAP", "TSNR2"):
            data = data.copy()
            data["TARGETID"][k] = new
        return hdr, data
    rewrite_fits(path, change)
    return k


def foreign_targetid(paths, tileid, other):
    """A TARGETID of tile ``other``'s fiberassign TARGETS that tile ``tileid``'s lacks."""
    mine = set(fitsio.read(paths.fiberassign_file(tileid), ext="TARGETS",
                           columns=["TARGETID"])["TARGETID"].tolist())
    theirs = fitsio.read(paths.fiberassign_file(other), ext="TARGETS",
                         columns=["TARGETID"])["TARGETID"]
    return int(next(t for t in theirs if ids.no_sky(t) and int(t) not in mine))


def duplicate_frame(paths, tileid):
    """The first FRAMES row of the tile's first exposure written twice; (EXPID, camera)."""
    out = {}

    def change(i, name, hdr, data):
        if name == "FRAMES":
            k = int(np.flatnonzero(data["TILEID"] == tileid)[0])
            out["key"] = (int(data["EXPID"][k]), str(data["CAMERA"][k]).strip())
            data = np.concatenate([data[:k + 1], data[k:]])
        return hdr, data
    rewrite_fits(paths.exposures(), change)
    return out["key"]


def _state(dsn, name):
    return {t: (s, e) for t, s, e in query(
        dsn, f'SELECT tileid, status, error FROM "{name}".tile_state')}


@pytest.fixture(scope="module", params=[(1, ()), (3, ()), (4, ("--writers", "2"))],
                ids=["1rank", "3ranks", "4ranks-2writers"])
def mornings(request, pg_dsn, small_production, mpiexec, tmp_path_factory):
    ranks, extra = request.param
    base = tmp_path_factory.mktemp(f"refusals{ranks}")
    prod = copy_mock(small_production[0], base / "production")
    paths = _paths(prod)
    name = "test_" + secrets.token_hex(4)
    init(pg_dsn, name)

    def mpirun(n, argv, **kw):
        return run_mpi(mpiexec, n, argv, **kw)
    try:
        one = {}
        night = _night(paths, DUP)
        petal = _petal(paths, DUP, night)
        one["dup"] = (petal, paths.redrock_file(DUP, night, petal),
                      *duplicate_row(paths.redrock_file(DUP, night, petal)))
        _no_afterburners(paths, DUP, night, petal)
        night = _night(paths, FK)
        petal = _petal(paths, FK, night)
        new = foreign_targetid(paths, FK, LATER)
        one["fk"] = (petal, paths.redrock_file(FK, night, petal), new,
                     replace_targetid(paths.redrock_file(FK, night, petal), new))
        _no_afterburners(paths, FK, night, petal)
        one["frame"] = duplicate_frame(paths, FRAME)
        r = load(mpirun, ranks, pg_dsn, name, prod, base / "stage", *extra, check=False)
        one.update(returncode=r.returncode, stdout=r.stdout, log=r.stdout + r.stderr,
                   state=_state(pg_dsn, name))
        before = dump_schema(pg_dsn, name)

        two = {}
        night = _night(paths, LATER)
        petal = _petal(paths, LATER, night)
        new = foreign_targetid(paths, LATER, 1001)
        two["fk"] = (petal, paths.redrock_file(LATER, night, petal), new,
                     replace_targetid(paths.redrock_file(LATER, night, petal), new))
        _no_afterburners(paths, LATER, night, petal)
        r = load(mpirun, ranks, pg_dsn, name, prod, base / "stage", *extra, check=False)
        two.update(returncode=r.returncode, stdout=r.stdout, log=r.stdout + r.stderr,
                   state=_state(pg_dsn, name), before=before, after=dump_schema(pg_dsn, name))
        yield one, two
    finally:
        query(pg_dsn, f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def _no_composite_id(text):
    assert not re.search(r"\d{30,}", text), text


def test_duplicate_targetid_in_a_redrock_file(mornings):
    one, _ = mornings
    petal, path, targetid, row = one["dup"]
    assert one["returncode"] == 1, one["log"][-3000:]
    status, error = one["state"][DUP]
    assert status == "failed", error
    assert f"ztile: TARGETID {targetid} " in error and "more than once" in error
    assert f"petal {petal} ({path}, REDSHIFTS rows {row} and {row + 1})" in error
    _no_composite_id(error)
    assert error in one["stdout"]   # the run's report names it too


def test_redrock_targetid_not_in_the_fiberassign_file(mornings, pg_dsn):
    one, _ = mornings
    petal, path, targetid, row = one["fk"]
    status, error = one["state"][FK]
    assert status == "failed", error
    assert f"ztile: TARGETID {targetid} of petal {petal} ({path}, REDSHIFTS row {row})" \
        in error
    assert "is not a target of" in error and "fiberassign-060000.fits" in error
    _no_composite_id(error)


def test_duplicate_frame_in_the_exposures_file(mornings):
    one, _ = mornings
    expid, camera = one["frame"]
    status, error = one["state"][FRAME]
    assert status == "failed", error
    assert f"EXPID {expid} camera {camera} (2 rows)" in error, error
    assert "exposures-daily.fits" in error and "FRAMES" in error


def test_the_other_tiles_load(mornings):
    one, _ = mornings
    assert {t for t, (s, _) in one["state"].items() if s == "loaded"} == {1000, 1001}


def test_database_refusal_of_an_update_is_decoded(mornings):
    """The target rows of an UPDATE that keeps the fiberassign file are the database's:
    only the foreign key sees the TARGETID, and its refusal names TARGETID, petal, file."""
    _, two = mornings
    petal, path, targetid, row = two["fk"]
    assert two["returncode"] == 1, two["log"][-3000:]
    status, error = two["state"][LATER]
    assert status == "failed", error
    assert f"ztile: TARGETID {targetid} (SURVEY main) of petal {petal} ({path}, REDSHIFTS " \
           f"row {row}) has no row in target" in error, error
    assert "ztile_targetphotid_fkey" in error and "fiberassign-001000.fits" in error
    _no_composite_id(error)
    # the tile keeps what it had (and no other tile changed: nothing was written)
    assert two["after"] == two["before"]


def test_two_word_keys_sorted_by_their_words():
    """_first_duplicate and _isin on composite ids (two uint64 words), at random against
    the plain definition."""
    import numpy as np
    from specprod_db.load import refusals
    rng = np.random.default_rng(7)
    dt = [("high", "<u8"), ("low", "<u8")]
    for _ in range(200):
        keys, have = (np.zeros(int(n), dt) for n in rng.integers(0, 30, 2))
        for a in (keys, have):
            a["high"], a["low"] = rng.integers(0, 3, len(a)), rng.integers(0, 4, len(a))
        pairs = set(map(tuple, have.tolist()))
        assert refusals._isin(keys, have).tolist() == [tuple(k) in pairs
                                                       for k in keys.tolist()]
        twice = refusals._first_duplicate(keys)
        if twice is None:
            assert len(set(map(tuple, keys.tolist()))) == len(keys)
        else:
            i, j = twice
            assert i != j and keys[i].tolist() == keys[j].tolist()
            # the first duplicate in sorted order, as before
            dups = sorted(k for k in set(map(tuple, keys.tolist()))
                          if keys.tolist().count(k) > 1)
            assert tuple(keys[i].tolist()) == dups[0]
