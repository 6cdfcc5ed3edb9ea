"""The HEALPix stage of a named (static) production: ``zpix`` from the per-HEALPix
redrock files, after every tile (decision 13, doc/initial.rst).

One task per file (:func:`specprod_db.load.tasks.extract_healpix`), each file written in one
transaction as its result arrives (:func:`specprod_db.load.tile_writer.write_healpix`); files the
schema already holds are skipped, so a rerun completes an interrupted or partly failed
load.
"""
import os

import psycopg2

from specprod_db import mpi
from specprod_db.db import builds
from specprod_db.db.connect import server_stop
from specprod_db.errors import InputError, one_line
from specprod_db.extract import redshift, zpix
from specprod_db.load import prepare, tasks, tile_writer
from specprod_db.load.jobs import HealpixJob
from specprod_db.load.prepare import Options, Session
from specprod_db.load.tally import Tally
from specprod_db.log import get_logger


def load(dispatcher: mpi.Dispatcher, opts: Options, session: Session, tally: Tally) -> None:
    """The production's HEALPix redrock files that ``zpix`` lacks, one task each;
    each written as it arrives, in one transaction (:func:`tile_writer.write_healpix`),
    after every tile: their TARGETIDs' photometry comes from the tiles.  A failed
    file is recorded (the run exits 1) and loads on the next run.  A file whose
    FIBERMAP DESINAME differs from the computed one is counted
    (``warnings.desiname_mismatch``, one line per file with an example)."""
    conn, log = session.conn, get_logger()
    files = opts.paths.healpix_files()
    loaded = tile_writer.loaded_healpix(conn, opts.schema)
    todo = [f for f in files if f[:3] not in loaded]
    tally.counts["healpix"] = {"files": len(files), "already_loaded": len(files) - len(todo),
                               "written": 0}
    names = {os.path.basename(tasks.healpix_stage(session.stage_dir, zpix.healpix_name(
        *f[:3])).path) for f in todo}
    for name in os.listdir(session.stage_dir):  # of files since loaded, or gone
        if name.startswith("healpix-") and name.endswith(".h5") and name not in names:
            tasks.healpix_stage(session.stage_dir, name[8:-3]).remove()
    log.info("HEALPix redrock files: %d, %d loaded before, %d to load", len(files),
                  len(files) - len(todo), len(todo))
    if not todo:
        return
    if session.rebuild:  # the files' TARGETIDs are looked up in photometry: its key first
        prepare.writer_keys(opts, tally, [b for b in builds.missing(conn, opts.schema)
                                   if b.name in builds.BULK_KEEP])
    sizes = {f[:3]: os.path.getsize(f[3]) for f in todo}
    jobs = [HealpixJob(s, p, h, opts.paths, session.stage_dir) for s, p, h, _ in todo]
    batch = dispatcher.submit("healpix", jobs, progress=mpi.Progress("healpix", len(jobs)),
                              size=lambda j: sizes[(j.survey, j.program, j.healpix)])
    done = 0
    while done < batch.n:
        if done == len(batch.results):
            dispatcher.poll(block=True)
            continue
        job, result = batch.results[done]
        batch.results[done] = None  # the root keeps one file's rows at a time
        done += 1
        name = job.name
        if isinstance(result, mpi.TaskFailure):
            tally.fail_healpix(name, result.message)
            continue
        mismatch = redshift.desiname_mismatch(result.stats)
        if mismatch:  # the computed DESINAME is loaded, never the file's
            tally.warn("desiname_mismatch", mismatch[0], "healpix %s: %s", name, mismatch[1])
        try:
            c = tile_writer.write_healpix(conn, opts.schema, job.survey, job.program,
                                          job.healpix, result.stage.tables(("zpix",))["zpix"],
                                          primary=not session.rebuild)
        except InputError as err:
            tally.fail_healpix(name, one_line(err))
            continue
        except psycopg2.Error as err:
            stop = server_stop(err, conn, f"writing healpix {name}")
            if stop is not None:  # cancelled, timed out, connection lost: the run stops
                raise stop from None
            message = f"healpix {name}: the database refused its rows: {one_line(err)}"
            tally.fail_healpix(name, message)
            continue
        result.stage.remove()
        session.wrote = True
        tally.counts["healpix"]["written"] += 1
        tally.add_rows(c)
        dispatcher.poll()
    for name, failure in sorted(tally.healpix_failures.items()):
        log.error("healpix %s failed: %s", name, failure.message)
