"""The load: plan -> tile tasks -> brick tasks -> write -> finalize.

``load(comm, options)`` is called by every rank with the same options.  Rank 0 is the
root (:func:`root`): it runs the stages below, one after the other, on a :class:`Run`;
every other rank serves tasks (:func:`specprod_db.mpi.serve`) until the root stops it
with the run's exit status, which every rank returns:

1. **plan** — connect, check, take the schema's lock, read the tiles file, the exposures
   file and the load state, and diff them (:mod:`specprod_db.load.plan`).  Files are only
   ``stat``-ed here; no transaction stays open.
2. **tile tasks** — every INSERT/UPDATE tile is extracted and staged by a worker
   (:func:`specprod_db.load.tasks.extract_tile`), which also fingerprints what it read; the
   targeting rows of new fiberassign data come next, from **catalog tasks** then
   **targetphot tasks**: each targeting catalog file the wave's tiles name is read once
   for all of them, then each tile's target and targeting-photometry rows are assembled
   from those reads by a worker (:mod:`specprod_db.load.catalogs`).
3. **brick tasks** — the targets of new fiberassign data that the database lacks
   photometry for, grouped by brick (:mod:`specprod_db.load.bricks`), matched to the Legacy
   Surveys by workers (:func:`specprod_db.load.tasks.extract_brick`).
4. **write** — one transaction per tile (:mod:`specprod_db.load.tile_writer`): its rows, the
   photometry its targets need, its state and its TARGETIDs' primary flags; deletes and
   refreshes likewise; failures recorded.
5. **HEALPix** — a named (static) production only (:meth:`Run.loads_healpix`): its
   HEALPix redrock files, one task each (:func:`specprod_db.load.tasks.extract_healpix`),
   each written in one transaction into ``zpix`` (:func:`specprod_db.load.tile_writer.write_healpix`)
   after every tile, whose photometry their TARGETIDs need.
6. **finalize** — after a bulk load, every primary flag and the secondary indexes; then
   ANALYZE (:mod:`specprod_db.load.finalize`).

Exit statuses are those of :mod:`specprod_db.errors`.  Expected errors end the run with
their status and one line; any other exception on the root ends the job with
:data:`~specprod_db.errors.EXIT_INTERNAL` and its traceback, after the workers' running
tasks finish (:meth:`specprod_db.mpi.Dispatcher.stop`).
"""
import os
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import psycopg2

from specprod_db.load import (bricks, catalogs, finalize, fingerprints, runrecord, tasks,
    tile_writer, writer_ranks, zpix)
from specprod_db import faults, mpi, schema, stage
from specprod_db.db import ddl
from specprod_db.db.connect import bulk_session, connect, schema_exists, server_stop
from specprod_db.errors import (EXIT_FAILED, EXIT_INTERNAL, EXIT_OK, DatabaseLost,
    InputError, RunRefused, SpecprodDBError, one_line)
from specprod_db.extract import redshift, targetphot, tile
from specprod_db.log import get_logger, set_rank
from specprod_db.load.plan import (DELETE, FAIL, INSERT, REFRESH, UPDATE,
    MassDeleteRefused, absent_tiles, format_plan, make_plan)
from specprod_db.db.lock import acquire_lock, check_write_access, database_identity, read_state


@dataclass
class Options:
    schema: str
    paths: object
    dsn: str = ""
    stage_dir: str = None
    tiles: list = None
    dry_run: bool = False
    no_delete: bool = False
    allow_mass_delete: bool = False
    max_delete_fraction: float = 0.1
    max_delete_count: int = 3
    show_unchanged: bool = False
    initial: bool = False  # bulk mode: secondary indexes and primary flags built at the end
    wave_tiles: int = 64   # tiles extracted, matched and written together (memory bound)
    writers: int = 1       # >1: ranks 1..writers write tiles concurrently (writer_ranks.py)
    stage_min_free: int = 0  # bytes the stage directory must have free to start
    command: str = "load"
    healpix: bool = None   # HEALPix redshifts (zpix); None: when the production is not daily


@dataclass
class Failure:
    """Why a tile failed: bad input (``internal=False``) or a bug (``internal=True``)."""
    message: str
    internal: bool = False


def load(comm, opts):
    """Run the whole pipeline on every rank; returns the common exit status."""
    set_rank(comm.rank, comm.size)
    if comm.rank != 0:
        return mpi.serve(comm, tasks.HANDLERS)
    return root(comm, opts)


def root(comm, opts):
    """Rank 0: the run, stage after stage; stops the workers with its exit status."""
    roles = {"write": range(1, opts.writers + 1)} \
        if 1 < opts.writers <= comm.size - 2 else None
    dispatcher = mpi.Dispatcher(comm, tasks.HANDLERS, roles)
    run = Run(opts, comm.size)
    status = EXIT_INTERNAL
    try:
        try:
            status = run.execute(dispatcher)
        except psycopg2.Error as err:  # the database stopping the work is no bug: exit 3
            raise server_stop(err, run.conn) or err
    except SpecprodDBError as err:
        status = err.exit_code
        print(f"specprod-db: {run.describe_stop(err)}", file=sys.stderr, flush=True)
        run.abandon("interrupted" if isinstance(err, DatabaseLost) else "refused")
    except Exception as err:  # a bug outside any task: the job ends, loudly
        print(f"specprod-db: internal error ({one_line(err)}); the load stopped; every "
              f"committed tile is whole; rerun the load once the cause is fixed\n"
              f"{traceback.format_exc()}", file=sys.stderr, flush=True)
        run.abandon("internal_error")
    finally:
        dispatcher.stop(status)
        run.close()
    return status


class Run:
    """One load run on the root: its plan, results, failures, counts and timers."""

    def __init__(self, opts, ranks=1):
        self.opts = opts
        self.ranks = ranks
        self.log = get_logger()
        self.t0 = time.time()
        self.conn = None
        self.run_id = None
        self.stage_dir = None
        self.actions = []
        self.state = {}
        self.bad_lines = 0
        self.tiles_file = {}     # path, resolved, size, sha256 (load_run.options)
        self.results = {}        # tileid -> TileResult
        self.brick_results = []  # BrickResult
        self.tiles_of_brick = {}
        self.failures = {}       # tileid -> Failure
        self.written = []        # StageFiles whose rows are committed
        self.wrote = False       # something was written (ANALYZE)
        self.keep = None         # table of the run's TARGETIDs (tile_writer.keep_more)
        self.touched = None      # --writers: TARGETIDs whose flags the root recomputes
        self.rebuild = False     # secondary indexes and every flag built at the end
        self.overlap = mpi.Overlap()
        self.progress = {}
        self.staged_files = {"tiles": {}, "bricks": []}  # for the manifest
        self.counts = {"tables": {}, "warnings": {}}
        self.timers = {}
        self.healpix_failures = {}  # HEALPix file name -> message (static productions)

    # --- the stages -----------------------------------------------------------------

    def execute(self, dispatcher):
        with self.timed("plan"):
            self.plan()
        if self.opts.dry_run:
            print(format_plan(self.actions, self.opts.show_unchanged))
            return EXIT_FAILED if self.failures else EXIT_OK  # --tiles not in the file
        self.begin()
        self.prepare_write()
        extract = [a for a in self.actions if a.action in (INSERT, UPDATE)]
        n = max(1, self.opts.wave_tiles)
        waves = [extract[i:i + n] for i in range(0, len(extract), n)]
        self.progress = {kind: mpi.Progress(kind, 0) for kind in
                         ("tile", "catalog", "targetphot", "brick", "write")}
        self.progress["tile"].total = len(extract)
        tiles = self.submit_tiles(dispatcher, waves[0]) if waves else None
        for k, wave in enumerate(waves):
            # wave k: its tiles' results, their targeting rows (catalog and targetphot
            # tasks), its brick tasks; the next wave's tiles are extracted while this
            # one's bricks run and its tiles are written
            with self.timed("extract tiles"):
                self.collect_tiles(dispatcher, tiles)
            with self.timed("targetphot"):
                self.targetphot(dispatcher, wave)
            with self.timed("plan bricks"):
                bricks_batch = self.submit_bricks(dispatcher, wave)
            if k + 1 < len(waves):
                tiles = self.submit_tiles(dispatcher, waves[k + 1])
            with self.timed("extract bricks"):
                self.collect_bricks(dispatcher, bricks_batch)
            with self.timed("write"):
                self.write(wave, dispatcher)
            self.end_wave(wave)
        with self.timed("write"):
            self.write([a for a in self.actions if a.action not in (INSERT, UPDATE)])
        if self.loads_healpix():
            with self.timed("healpix"):
                self.extract_healpix(dispatcher)
        with self.timed("finalize"):
            self.finalize()
        return self.finish(dispatcher)

    def plan(self):
        """Connect, check, lock, and diff the tiles file with the load state."""
        opts = self.opts
        if opts.writers > 1 and self.ranks < opts.writers + 2 and not opts.dry_run:
            raise RunRefused(f"--writers {opts.writers} needs at least {opts.writers + 2} "
                             f"ranks (the root, the writers and one to extract); this job "
                             f"has {self.ranks}")
        try:
            self.conn = connect(opts.dsn)
            if not schema_exists(self.conn, opts.schema):
                raise RunRefused(f"schema {opts.schema} does not exist; run "
                                 f"'specprod-db init --schema {opts.schema}' first")
            from specprod_db.db.migrate import check_layout
            check_layout(self.conn, opts.schema)
            if not opts.dry_run:
                check_write_access(self.conn, opts.schema)
            acquire_lock(self.conn, opts.schema)
            self.state = read_state(self.conn, opts.schema)
            self.conn.rollback()  # no transaction stays open while planning
            faults.hit("plan")  # failure tests only (faults.py)
            self.actions = self._plan_actions()
        except (InputError, OSError, psycopg2.Error) as err:
            raise server_stop(err, self.conn, "planning") or RunRefused(one_line(err)) \
                from None

    def _plan_actions(self):
        opts, paths = self.opts, self.opts.paths
        tiles_path = paths.tiles()
        if not os.path.exists(tiles_path):
            raise RunRefused(f"tiles file {tiles_path} does not exist")
        table, problems, self.bad_lines = tile.read_tiles_file(tiles_path,
                                                               info=self.tiles_file)
        if len(table) == 0 and not problems:
            raise RunRefused(f"tiles file {tiles_path} has no tiles")
        exposures, frames = tile.read_exposures_file(paths.exposures())
        orphans = sorted(set(exposures["TILEID"].tolist()) - set(table["TILEID"].tolist()))
        if orphans:
            n = int(np.isin(exposures["TILEID"], orphans).sum())
            self.warn("orphan_exposures", n, "%d exposure row(s) of %d tile(s) not in the "
                      "tiles file are ignored: %s", n, len(orphans),
                      ", ".join(map(str, orphans[:10])))

        def planned(tileid, line, old):
            old = old or {}
            return {
                "exposures_hash": fingerprints.exposures_digest(exposures, frames, tileid),
                "redrock_fingerprint": fingerprints.planned(
                    old.get("redrock_fingerprint"), fingerprints.stat(
                        redshift.redrock_files(paths, tileid, line["LASTNIGHT"]))),
                "fiberassign_fingerprint": fingerprints.planned(
                    old.get("fiberassign_fingerprint"),
                    fingerprints.stat(tile.fiberassign_files(paths, tileid)))}

        def plan(allow_mass_delete):
            return make_plan(table, problems, self.state, planned, tiles=opts.tiles,
                             no_delete=opts.no_delete,
                             max_delete_fraction=opts.max_delete_fraction,
                             max_delete_count=opts.max_delete_count,
                             bad_lines=self.bad_lines, allow_mass_delete=allow_mass_delete)
        try:
            actions = plan(opts.allow_mass_delete)
        except MassDeleteRefused as err:
            if not opts.dry_run:
                raise
            self.log.warning("the load would refuse to start: %s", err)  # plan still shown
            actions = plan(True)
        for tid in absent_tiles(opts.tiles, actions):  # the run exits 1
            message = f"tile {tid}: not in the tiles file {tiles_path} (named by --tiles)"
            self.log.error("%s", message)
            self.fail(tid, message)
        return actions

    def begin(self):
        """The stage directory (checked, claimed, cleaned) and the ``load_run`` row."""
        opts = self.opts
        identity = database_identity(self.conn)
        self.stage_dir = opts.stage_dir or stage.default_directory(identity, opts.schema)
        stage.check_directory(self.stage_dir, opts.stage_min_free)
        stage.claim(self.stage_dir, identity, opts.schema)
        stage.cleanup_temporaries(self.stage_dir)
        stage.remove_stale_tiles(self.stage_dir, [a.tileid for a in self.actions
                                                  if a.action in (INSERT, UPDATE)])
        self.run_id = runrecord.start(self.conn, opts.schema, self.ranks, opts.command, {
            "tiles": opts.tiles, "stage_dir": self.stage_dir, "no_delete": opts.no_delete,
            "initial": opts.initial, "writers": opts.writers, **opts.paths.as_dict(),
            "tiles_file": self.tiles_file})

    def submit_tiles(self, dispatcher, wave):
        """Queue a wave's tile tasks, largest fiberassign file first; their catalogs are
        read by the wave's catalog tasks (:meth:`targetphot`)."""
        jobs = [dict(self._tile_job(a), wave=True) for a in wave]
        return dispatcher.submit("tile", jobs, size=_tile_size,
                                 progress=self.progress["tile"])

    def collect_tiles(self, dispatcher, batch):
        """The results of tile tasks (or of targetphot tasks); a tile's warnings are
        counted once its rows are complete (targeting rows assembled)."""
        for job, result in dispatcher.wait(batch):
            tileid = job["tileid"] if "tileid" in job else job["action"]["tileid"]
            if isinstance(result, mpi.TaskFailure):
                self.fail(tileid, result.message, result.internal)
                continue
            self.results[tileid] = result
            if result.stage is not None:
                self.staged_files["tiles"][str(tileid)] = result.stage.path
            if result.catalogs is not None:
                continue
            self._warn_stats(tileid, result.stats)
            if result.missing_petals:
                self.log.warning("tile %d: no redrock file for petal(s) %s", tileid,
                                 ", ".join(map(str, result.missing_petals)))
            lost = redshift.lost_petals((self.state.get(tileid) or {}).get(
                "redrock_fingerprint"), result.missing_petals)
            if lost:  # a re-reduced tile with fewer petals: it loads what is there now
                self.warn("petals_lost", len(lost), "tile %d: petal(s) %s loaded before have "
                          "no redrock or zbest file now; their ztile rows go with this "
                          "UPDATE", tileid, ", ".join(map(str, lost)))
        batch.results.clear()

    def targetphot(self, dispatcher, wave):
        """The wave's targeting rows (:mod:`specprod_db.load.catalogs`): each catalog file its
        tiles name read once (catalog tasks, largest first), then each tile's rows
        assembled from them by a worker (targetphot tasks)."""
        pending = [self.results[a.tileid] for a in wave if a.tileid in self.results
                   and a.tileid not in self.failures
                   and self.results[a.tileid].catalogs is not None]
        if not pending:
            return
        jobs, _ = catalogs.catalog_jobs([(r.catalogs, r.want) for r in pending],
                                        self.stage_dir)
        self.progress["catalog"].total += len(jobs)
        read = dispatcher.map("catalog", jobs, size=catalogs.job_size,
                              progress=self.progress["catalog"])
        found = {job["path"]: catalogs.staged(job, result) for job, result in read}
        self.progress["targetphot"].total += len(pending)
        batch = dispatcher.submit("targetphot", [
            {"tileid": r.tileid, "stage": r.stage,
             "catalogs": {f: found[f] for f, _ in targetphot.plan_files(r.catalogs)}}
            for r in pending], size=lambda job: len(job["catalogs"]),
            progress=self.progress["targetphot"])
        self.collect_tiles(dispatcher, batch)
        catalogs.remove(result for _, result in read)
        opened = sum(not getattr(result, "reused", False) for _, result in read)
        reads = sum(self.results[r.tileid].stats.get("files_read", 0) for r in pending
                    if r.tileid not in self.failures)
        c = self.counts.setdefault("catalogs", {"files_opened": 0, "tile_reads": 0,
                                                "reads_saved": 0})
        c["files_opened"] += opened
        c["tile_reads"] += reads
        c["reads_saved"] += reads - opened
        self.log.info("targeting catalogs of %d tiles: %d files opened (%d staged before) "
                      "instead of %d reads tile by tile", len(pending), opened,
                      len(read) - opened, reads)

    def _tile_job(self, action):
        job = {"action": action.as_dict(), "paths": self.opts.paths,
               "stage_dir": self.stage_dir}
        old = self.state.get(action.tileid) or {}
        # an UPDATE planned only because files' sizes/mtimes moved: the worker compares
        # their contents with the recorded ones and refreshes the state if they are equal
        if action.action == UPDATE and old.get("status") == "loaded" and all(
                old.get(k) == action.state.get(k) for k in ("tile_hash", "exposures_hash")):
            job["recorded"] = {k: old.get(k) for k in ("redrock_fingerprint",
                                                       "fiberassign_fingerprint")}
        return job

    def submit_bricks(self, dispatcher, wave):
        """The wave's TARGETIDs join the run's ``keep`` table, then its brick tasks (for
        targets the database still lacks photometry for) are queued, largest first."""
        faults.hit("bricks")  # failure tests only (faults.py)
        staged = [self.results[a.tileid] for a in wave
                  if a.tileid in self.results and a.tileid not in self.failures]
        tile_writer.keep_more(self.conn, self.keep, np.concatenate(
            [r.targetids for r in staged if r.targetids is not None]
            + [np.zeros(0, np.int64)]))
        jobs, self.tiles_of_brick = bricks.brick_jobs(
            self.conn, self.opts.schema, self.opts.paths, self.stage_dir, staged)
        self.progress["brick"].total += len(jobs)
        return dispatcher.submit("brick", jobs, size=lambda job: len(job["targets"]),
                                 progress=self.progress["brick"])

    def collect_bricks(self, dispatcher, batch):
        """Brick results; a failed brick fails the tiles that need it, blamed on it (a
        brick task reports its bricks one by one, :func:`tasks.extract_brick`); only a
        whole task that failed fails every tile needing one of its bricks."""
        self.brick_results = []
        for job, result in dispatcher.wait(batch):
            if isinstance(result, mpi.TaskFailure):
                failed = {b.decode(): f"brick task {job['group']}: {result.message}"
                          for b in np.unique(job["targets"]["BRICKNAME"])}
                internal = set(failed) if result.internal else set()
            else:
                failed, internal = result.failed, set(result.internal)
                self.brick_results.append(result)
                self.staged_files["bricks"].append(result.stage.path)
            for brick, message in failed.items():
                blame = message if message.startswith(f"brick {brick}: ") \
                    else f"brick {brick}: {message}"
                for tileid in self.tiles_of_brick.get(brick, ()):
                    self.fail(tileid, f"tile {tileid}: {blame}", brick in internal)
        batch.results.clear()

    def prepare_write(self):
        """Before the first write: the indexes of a bulk load, the run's ``keep``
        table, the writer session's settings."""
        opts, conn = self.opts, self.conn
        self.rebuild = opts.initial or bool(ddl.missing_indexes(conn, opts.schema))
        if opts.initial:
            self.log.info("initial load: dropping secondary indexes until the end: %s",
                          ", ".join(ddl.drop_secondary_indexes(conn, opts.schema)))
            bulk_session(conn)
        writer_ranks.drop_shared(conn, opts.schema)  # left by a crashed run
        if opts.writers > 1:
            self.keep, self.touched = writer_ranks.create_shared(conn, opts.schema, self.run_id)
        else:
            self.keep = tile_writer.keep_targetids(conn)

    def write(self, actions, dispatcher=None):
        """One transaction per tile, in plan order; a failure is recorded and the run
        goes on, unless the database went away (:class:`DatabaseLost`).  Between two
        tiles the dispatcher is polled, so workers extract the next wave meanwhile.
        With ``--writers K`` the wave's tiles are written by the writer ranks
        (:mod:`specprod_db.load.writer_ranks`) while the root records the rest."""
        opts, conn = self.opts, self.conn
        try:
            stage.write_manifest(self.stage_dir, self._manifest())
        except OSError as err:  # a full stage disk: the manifest is for the operator only
            self.log.warning("stage directory %s: manifest.json not written: %s",
                             self.stage_dir, err)
        legacy = tile_writer.WavePhotometry(self.brick_results, [
            self.results[a.tileid] for a in actions
            if a.tileid in self.results and a.tileid not in self.failures])
        remote = None
        if opts.writers > 1 and dispatcher is not None:
            sent = [a for a in actions if a.action in (INSERT, UPDATE)
                    and a.tileid not in self.failures and not self.results[a.tileid].refresh]
            self.progress["write"].total += len(sent)
            remote = dispatcher.submit("write", [self._write_job(a, legacy) for a in sent],
                                       progress=self.progress["write"])
            actions = [a for a in actions if a not in sent]
        for a in actions:
            if dispatcher is not None:
                dispatcher.poll()
                self.overlap.sample(dispatcher)
            try:
                self._write_one(a, legacy, self.keep)
            except psycopg2.Error as err:
                stop = server_stop(err, conn, f"writing tile {a.tileid}")
                if stop is not None:  # cancelled, timed out, connection lost: exit 3
                    raise stop from None
                message = f"tile {a.tileid}: the database refused its rows: {one_line(err)}"
                self.fail(a.tileid, message)
                tile_writer.record_failure(conn, opts.schema, a.tileid, message, self.run_id,
                                      action=a)
        if remote is not None:
            for job, result in dispatcher.wait(remote):
                self._written_remotely(job, result)
        if dispatcher is not None:
            self.overlap.sample(dispatcher, end=True)

    def _write_job(self, a, photometry):
        result = self.results[a.tileid]
        return {"dsn": self.opts.dsn, "schema": self.opts.schema, "bulk": self.opts.initial,
                "run_id": self.run_id, "action": a.as_dict(), "stage": result.stage,
                "state": result.state, "photometry": photometry.rows_for(result.targetids)}

    def _written_remotely(self, job, result):
        """The outcome of a writer rank's tile: counted, or its failure recorded."""
        a = next(x for x in self.actions if x.tileid == job["action"]["tileid"])
        if isinstance(result, mpi.TaskFailure) and result.fatal:
            raise DatabaseLost(result.message)
        message = result.message if isinstance(result, mpi.TaskFailure) \
            else result.get("error")
        if message:
            internal = getattr(result, "internal", False)
            self.fail(a.tileid, message, internal)
            tile_writer.record_failure(self.conn, self.opts.schema, a.tileid, message,
                                  self.run_id, internal, action=a)
            return
        c, tc = result["counts"], self.counts["tables"]
        self.written.append(job["stage"])
        self.wrote = True
        for k, v in c.items():
            tc[k] = tc.get(k, 0) + v
        self.log.info("tile %d %s: %s", a.tileid, a.action,
                      ", ".join(f"{k} {v}" for k, v in c.items()))
        faults.hit("write")  # failure tests only (faults.py): after a committed tile

    def end_wave(self, wave):
        """A written wave: its stage files go (kept for a rerun where a tile failed),
        its results are dropped (the root's memory follows one wave)."""
        for f in self.written:
            f.remove()
        self.written = []
        if not any(a.tileid in self.failures for a in wave):
            for r in self.brick_results:
                r.stage.remove()
        self.brick_results = []
        for a in wave:
            self.results.pop(a.tileid, None)

    def _write_one(self, a, legacy, keep):
        opts, conn, tc = self.opts, self.conn, self.counts["tables"]
        if a.tileid in self.failures or a.action == FAIL:
            failure = self.failures.setdefault(a.tileid, Failure(a.reason))
            tile_writer.record_failure(conn, opts.schema, a.tileid, failure.message, self.run_id,
                                  failure.internal, action=a)
            return
        if a.action in (INSERT, UPDATE):
            result = self.results[a.tileid]
            if result.refresh:
                tile_writer.refresh_state(conn, opts.schema, a, self.run_id, result.state)
                self.log.info("tile %d: inputs touched, same contents: state refreshed",
                              a.tileid)
                return
            tables = result.stage.tables()
            tables.pop("photometry", None)  # the wave's rows (WavePhotometry) instead
            c = tile_writer.write_tile(conn, opts.schema, a, tables, result.state, self.run_id,
                                  [legacy.rows_for(result.targetids)], keep,
                                  primary=not self.rebuild)
            self.written.append(result.stage)
            self.log.info("tile %d %s: %s", a.tileid, a.action,
                          ", ".join(f"{k} {v}" for k, v in c.items()))
        elif a.action == DELETE:
            c = tile_writer.delete_tile(conn, opts.schema, a, self.run_id, keep)
            self.log.warning("tile %d DELETED (%s): %s", a.tileid, a.reason,
                             ", ".join(f"{k} {v}" for k, v in c.items()))
        elif a.action == REFRESH:
            c = {}
            tile_writer.refresh_state(conn, opts.schema, a, self.run_id)
        else:
            tile_writer.record_skip(conn, opts.schema, a, self.run_id, self.state.get(a.tileid))
            return
        self.wrote = True
        for k, v in c.items():
            tc[k] = tc.get(k, 0) + v
        faults.hit("write")  # failure tests only (faults.py): after a committed tile

    # --- HEALPix redshifts of a static production (zpix) ------------------------------

    def loads_healpix(self):
        """``--healpix``/``--no-healpix``, else: a named production (not ``daily``) loaded
        whole (no ``--tiles``)."""
        opts = self.opts
        if opts.healpix is not None:
            return opts.healpix
        return opts.paths.specprod != "daily" and not opts.tiles

    def extract_healpix(self, dispatcher):
        """The HEALPix stage of a named production (:func:`zpix.load`)."""
        zpix.load(self, dispatcher)

    def finalize(self):
        """After a bulk load, every primary flag and the secondary indexes; ANALYZE."""
        faults.hit("finalize")  # failure tests only (faults.py)
        conn, schema_name = self.conn, self.opts.schema
        if self.touched is not None:
            if not self.rebuild:  # the writer ranks left the flags to the root
                self.log.info("primary flags of the TARGETIDs the writers touched: %d "
                              "rows changed", finalize.update_primary(
                                  conn, schema_name, table=self.touched))
                conn.commit()
            writer_ranks.drop_shared(conn, schema_name)
        if self.rebuild:
            # after an initial bulk load, or a rerun of an interrupted one: flags of every
            # TARGETID at once, then the secondary indexes, built once not row by row
            self.log.info("primary flags of all ztile rows: %d rows changed",
                          finalize.update_primary(conn, schema_name))
            self.log.info("primary flags of all zpix rows: %d rows changed",
                          finalize.update_primary(conn, schema_name, redshifts="zpix"))
            ddl.create_indexes(conn, schema_name)
            conn.commit()
            self.log.info("tables clustered on their q3c index: %s",
                          ", ".join(ddl.cluster_q3c(conn, schema_name)))
        if self.rebuild or self.wrote:
            tables = [t.name for t in schema.TABLES]
            if not self.rebuild:  # a daily run: only the tables whose statistics went stale
                tables = finalize.stale_tables(conn, schema_name, tables,
                                               finalize.changed_rows(self.counts["tables"]))
            finalize.analyze(conn, schema_name, tables)
            conn.commit()
            self.counts["analyzed"] = tables
            self.log.info("ANALYZE: %s", ", ".join(tables) or "no table had enough changes")

    def finish(self, dispatcher):
        """The run recorded and reported (with each rank's busy time)."""
        if not self.failures:  # bricks of a crashed run too; kept for a rerun after failures
            stage.remove_bricks(self.stage_dir)
        stage.remove_catalogs(self.stage_dir)  # a rerun's waves want other rows
        busy, balance = dispatcher.balance()
        self.counts["ranks"] = {"busy_seconds": {str(r): round(t, 2) for r, t in busy.items()},
                                "balance_max_over_mean": round(balance, 3),
                                "write_seconds": round(self.overlap.total, 2),
                                "write_seconds_with_workers_busy": round(self.overlap.hidden, 2)}
        failed = self.failures or self.bad_lines or self.healpix_failures
        outcome = "failed" if failed else "ok"
        self._record_run(outcome)
        self.report()
        return EXIT_FAILED if failed else EXIT_OK

    # --- bookkeeping ----------------------------------------------------------------

    def fail(self, tileid, message, internal=False):
        """Record that a tile failed (the first reason wins)."""
        self.failures.setdefault(tileid, Failure(message, internal))

    def warn(self, kind, n, message, *args):
        """Log a warning and count ``n`` of ``kind`` in the run's counts."""
        self.counts["warnings"][kind] = self.counts["warnings"].get(kind, 0) + n
        self.log.warning(message, *args)

    def _warn_stats(self, tileid, stats):
        """Warnings that count values loaded despite being odd (the run still succeeds)."""
        mismatch = redshift.desiname_mismatch(stats)
        if mismatch:  # the computed DESINAME is loaded, never the file's
            self.warn("desiname_mismatch", mismatch[0], "tile %d: %s", tileid, mismatch[1])
        fin = stats.get("finitized") or {}
        if fin:
            self.warn("finitized", sum(fin.values()),
                      "tile %d: %d non-finite value(s) (NaN/Inf) stored as -9999 in %d "
                      "column(s): %s", tileid, sum(fin.values()), len(fin),
                      ", ".join(f"{k} {v}" for k, v in sorted(fin.items())))
        bad = stats.get("targetid_mismatch", 0)
        if bad:
            self.warn("targetid_mismatch", bad,
                      "tile %d: %d targeting row(s) whose TARGETID does not encode their own "
                      "RELEASE/BRICKID/BRICK_OBJID; loaded with the rows' columns, as "
                      "desispec reads them", tileid, bad)
        nan = stats.get("nan_efftime_expids") or []
        if nan:
            self.warn("nan_efftime_exposures", len(nan),
                      "tile %d: %d exposure(s) with EFFTIME_SPEC NaN not loaded (only "
                      "EFFTIME_SPEC > 0 qualifies): EXPID %s", tileid, len(nan),
                      ", ".join(map(str, nan)))
        missing = stats.get("missing_catalogs") or []
        if missing:  # each was logged by the worker, naming tile, keyword and path
            self.counts["warnings"]["missing_catalogs"] = \
                self.counts["warnings"].get("missing_catalogs", 0) + len(missing)
        bits = stats.get("missing_target_bits", 0)
        if bits:  # rows loaded with 0 for a bit column their catalog lacks (logged there)
            self.counts["warnings"]["missing_target_bits"] = \
                self.counts["warnings"].get("missing_target_bits", 0) + bits

    @contextmanager
    def timed(self, name):
        t = time.time()
        try:
            yield
        finally:
            self.timers[name] = self.timers.get(name, 0.0) + time.time() - t

    def _manifest(self):
        return {"run_id": self.run_id, "schema": self.opts.schema,
                "plan": [{"tileid": a.tileid, "action": a.action, "reason": a.reason}
                         for a in self.actions],
                "tiles": self.staged_files["tiles"], "bricks": self.staged_files["bricks"],
                "failed": {str(t): f.message for t, f in self.failures.items()}}

    def _record_run(self, outcome):
        runrecord.finish(self.conn, self.opts.schema, self.run_id, outcome,
                         runrecord.summary_counts(self))

    def describe_stop(self, err):
        if isinstance(err, DatabaseLost):
            return (f"load interrupted: {one_line(err)}; tiles committed before are "
                    f"complete, the interrupted one was rolled back; rerun the load")
        return one_line(err)

    def abandon(self, outcome):
        """Best effort after a failure that stops the run: record it as ``outcome``."""
        if self.run_id is None or self.conn is None or self.conn.closed:
            return
        try:
            self._record_run(outcome)
        except psycopg2.Error:
            pass  # the next run marks an unfinished row 'interrupted'

    def close(self):
        if self.conn is not None and not self.conn.closed:
            self.conn.close()

    def report(self):
        """The run's report on stdout: the command's result, visible with ``-q`` too."""
        print("\n".join(runrecord.report_lines(self)), flush=True)



def _tile_size(job):
    """The expected cost of a tile task: its fiberassign file's size for a full
    extraction (0 otherwise), from the planner's stat."""
    if not job["action"]["full"]:
        return 0
    fp = fingerprints.Fingerprint.from_text(job["action"]["state"].get(
        "fiberassign_fingerprint"))
    return sum(f.size or 0 for f in fp.files) if fp else 0
