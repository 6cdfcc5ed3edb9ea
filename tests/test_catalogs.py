"""Targeting catalogs read once per wave (specprod_db.load.catalogs): a wave of overlapping
tiles opens each catalog file exactly once, and every tile's rows are those of
targetphot_onetile (itself checked against desispec's gather_targetphot in
test_targetphot.py); the stages are reused by a rerun; a load reports the files it
opened and the reads it saved."""
import collections
import dataclasses
import json

import fitsio
import numpy as np
import pytest

from specprod_db.load import catalogs, tasks
from specprod_db.load.jobs import TargetphotJob
from specprod_db.extract import ecsv
from specprod_db.extract import targetphot as tp
from specprod_db.paths import Paths

import test_targetphot
import test_writer
from conftest import init, load, mock_env, query
from test_targetphot import mock_tile_inputs

tile = test_targetphot.tile   # fixtures: the hand-made tile, a planned Run
run = test_writer.run


@pytest.fixture
def opened(monkeypatch):
    """Every catalog file opened (fitsio.FITS, specprod_db.extract.ecsv.read) and every catalog
    header read (fitsio.read_header), in order (fiberassign files aside); the
    per-process caches emptied first."""
    tp._TARGETID_CACHE.clear()
    tp._NSIDE_CACHE.clear()
    log = {"files": [], "headers": []}
    fits, read, header = fitsio.FITS, ecsv.read, fitsio.read_header

    def fits_open(path, *args, **kwargs):
        _log(log["files"], path)
        return fits(path, *args, **kwargs)

    def ecsv_read(path, *args, **kwargs):
        _log(log["files"], path)
        return read(path, *args, **kwargs)

    def read_header(path, *args, **kwargs):
        _log(log["headers"], path)
        return header(path, *args, **kwargs)
    monkeypatch.setattr(fitsio, "FITS", fits_open)
    monkeypatch.setattr(ecsv, "read", ecsv_read)
    monkeypatch.setattr(fitsio, "read_header", read_header)
    return log


def _log(where, path):
    if "/fiberassign/" not in str(path):
        where.append(str(path))


def _wave(paths, tileids, stage_dir):
    """Plan the tiles, run the wave's catalog tasks here: (tiles, jobs, pairs, found)."""
    tiles = []
    for tileid in tileids:
        header, targets = mock_tile_inputs(paths, tileid)
        stats = {}
        plan = tp.catalog_plan(tileid, header, targets, paths, stats)
        tiles.append((tileid, header, targets, plan))
    jobs, pairs = catalogs.catalog_jobs(
        [(plan, np.unique(t["TARGETID"])) for _, _, t, plan in tiles], str(stage_dir))
    found = {job.path: catalogs.staged(job, catalogs.read_catalog_task(job))
             for job in jobs}
    return tiles, jobs, pairs, found


def test_a_wave_opens_each_catalog_file_once(small_production, tmp_path, opened):
    prod, summary = small_production
    paths = Paths.from_environment(mock_env(prod))
    tileids = [t for t in summary["tiles"] if tp.catalog_paths(
        fitsio.read_header(paths.fiberassign_file(t), 0), paths, t)]
    del opened["headers"][:]
    tiles, jobs, pairs, found = _wave(paths, tileids, tmp_path)
    files = [job.path for job in jobs]
    assert len(tiles) >= 4 and pairs > len(files)     # the tiles share catalog files
    assert collections.Counter(opened["files"]) == collections.Counter(files)
    assert all(n == 1 for n in collections.Counter(opened["files"]).values())
    # planning reads FILENSID once per primary directory, not once per tile
    dirs = {e["path"] for _, _, _, plan in tiles for e in plan if e["kind"] == "dir"}
    assert len(opened["headers"]) == len(dirs)
    assert any(any(e["kind"] == "ecsv" for e in plan) for *_, plan in tiles)

    reads = 0
    for tileid, header, targets, plan in tiles:
        grouped_stats = {}
        grouped = tp.assemble(tileid, plan, targets,
                              catalogs.stage_reader(found, f"tile {tileid}"), grouped_stats)
        ref_stats = {}
        ref = tp.targetphot_onetile(tileid, header, targets, paths, ref_stats)
        assert grouped.tobytes() == ref.tobytes(), tileid
        assert grouped_stats == {k: v for k, v in ref_stats.items()
                                 if k != "missing_catalogs"}, tileid
        reads += ref_stats["files_read"]
    assert reads > len(files)       # what the tiles opened one by one

    # the same wave again (a rerun): every catalog stage reused, no file opened
    del opened["files"][:]
    for job in jobs:
        assert catalogs.read_catalog_task(job).reused
    assert opened["files"] == []


def test_grouped_rows_equal_onetile_on_edge_cases(tile, tmp_path):
    """The hand-made tile of test_targetphot (ToO before primary before secondary, a
    target found only in the secondary catalog, NaN RA/Dec, one found nowhere), through
    the catalog tasks and a wanted set wider than the tile's (another tile's targets)."""
    paths, header, targets = tile
    stats = {}
    plan = tp.catalog_plan(1234, header, targets, paths, stats)
    other = np.arange(1, 50, dtype=np.int64)
    jobs, _ = catalogs.catalog_jobs([(plan, np.unique(targets["TARGETID"])),
                                     (plan, other)], str(tmp_path))
    found = {job.path: catalogs.staged(job, catalogs.read_catalog_task(job))
             for job in jobs}
    grouped = tp.assemble(1234, plan, targets, catalogs.stage_reader(found, "tile 1234"),
                          stats)
    ref_stats = {}
    ref = tp.targetphot_onetile(1234, header, targets, paths, ref_stats)
    assert grouped.tobytes() == ref.tobytes()
    assert stats == ref_stats and stats["nan_radec"] == 1 and stats["not_found"] == 1


def test_a_failed_catalog_fails_only_the_tiles_that_reach_it(tile, tmp_path):
    paths, header, targets = tile
    plan = tp.catalog_plan(1234, header, targets, paths, {})
    jobs, _ = catalogs.catalog_jobs([(plan, np.unique(targets["TARGETID"]))], str(tmp_path))
    found = {job.path: catalogs.staged(job, catalogs.read_catalog_task(job))
             for job in jobs}
    last = plan[-1]["path"]               # the secondary catalog, read last
    found[last] = {"error": f"cannot read targeting catalog {last}: broken",
                   "internal": False}
    with pytest.raises(tp.InputError, match=r"^tile 1234: cannot read targeting catalog"):
        tp.assemble(1234, plan, targets, catalogs.stage_reader(found, "tile 1234"))
    # a tile whose targets are all found before that catalog never reaches it
    early = targets[np.isin(targets["TARGETID"], [1, 2, 3])]
    ref = tp.targetphot_onetile(1234, header, early, paths)
    got = tp.assemble(1234, plan, early, catalogs.stage_reader(found, "tile 1234"))
    assert got.tobytes() == ref.tobytes()


def test_tile_stage_pending_then_assembled(run):
    """A tile task of a wave stages the tile without its targeting rows (a rerun after a
    crash before its assembly reuses it as such); assembled, the stage file holds the
    rows a tile task run alone stages."""
    action = next(a for a in run.actions if a.tileid == 1000)
    job = run.tile_job(action, wave=True)   # as the load's waves run it
    first = tasks.extract_tile(job)
    assert first.catalogs and first.brick_input is None and not first.reused
    assert "target" not in first.stage.tables()
    again = tasks.extract_tile(job)
    assert again.reused and again.catalogs == first.catalogs
    jobs, _ = catalogs.catalog_jobs([(again.catalogs, again.want)], run.stage_dir)
    found = {j.path: catalogs.staged(j, catalogs.read_catalog_task(j)) for j in jobs}
    done = tasks.assemble_targetphot(TargetphotJob(1000, again.stage, found))
    assert done.catalogs is None and done.stage.path == first.stage.path
    grouped = done.stage.tables()
    reused = tasks.extract_tile(job)             # complete now: reused whole
    assert reused.reused and reused.catalogs is None
    assert np.array_equal(reused.brick_input, done.brick_input)
    done.stage.remove()
    alone = dataclasses.replace(job, wave=False)
    whole = tasks.extract_tile(alone)
    assert whole.catalogs is None and not whole.reused
    assert np.array_equal(whole.targetids, done.targetids)
    assert np.array_equal(whole.brick_input, done.brick_input)
    assert whole.stats == done.stats
    tables = whole.stage.tables()
    assert sorted(tables) == sorted(grouped)
    for name in tables:
        assert tables[name].tobytes() == grouped[name].tobytes(), name


@pytest.mark.parametrize("ranks", [1, 3])
def test_load_counts_catalog_files_opened(ranks, pg_dsn, schema_name, small_production,
                                          mpirun, tmp_path):
    """A load in one wave opens each catalog file its tiles name once, and says how
    many reads tile by tile that saved."""
    prod, summary = small_production
    init(pg_dsn, schema_name)
    load(mpirun, ranks, pg_dsn, schema_name, prod, tmp_path / "stage", check=False)
    counts = query(pg_dsn, f'SELECT counts FROM "{schema_name}".load_run')[0][0]
    c = (json.loads(counts) if isinstance(counts, str) else counts)["catalogs"]
    paths = Paths.from_environment(mock_env(prod))
    files = set()
    for (tileid,) in query(pg_dsn, f'SELECT tileid FROM "{schema_name}".target '
                                   'GROUP BY tileid'):
        header, targets = mock_tile_inputs(paths, tileid)
        plan = tp.catalog_plan(tileid, header, targets, paths, {})
        files |= {f for f, _ in tp.plan_files(plan)}
    assert c["files_opened"] == len(files)
    assert c["tile_reads"] > c["files_opened"]
    assert c["reads_saved"] == c["tile_reads"] - c["files_opened"]
    assert not list((tmp_path / "stage").glob("catalog-*.h5"))
