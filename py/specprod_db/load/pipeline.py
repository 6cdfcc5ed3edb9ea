"""The load: plan -> tile tasks -> brick tasks -> write -> finalize.

``load(comm, options)`` is called by every rank with the same options.  Rank 0 is the
root (:func:`root`): it runs the stages below, one after the other (:meth:`Run.execute`);
every other rank serves tasks (:func:`specprod_db.mpi.serve`) until the root stops it
with the run's exit status, which every rank returns:

1. **plan** — connect, check, take the schema's lock, read the tiles file, the exposures
   file and the load state, and diff them (:func:`specprod_db.load.prepare.plan_run`,
   :mod:`specprod_db.load.plan`).  Files are only ``stat``-ed here; no transaction stays
   open.  Then the stage directory and the ``load_run`` row
   (:func:`specprod_db.load.prepare.begin`).
2. **tile tasks** — every INSERT/UPDATE tile is extracted and staged by a worker
   (:func:`specprod_db.load.tasks.extract_tile`), which also fingerprints what it read; the
   targeting rows of new fiberassign data come next, from **catalog tasks** then
   **targetphot tasks**: each targeting catalog file the wave's tiles name is read once
   for all of them, then each tile's target and targeting-photometry rows are assembled
   from those reads by a worker (:mod:`specprod_db.load.catalogs`).  The tiles go in
   waves (:mod:`specprod_db.load.waves`).
3. **brick tasks** — the targets of new fiberassign data that the database lacks
   photometry for, grouped by brick (:mod:`specprod_db.load.bricks`), matched to the Legacy
   Surveys by workers (:func:`specprod_db.load.tasks.extract_brick`).
4. **write** — one transaction per tile (:mod:`specprod_db.load.commit`,
   :mod:`specprod_db.load.tile_writer`): its rows, the
   photometry its targets need, its state and its TARGETIDs' primary flags; deletes and
   refreshes likewise; failures recorded.
5. **HEALPix** — a named (static) production only (:meth:`Run.loads_healpix`): its
   HEALPix redrock files, one task each (:func:`specprod_db.load.tasks.extract_healpix`),
   each written in one transaction into ``zpix``
   (:func:`specprod_db.load.tile_writer.write_healpix`) after every tile, whose
   photometry their TARGETIDs need.
6. **finalize** — after a bulk load, every primary flag and the secondary indexes; then
   ANALYZE; the run recorded and reported (:mod:`specprod_db.load.finish`).

Exit statuses are those of :mod:`specprod_db.errors`.  Expected errors end the run with
their status and one line; any other exception on the root ends the job with
:data:`~specprod_db.errors.EXIT_INTERNAL` and its traceback, after the workers' running
tasks finish (:meth:`specprod_db.mpi.Dispatcher.stop`).
"""
import sys
import traceback
from typing import Any, Optional

import psycopg2

from specprod_db import mpi
from specprod_db.db.connect import server_stop
from specprod_db.errors import (EXIT_FAILED, EXIT_INTERNAL, EXIT_OK, DatabaseLost,
                                SpecprodDBError, one_line)
from specprod_db.load import commit, finish, prepare, runrecord, tasks, waves, zpix
from specprod_db.load.plan import format_plan
from specprod_db.load.prepare import Options, Plan, Session
from specprod_db.load.tally import Tally
from specprod_db.log import set_rank

__all__ = ["Options", "Run", "load", "root"]


def load(comm: Any, opts: Options) -> int:
    """Run the whole pipeline on every rank; returns the common exit status."""
    set_rank(comm.rank, comm.size)
    return mpi.run_roles(comm, tasks.HANDLERS, lambda: root(comm, opts))


def root(comm: Any, opts: Options) -> int:
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
            raise server_stop(err, run.session.conn if run.session else None) or err
    except SpecprodDBError as err:
        status = err.exit_code
        print(f"specprod-db: {describe_stop(err)}", file=sys.stderr, flush=True)
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


def describe_stop(err: SpecprodDBError) -> str:
    """The one line of a run that stopped on ``err``."""
    if isinstance(err, DatabaseLost):
        return (f"load interrupted: {one_line(err)}; tiles committed before are "
                f"complete, the interrupted one was rolled back; rerun the load")
    return one_line(err)


class Run:
    """One load run on the root: the stages in order, on the run's values — its
    :class:`~specprod_db.load.prepare.Plan`, :class:`~specprod_db.load.prepare.Session`
    and :class:`~specprod_db.load.tally.Tally`; each wave
    (:class:`~specprod_db.load.waves.Wave`) lives only while it is extracted and written."""

    def __init__(self, opts: Options, ranks: int = 1) -> None:
        self.opts = opts
        self.ranks = ranks
        self.tally = Tally()
        self.plan: Optional[Plan] = None
        self.session: Optional[Session] = None

    def execute(self, dispatcher: mpi.Dispatcher) -> int:
        """1. plan, 2-4. waves (tiles, targeting rows, bricks, write), 5. HEALPix,
        6. finalize, then the run recorded and reported."""
        opts, tally = self.opts, self.tally
        with tally.timed("plan"):
            prepare.check_ranks(opts, self.ranks)
            self.session = session = prepare.open_session(opts)
            self.plan = plan = prepare.plan_run(session.conn, opts, tally)
        if opts.dry_run:
            print(format_plan(plan.actions, opts.show_unchanged))
            return EXIT_FAILED if tally.failures else EXIT_OK  # --tiles not in the file
        prepare.begin(session, opts, plan, self.ranks)
        prepare.prepare_write(session, opts, plan, tally)
        extract = plan.extracted()
        waves.start_progress(tally, len(extract))
        todo = waves.split(extract, opts.wave_tiles)
        tiles = waves.submit_tiles(dispatcher, todo[0], opts, session, plan, tally) \
            if todo else None
        for k, wave in enumerate(todo):
            # wave k: its tiles' results, their targeting rows (catalog and targetphot
            # tasks), its brick tasks; the next wave's tiles are extracted while this
            # one's bricks run and its tiles are written
            assert tiles is not None  # wave k's tiles were submitted before
            with tally.timed("extract tiles"):
                waves.collect_tiles(dispatcher, tiles, wave, session, plan, tally)
            with tally.timed("targetphot"):
                waves.targetphot(dispatcher, wave, session, plan, tally)
            with tally.timed("plan bricks"):
                bricks = waves.submit_bricks(dispatcher, wave, opts, session, tally)
            if k + 1 < len(todo):
                tiles = waves.submit_tiles(dispatcher, todo[k + 1], opts, session, plan,
                                           tally)
            with tally.timed("extract bricks"):
                waves.collect_bricks(dispatcher, bricks, wave, session, tally)
            with tally.timed("write"):
                commit.write_wave(wave, dispatcher, opts, session, plan, tally)
        with tally.timed("write"):
            commit.write_others(plan.others(), opts, session, plan, tally)
        if self.loads_healpix():
            with tally.timed("healpix"):
                zpix.load(dispatcher, opts, session, tally)
        with tally.timed("finalize"):
            finish.finalize(session, tally)
        return finish.finish(dispatcher, session, plan, tally)

    def loads_healpix(self) -> bool:
        """``--healpix``/``--no-healpix``, else: a named production (not ``daily``) loaded
        whole (no ``--tiles``)."""
        if self.opts.healpix is not None:
            return self.opts.healpix
        return self.opts.paths.specprod != "daily" and not self.opts.tiles

    def abandon(self, outcome: str) -> None:
        """Best effort after a failure that stops the run: record it as ``outcome``."""
        if self.session is not None and self.plan is not None:
            self.session.abandon(outcome, runrecord.summary_counts(self.plan, self.tally))

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
