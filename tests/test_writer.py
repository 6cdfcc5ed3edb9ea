"""The writer's transaction boundaries and the tasks' stage-file reuse, in process (no
CLI, no MPI): a tile is all or nothing, photometry included; a stage file is reused only
for the same inputs, and never when a brick in it failed."""
import dataclasses
import os
from dataclasses import dataclass

import numpy as np
import psycopg2
import pytest

from specprod_db import schema

from specprod_db.db import ddl

from specprod_db.db.connect import connect
from specprod_db.db.sql import transaction
from specprod_db.load import tasks, tile_writer
from specprod_db.mock import environment
from specprod_db.paths import Paths
from specprod_db.load import prepare, waves
from specprod_db.load.prepare import Options
from specprod_db.load.tally import Tally
from specprod_db.load.plan import INSERT

from test_failures import orphan_photometry


@pytest.fixture
def run(pg_dsn, schema_name, copy_production, tmp_path):
    """A planned (not yet extracted) Run of a copy of the small production on a fresh
    schema."""
    conn = connect(pg_dsn)
    ddl.create_schema(conn, schema_name)
    conn.close()
    paths = Paths.from_environment(environment(copy_production()))
    opts = Options(schema=schema_name, paths=paths, dsn=pg_dsn,
                   stage_dir=str(tmp_path / "stage"))
    session = prepare.open_session(opts)
    plan = prepare.plan_run(session.conn, opts, Tally())
    prepare.begin(session, opts, plan, 1)
    yield Planned(opts, session, plan)
    session.close()


@dataclass
class Planned:
    """A planned run's values, as the root holds them before its waves."""
    opts: Options
    session: prepare.Session
    plan: prepare.Plan

    @property
    def conn(self):
        return self.session.conn

    @property
    def run_id(self):
        return self.session.run_id

    @property
    def stage_dir(self):
        return self.session.stage_dir

    @property
    def actions(self):
        return self.plan.actions

    def tile_job(self, action, wave=False):
        return waves.tile_job(action, self.opts, self.session, self.plan, wave)


def _extract(run, tileid):
    action = next(a for a in run.actions if a.tileid == tileid)
    return action, tasks.extract_tile(run.tile_job(action))


def _count(conn, schema_name, table, tileid=None):
    with conn.cursor() as cur:
        where = "" if tileid is None else f" WHERE tileid = {int(tileid)}"
        cur.execute(f'SELECT count(*) FROM "{schema_name}".{table}{where}')
        n = cur.fetchone()[0]
    conn.rollback()
    return n


def test_a_tile_is_all_or_nothing(run, pg_dsn):
    conn, name = run.conn, run.opts.schema
    action, result = _extract(run, 100)
    assert action.action == INSERT
    tables = result.stage.tables()
    targeting = tables.pop("photometry")
    bad = targeting[:1].copy()
    bad["targetid"] = targeting["targetid"][0]
    bad["morphtype"] = b"P\x00S"  # PostgreSQL refuses NUL in text
    with pytest.raises(psycopg2.DataError):
        tile_writer.write_tile(conn, name, action, tables, result.state, run.run_id,
                          [bad, targeting])
    for table in [t.name for t in schema.tile_tables()]:
        assert _count(conn, name, table, 100) == 0, table
    assert _count(conn, name, "photometry") == 0
    assert _count(conn, name, "tile_state") == 0

    counts = tile_writer.write_tile(conn, name, action, tables, result.state, run.run_id,
                               [targeting])
    assert counts["photometry"] == len(np.unique(targeting["targetid"]))
    for table in ("tile", "exposure", "frame", "fiberassign", "potential", "target",
                  "ztile"):
        assert _count(conn, name, table, 100) == counts[table] == len(tables[table])
    # written again (a full UPDATE): the same rows, photometry kept, none orphaned
    again = tile_writer.write_tile(conn, name, action, tables, result.state, run.run_id,
                              [targeting])
    assert again["photometry_deleted"] == 0 and again["photometry"] == 0
    assert orphan_photometry(pg_dsn, name) == 0
    # DELETE: every row of the tile and the photometry only it referenced
    gone = tile_writer.delete_tile(conn, name, action, run.run_id)
    assert gone["photometry"] == counts["photometry"]
    for table in ("tile", "exposure", "frame", "fiberassign", "potential", "target",
                  "ztile", "photometry"):
        assert _count(conn, name, table) == 0, table


def test_keep_protects_photometry_of_the_runs_other_tiles(run, pg_dsn):
    conn, name = run.conn, run.opts.schema
    action, result = _extract(run, 100)
    tables = result.stage.tables()
    targeting = tables.pop("photometry")
    tile_writer.write_tile(conn, name, action, tables, result.state, run.run_id, [targeting])
    keep = tile_writer.keep_targetids(conn)
    tile_writer.keep_more(conn, keep, result.targetids[:5])
    tile_writer.keep_more(conn, keep, result.targetids[3:10])  # overlapping: no duplicate
    counts = tile_writer.delete_tile(conn, name, action, run.run_id, keep)
    assert _count(conn, name, "photometry") == 10
    assert counts["photometry"] == len(np.unique(targeting["targetid"])) - 10


def test_photometry_a_catalog_references_is_kept(run):
    """A table outside the schema's layout (a VAC) with a foreign key to photometry: a
    DELETE keeps the photometry rows it references, and goes through."""
    conn, name = run.conn, run.opts.schema
    action, result = _extract(run, 100)
    tables = result.stage.tables()
    targeting = tables.pop("photometry")
    tile_writer.write_tile(conn, name, action, tables, result.state, run.run_id, [targeting])
    with transaction(conn) as cur:
        cur.execute(f'CREATE TABLE "{name}".vac_x (targetid bigint PRIMARY KEY '
                    f'REFERENCES "{name}".photometry (targetid))')
        cur.execute(f'INSERT INTO "{name}".vac_x VALUES (%s), (%s)',
                    (int(result.targetids[0]), int(result.targetids[1])))
        assert ("vac_x", "targetid") in tile_writer.photometry_references(cur, name)
    tile_writer.delete_tile(conn, name, action, run.run_id)
    assert _count(conn, name, "photometry") == 2


def test_tile_stage_file_reused_only_for_the_same_inputs(run):
    action, first = _extract(run, 1000)
    assert not first.reused and os.path.exists(first.stage.path)
    _, second = _extract(run, 1000)
    assert second.reused and second.state == first.state
    assert np.array_equal(second.targetids, first.targetids)
    assert np.array_equal(second.brick_input, first.brick_input)
    # another plan line (e.g. a new LASTNIGHT or any column): extracted again
    job = run.tile_job(action)
    job.action = dataclasses.replace(action, line=dict(action.line,
                                                       GOALTIME=action.line["GOALTIME"] + 1))
    assert not tasks.extract_tile(job).reused


def test_brick_group_with_a_failed_brick_is_never_reused(run, tmp_path):
    results = [_extract(run, t)[1] for t in (100, 1000)]
    from specprod_db.load import bricks
    jobs, _ = bricks.brick_jobs(run.conn, run.opts.schema, run.opts.paths, run.stage_dir,
                                results)
    job = jobs[0]
    ok = tasks.extract_brick(job)
    assert not ok.reused and not ok.failed
    assert tasks.extract_brick(job).reused
    # a tractor file of the group goes missing: the brick fails, the group is rewritten
    brick = job.targets["BRICKNAME"][0].decode()
    moved = []
    for region in ("north", "south"):
        path = run.opts.paths.tractor_file(region, brick)
        if os.path.exists(path):
            os.rename(path, path + ".away")
            moved.append(path)
    try:
        failed = tasks.extract_brick(job)
        assert not failed.reused and brick in failed.failed
        again = tasks.extract_brick(job)
        assert not again.reused and brick in again.failed  # not cached as complete
    finally:
        for path in moved:
            os.rename(path + ".away", path)
    repaired = tasks.extract_brick(job)
    assert not repaired.reused and not repaired.failed


def test_concurrent_photometry_upserts_never_deadlock(pg_dsn, schema_name):
    """Two sessions upserting overlapping TARGETID sets, in opposite orders, each in its
    own transaction held open for a while: copy_upsert inserts in TARGETID order, so one
    waits for the other and both succeed, with one row per TARGETID."""
    import threading
    conn = connect(pg_dsn)
    ddl.create_schema(conn, schema_name)
    conn.close()
    errors, rounds, n = [], 3, 40_000
    barrier = threading.Barrier(2)

    def session(flip):
        c = connect(pg_dsn)
        try:
            for k in range(rounds):
                ids = np.arange(k * 2 * n, k * 2 * n + n, dtype=np.int64) + (n // 2 if flip
                                                                            else 0)
                rows = schema.table("photometry").empty(n)
                rows["targetid"] = ids[::-1] if flip else ids  # opposite orders
                with transaction(c) as cur:
                    barrier.wait(60)  # both insert at the same time
                    tile_writer.copy_upsert(cur, schema_name, "photometry", rows, ("targetid",))
        except psycopg2.Error as err:
            errors.append(err)
        finally:
            c.close()
    threads = [threading.Thread(target=session, args=(f,)) for f in (False, True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    conn = connect(pg_dsn)
    with conn.cursor() as cur:
        cur.execute(f'SELECT count(*), count(DISTINCT targetid) FROM "{schema_name}".photometry')
        assert cur.fetchone() == (rounds * n * 3 // 2, rounds * n * 3 // 2)
    conn.close()
