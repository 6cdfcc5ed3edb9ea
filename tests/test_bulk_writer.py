"""The bulk phase's batches (:mod:`specprod_db.load.bulk_writer`), in process (no CLI, no
MPI): which tile counts each TARGETID's new photometry (random, against tile by tile);
a batch equals its tiles written one per transaction, row for row; a batch the
database refuses leaves none of its tiles."""
import numpy as np
import psycopg2
import pytest

from specprod_db import schema
from specprod_db.db import builds
from specprod_db.load import bulk_writer, tile_writer
from specprod_db.load.photometry_ids import PhotometryIds
from specprod_db.load.photometry_rows import WavePhotometry
from specprod_db.load.plan import INSERT

from test_writer import run  # noqa: F401 (a fixture: a planned run on a fresh schema)


def _item(tileid, targetids):
    action = type("A", (), {"tileid": tileid})()
    return bulk_writer.BatchTile(action, {}, {}, targetids)


def test_lacking_photometry_is_what_tile_by_tile_would_insert():
    """Tile by tile, a tile inserts the photometry of its TARGETIDs that neither the
    known set nor an earlier tile holds; the batch's TARGETIDs and owners say the same."""
    rng = np.random.default_rng(23)
    for _ in range(40):
        pool = rng.choice(10**7, size=300, replace=False).astype(np.int64)
        known = PhotometryIds()
        known.add(rng.choice(pool, size=rng.integers(0, 100)))
        items = [_item(k, None if rng.random() < 0.1 else
                       np.unique(rng.choice(pool, size=rng.integers(0, 120))))
                 for k in range(rng.integers(1, 7))]
        held = set(int(t) for r in known.runs for t in r)
        expected = {}
        for k, item in enumerate(items):
            for t in (item.targetids if item.targetids is not None else []):
                if int(t) not in held:
                    held.add(int(t))
                    expected[int(t)] = k
        ids, owner = bulk_writer.lacking_photometry(items, known)
        assert ids.tolist() == sorted(expected)
        assert owner.tolist() == [expected[t] for t in sorted(expected)]
        ids, _ = bulk_writer.lacking_photometry(items, None)  # nothing known: all of them
        assert set(ids.tolist()) == {int(t) for i in items if i.targetids is not None
                                     for t in i.targetids}


def _bulk(run):
    """The run's schema as a bulk load's: its keys and indexes dropped (all but
    ``tile_pkey``), photometry's TARGETIDs known to the root."""
    builds.drop(run.conn, run.opts.schema, builds.bulk_builds(builds.BULK_KEEP_ALONE))
    run.conn.commit()


def _staged(run, tileids):
    from specprod_db.load import tasks
    out = []
    for tileid in tileids:
        action = next(a for a in run.actions if a.tileid == tileid)
        assert action.action == INSERT
        out.append((action, tasks.extract_tile(run.tile_job(action))))
    return out


def _batch(run):
    """Tiles 100 and 1000 extracted into a bulk schema: the wave's photometry and the
    batch's tiles."""
    _bulk(run)
    staged = _staged(run, [100, 1000])
    legacy = WavePhotometry([], [r for _, r in staged])
    items = [bulk_writer.BatchTile(a, tile_writer.staged_tile_rows(r.stage), r.state,
                                   r.targetids) for a, r in staged]
    return legacy, items


def _dump(conn, name, table):
    cols = ", ".join(schema.table(table).names)
    with conn.cursor() as cur:
        cur.execute(f'SELECT {cols} FROM "{name}".{table} ORDER BY {cols}')
        rows = cur.fetchall()
    conn.commit()
    return rows


def test_a_batch_equals_its_tiles_one_by_one(run):
    conn, name = run.conn, run.opts.schema
    legacy, items = _batch(run)
    known = PhotometryIds()
    counts = bulk_writer.write_batch(conn, name, items, run.run_id, legacy, known)
    tables = ["tile", "photometry", "tile_state"] + [t.name for t in schema.tile_tables()]
    batch = {t: _dump(conn, name, t) for t in tables if t != "tile_state"}
    assert len(known) == len(batch["photometry"]) == sum(c["photometry"] for c in counts)
    with conn.cursor() as cur:
        cur.execute(f'SELECT tileid, counts FROM "{name}".tile_history ORDER BY tileid')
        history = cur.fetchall()
        cur.execute(f'SELECT tileid, status FROM "{name}".tile_state ORDER BY tileid')
        assert cur.fetchall() == [(100, "loaded"), (1000, "loaded")]
        for t in tables:  # again, one tile per transaction
            cur.execute(f'TRUNCATE "{name}".{t} CASCADE')
        cur.execute(f'TRUNCATE "{name}".tile_history')
    conn.commit()
    one_known = PhotometryIds()
    single = []
    for item in items:
        needed = item.targetids[~one_known.contains(item.targetids)]
        single.append(tile_writer.write_tile(
            conn, name, item.action, item.tables, item.state, run.run_id,
            [legacy.rows_for(needed)],
            tile_writer.WriteMode.on_root(True, run.session.keep, one_known)))
    assert counts == single  # the first tile of a TARGETID counts its photometry
    assert {t: _dump(conn, name, t) for t in batch} == batch
    with conn.cursor() as cur:
        cur.execute(f'SELECT tileid, counts FROM "{name}".tile_history ORDER BY tileid')
        assert cur.fetchall() == history
    conn.commit()


def test_a_batch_the_database_refuses_leaves_none_of_its_tiles(run):
    conn, name = run.conn, run.opts.schema
    legacy, items = _batch(run)
    bad = items[1].tables["ztile"].copy()
    bad["subtype"][0] = b"P\x00S"  # PostgreSQL refuses NUL in text
    items[1].tables["ztile"] = bad
    known = PhotometryIds()
    with pytest.raises(psycopg2.DataError):
        bulk_writer.write_batch(conn, name, items, run.run_id, legacy, known)
    assert len(known) == 0
    with conn.cursor() as cur:
        for t in ["photometry", "tile_state", "tile_history"] + \
                [t.name for t in schema.tile_tables()]:
            cur.execute(f'SELECT count(*) FROM "{name}".{t}')
            assert cur.fetchone() == (0,), t
    conn.commit()
    # a tile already loaded: refused as a batch (the caller writes its tiles one by one)
    bulk_writer.write_batch(conn, name, items[:1], run.run_id, legacy, known)
    with pytest.raises(bulk_writer.BatchRefused, match="100"):
        bulk_writer.write_batch(conn, name, items[:1], run.run_id, legacy, known)


def test_a_refused_batch_is_written_tile_by_tile_naming_the_bad_tile(run, monkeypatch):
    """commit's fallback: the batch rolled back, its tiles written one per transaction;
    the tile the database refuses fails, named, the other is loaded."""
    from specprod_db.load import commit
    from specprod_db.load.tally import Tally
    from specprod_db.load.waves import Wave
    conn, name = run.conn, run.opts.schema
    _bulk(run)
    run.session.rebuild, run.session.known = True, PhotometryIds()
    staged = _staged(run, [100, 1000])
    wave = Wave([a for a, _ in staged], results={a.tileid: r for a, r in staged})
    read = tile_writer.staged_tile_rows

    def corrupted(stage):
        tables = read(stage)
        if stage is wave.results[1000].stage:
            tables["ztile"] = tables["ztile"].copy()
            tables["ztile"]["subtype"][0] = b"P\x00S"
        return tables

    monkeypatch.setattr(tile_writer, "staged_tile_rows", corrupted)
    tally = Tally()
    commit.write_wave(wave, None, run.opts, run.session, run.plan, tally)
    assert list(tally.failures) == [1000]
    assert "tile 1000" in tally.failures[1000].message
    with conn.cursor() as cur:
        cur.execute(f'SELECT tileid, status FROM "{name}".tile_state ORDER BY tileid')
        assert cur.fetchall() == [(100, "loaded"), (1000, "failed")]
        cur.execute(f'SELECT DISTINCT tileid FROM "{name}".ztile')
        assert cur.fetchall() == [(100,)]
    conn.commit()
