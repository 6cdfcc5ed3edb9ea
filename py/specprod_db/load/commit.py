"""Writing, in plan order: one transaction per tile (:mod:`specprod_db.load.tile_writer`),
or in a bulk load, one per batch of consecutive new tiles (:mod:`specprod_db.load.bulk_writer`).

:func:`write_wave` writes a wave's tiles — on the root, or with ``--writers K`` on the
writer ranks (:mod:`specprod_db.load.writer_ranks`) while the root records the rest —
then removes the stage files committed (a tile that failed keeps its wave's brick files
for a rerun).  :func:`write_others` writes the actions that read no input: DELETE,
REFRESH, FAIL and SKIP.  A tile that fails is recorded and the run goes on, unless the
database went away (:class:`~specprod_db.errors.DatabaseLost`, exit 3).
"""
from typing import Any, Optional, Union

import psycopg2

from specprod_db import faults, mpi
from specprod_db.db.connect import server_stop
from specprod_db.errors import DatabaseLost, one_line
from specprod_db.load import bulk_writer, refusals, tile_writer
from specprod_db.load.photometry_rows import WavePhotometry
from specprod_db.load.jobs import WriteJob
from specprod_db.load.plan import DELETE, FAIL, INSERT, REFRESH, UPDATE, TileAction
from specprod_db.load.prepare import Options, Plan, Session
from specprod_db.load.tally import Failure, Tally
from specprod_db.load.waves import Wave
from specprod_db.load.writer_ranks import WriteResult
from specprod_db.log import get_logger


def write_wave(wave: Wave, dispatcher: mpi.Dispatcher, opts: Options, session: Session,
               plan: Plan, tally: Tally) -> None:
    """Write a wave's tiles, then remove the stage files committed."""
    _write(wave.actions, wave, dispatcher, opts, session, plan, tally)
    for f in wave.written:
        f.remove()
    if not any(tally.failed(a.tileid) for a in wave.actions):
        for r in wave.brick_results:
            r.stage.remove()


def write_others(actions: list[TileAction], opts: Options, session: Session, plan: Plan,
                 tally: Tally) -> None:
    """The actions that read no input (DELETE, REFRESH, FAIL, SKIP), on the root."""
    _write(actions, Wave(actions), None, opts, session, plan, tally)


def _write(actions: list[TileAction], wave: Wave, dispatcher: Optional[mpi.Dispatcher],
           opts: Options, session: Session, plan: Plan, tally: Tally) -> None:
    """One transaction per tile, or per batch of a bulk load's new tiles; between two
    transactions (and during a batch's COPYs) the dispatcher is polled, so workers
    extract the next wave meanwhile."""
    session.write_manifest(plan, tally)
    legacy = WavePhotometry(wave.brick_results, wave.staged(tally))
    remote = None
    if opts.writers > 1 and dispatcher is not None:
        sent = [a for a in actions if a.action in (INSERT, UPDATE)
                and not tally.failed(a.tileid) and not wave.results[a.tileid].refresh]
        tally.progress["write"].total += len(sent)
        remote = dispatcher.submit("write", [write_job(a, wave, legacy, opts, session)
                                             for a in sent],
                                   progress=tally.progress["write"])
        actions = [a for a in actions if a not in sent]
    batch: list[TileAction] = []
    for a in actions:
        if dispatcher is not None:
            dispatcher.poll()
            tally.overlap.sample(dispatcher)
        if bulk_writer.eligible(a, wave.results.get(a.tileid), session.rebuild) \
                and not tally.failed(a.tileid):
            batch.append(a)
            continue
        _write_batches(batch, wave, legacy, dispatcher, opts, session, plan, tally)
        batch = []
        _write_guarded(a, wave, legacy, opts, session, plan, tally)
    _write_batches(batch, wave, legacy, dispatcher, opts, session, plan, tally)
    if remote is not None and dispatcher is not None:
        for job, result in dispatcher.wait(remote):
            _written_remotely(job, result, wave, opts, session, tally)
    if dispatcher is not None:
        tally.overlap.sample(dispatcher, end=True)


def _write_guarded(a: TileAction, wave: Wave, legacy: WavePhotometry, opts: Options,
                   session: Session, plan: Plan, tally: Tally) -> None:
    """One tile in its own transaction; a refusal is the tile's failure, recorded."""
    try:
        _write_one(a, wave, legacy, opts, session, plan, tally)
    except psycopg2.Error as err:
        stop = server_stop(err, session.conn, f"writing tile {a.tileid}")
        if stop is not None:  # cancelled, timed out, connection lost: exit 3
            raise stop from None
        _refused(a, err, opts, session, tally)


def _refused(a: TileAction, err: Exception, opts: Options, session: Session,
             tally: Tally) -> None:
    """The tile's rows refused (by the database, or by ``refusals.check`` before it):
    the tile fails, recorded."""
    message = f"tile {a.tileid}: the database refused its rows: {one_line(err)}"
    tally.fail(a.tileid, message)
    tile_writer.record_failure(session.conn, opts.schema, a.tileid, message, session.run_id,
                               action=a)


def _write_batches(actions: list[TileAction], wave: Wave, legacy: WavePhotometry,
                   dispatcher: Optional[mpi.Dispatcher], opts: Options, session: Session,
                   plan: Plan, tally: Tally) -> None:
    """Consecutive INSERTs of a bulk load (:mod:`specprod_db.load.bulk_writer`), in
    batches of at most ``bulk_writer.BATCH_BYTES`` of staged rows; a tile its checks
    refuse fails alone; a batch the database refuses is written again tile by tile."""
    items: list[bulk_writer.BatchTile] = []
    size = 0
    for a, item in bulk_writer.read_ahead(actions, wave.results):
        if isinstance(item, refusals.RowsRefused):
            _refused(a, item, opts, session, tally)
            continue
        items.append(item)
        size += item.nbytes
        if size >= bulk_writer.BATCH_BYTES:
            _write_batch(items, wave, legacy, dispatcher, opts, session, plan, tally)
            items, size = [], 0
    _write_batch(items, wave, legacy, dispatcher, opts, session, plan, tally)


def _write_batch(items: list[bulk_writer.BatchTile], wave: Wave, legacy: WavePhotometry,
                 dispatcher: Optional[mpi.Dispatcher], opts: Options, session: Session,
                 plan: Plan, tally: Tally) -> None:
    if not items:
        return
    log = get_logger()
    if len(items) == 1:  # nothing to gain: the tile's own transaction
        _write_guarded(items[0].action, wave, legacy, opts, session, plan, tally)
        return
    poll = None if dispatcher is None else dispatcher.poll
    names = f"tiles {items[0].action.tileid}..{items[-1].action.tileid} ({len(items)})"
    try:
        counts = bulk_writer.write_batch(session.conn, opts.schema, items, session.run_id,
                                         legacy, session.known, poll)
    except (psycopg2.Error, bulk_writer.BatchRefused) as err:
        stop = server_stop(err, session.conn, f"writing {names}")
        if stop is not None:  # cancelled, timed out, connection lost: exit 3
            raise stop from None
        log.warning("%s: the batch was refused (%s); writing them one per transaction",
                    names, one_line(err))
        for item in items:
            _write_guarded(item.action, wave, legacy, opts, session, plan, tally)
        return
    for item, c in zip(items, counts):
        a = item.action
        wave.written.append(wave.results[a.tileid].stage)
        log.info("tile %d %s: %s", a.tileid, a.action,
                 ", ".join(f"{k} {v}" for k, v in c.items()))
        session.wrote = True
        tally.add_rows(c)
        faults.hit("write")  # failure tests only (faults.py): after a committed tile


def write_job(a: TileAction, wave: Wave, photometry: WavePhotometry,
              opts: Options, session: Session) -> WriteJob:
    """The write task of one tile for a writer rank
    (:func:`specprod_db.load.writer_ranks.write_task`)."""
    result = wave.results[a.tileid]
    return WriteJob(opts.dsn, opts.schema, opts.initial, session.run_id, a, result.stage,
                    result.state, photometry.rows_for(result.targetids))


def _written_remotely(job: WriteJob, result: Union[WriteResult, mpi.TaskFailure],
                      wave: Wave, opts: Options, session: Session, tally: Tally) -> None:
    """The outcome of a writer rank's tile: counted, or its failure recorded."""
    a = next(x for x in wave.actions if x.tileid == job.action.tileid)
    if isinstance(result, mpi.TaskFailure) and result.fatal:
        raise DatabaseLost(result.message)
    failure = (result.message, result.internal) if isinstance(result, mpi.TaskFailure) \
        else (result.error, False) if result.error else None
    if failure is not None:
        message, internal = failure
        tally.fail(a.tileid, message, internal)
        tile_writer.record_failure(session.conn, opts.schema, a.tileid, message,
                                   session.run_id, internal, action=a)
        return
    assert isinstance(result, WriteResult)
    c = result.counts
    if session.known is not None:  # committed: photometry holds these now
        session.known.add(job.photometry["targetid"])
    wave.written.append(job.stage)
    session.wrote = True
    tally.add_rows(c)
    get_logger().info("tile %d %s: %s", a.tileid, a.action,
                      ", ".join(f"{k} {v}" for k, v in c.items()))
    faults.hit("write")  # failure tests only (faults.py): after a committed tile


def _write_one(a: TileAction, wave: Wave, legacy: Any, opts: Options, session: Session,
               plan: Plan, tally: Tally) -> None:
    conn, log = session.conn, get_logger()
    if tally.failed(a.tileid) or a.action == FAIL:
        failure = tally.failures.setdefault(a.tileid, Failure(a.reason))
        tile_writer.record_failure(conn, opts.schema, a.tileid, failure.message,
                                   session.run_id, failure.internal, action=a)
        return
    if a.action in (INSERT, UPDATE):
        result = wave.results[a.tileid]
        if result.refresh:
            tile_writer.refresh_state(conn, opts.schema, a, session.run_id, result.state)
            log.info("tile %d: inputs touched, same contents: state refreshed", a.tileid)
            return
        tables = tile_writer.staged_tile_rows(result.stage)
        needed = result.targetids
        if needed is not None and session.known is not None:  # gather only the new rows
            needed = needed[~session.known.contains(needed)]
        c = tile_writer.write_tile(conn, opts.schema, a, tables, result.state, session.run_id,
                                   [legacy.rows_for(needed)],
                                   tile_writer.WriteMode.on_root(session.rebuild, session.keep,
                                                                   session.known))
        wave.written.append(result.stage)
        log.info("tile %d %s: %s", a.tileid, a.action,
                 ", ".join(f"{k} {v}" for k, v in c.items()))
    elif a.action == DELETE:
        c = tile_writer.delete_tile(conn, opts.schema, a, session.run_id, session.keep)
        log.warning("tile %d DELETED (%s): %s", a.tileid, a.reason,
                    ", ".join(f"{k} {v}" for k, v in c.items()))
    elif a.action == REFRESH:
        c = {}
        tile_writer.refresh_state(conn, opts.schema, a, session.run_id)
    else:
        tile_writer.record_skip(conn, opts.schema, a, session.run_id,
                                plan.state.get(a.tileid))
        return
    session.wrote = True
    tally.add_rows(c)
    faults.hit("write")  # failure tests only (faults.py): after a committed tile
