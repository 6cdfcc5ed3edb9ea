"""The load, rank by rank: plan (rank 0) -> extract (workers) -> stage -> write (rank 0).

``load(comm, options)`` is called by every rank with the same options.  Rank 0 plans and
broadcasts the plan, hands out tile tasks then brick tasks dynamically (``mpi.run_tasks``),
and is the single writer: bricks' photometry first, then one transaction per tile (its
rows, its state and the primary flags of its TARGETIDs), deletes likewise, then ANALYZE.
Every rank returns the same exit status: 0 when every planned tile loaded, 1 when some tile failed (recorded
in ``tile_state``), 2 when the run could not start.
"""
import json
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import psycopg2
from psycopg2 import sql

from . import bricks, db, finalize, mpi, stage, tasks, writer
from .db import qualified
from .extract import redshift, tile
from .log import get_logger, set_rank
from .runlock import RunRefused, acquire_lock, check_write_access, read_state
from .plan import (DELETE, FAIL, INSERT, REFRESH, UNCHANGED, UPDATE, MassDeleteRefused,
                   TileAction, format_plan, make_plan, summary)

#: Legacy Surveys photometry rows written per transaction (bricks hold ~50 rows each;
#: one transaction per brick cost 9 ms each, doc/benchmarks.md); ~40 MB of rows.
PHOTOMETRY_BATCH_ROWS = 100_000


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
    stage_min_free: int = 0  # bytes the stage directory must have free to start
    command: str = "load"
    extra: dict = field(default_factory=dict)


class DatabaseLost(RuntimeError):
    """The connection broke while writing (server restarted or killed): stop the run."""


def exposures_hash(exposures, frames, tileid):
    """Fingerprint of the qualifying exposures of a tile and their frames."""
    import hashlib
    sel = (exposures["TILEID"] == tileid) & (exposures["EFFTIME_SPEC"] > 0)
    e = np.sort(exposures[sel], order="EXPID")
    f = frames[np.isin(frames["EXPID"], e["EXPID"])]
    f = f[np.lexsort((f["CAMERA"], f["EXPID"]))]
    return hashlib.sha256(e.tobytes() + f.tobytes()).hexdigest()


def fiberassign_fingerprint(paths, tileid, old):
    """size:mtime:sha256 of the fiberassign file; hashed again only if size/mtime moved."""
    path = paths.fiberassign_file(tileid)
    return tile.current_fingerprint((old or {}).get("fiberassign_fingerprint"),
                                    tile.fingerprint(path, content=False),
                                    lambda: tile.fingerprint(path))


def redrock_fingerprint(paths, tileid, lastnight, old):
    """The redrock files' fingerprint; hashed again only if a name, size or mtime moved,
    so an unchanged tile costs ``stat`` calls only."""
    return tile.current_fingerprint(
        (old or {}).get("redrock_fingerprint"),
        redshift.redrock_fingerprint(paths, tileid, lastnight, content=False),
        lambda: redshift.redrock_fingerprint(paths, tileid, lastnight))


def plan_run(conn, opts):
    """Rank 0: read the tiles and exposures files and the load state; make the plan."""
    log = get_logger()
    paths = opts.paths
    tiles_path = paths.tiles()
    if not os.path.exists(tiles_path):
        raise RunRefused(f"tiles file {tiles_path} does not exist")
    table, problems, bad_lines = tile.read_tiles_file(tiles_path)
    if len(table) == 0 and not problems:
        raise RunRefused(f"tiles file {tiles_path} has no tiles")
    exposures, frames = tile.read_exposures_file(paths.exposures())
    known = set(np.asarray(table["TILEID"]).tolist())
    orphans = sorted(set(exposures["TILEID"].tolist()) - known)
    if orphans:
        log.warning("%d exposure row(s) of %d tile(s) not in the tiles file are ignored: %s",
                    int(np.isin(exposures["TILEID"], orphans).sum()), len(orphans),
                    ", ".join(map(str, orphans[:10])))
    state = read_state(conn, opts.schema)

    def fingerprints(tileid, line, old):
        return {"exposures_hash": exposures_hash(exposures, frames, tileid),
                "redrock_fingerprint": redrock_fingerprint(paths, tileid,
                                                           line["LASTNIGHT"], old),
                "fiberassign_fingerprint": fiberassign_fingerprint(paths, tileid, old)}

    def plan(allow_mass_delete):
        return make_plan(table, problems, state, fingerprints, tiles=opts.tiles,
                         no_delete=opts.no_delete,
                         max_delete_fraction=opts.max_delete_fraction,
                         max_delete_count=opts.max_delete_count, bad_lines=bad_lines,
                         allow_mass_delete=allow_mass_delete)
    try:
        return plan(opts.allow_mass_delete)
    except MassDeleteRefused as err:
        if not opts.dry_run:
            raise
        log.warning("the load would refuse to start: %s", err)  # the plan is still shown
        return plan(True)


def _start_run(conn, opts, comm):
    with conn.cursor() as cur:
        # we hold the schema's lock: an unfinished run is one that crashed
        cur.execute(sql.SQL("UPDATE {} SET outcome = 'interrupted' WHERE finished IS NULL "
                            "AND outcome IS NULL").format(qualified(opts.schema, "load_run")))
        cur.execute(sql.SQL("INSERT INTO {} (started, ranks, command, options) "
                            "VALUES (now(), %s, %s, %s) RETURNING id").format(
            qualified(opts.schema, "load_run")),
            (comm.size, " ".join(sys.argv) or opts.command,
             json.dumps({"tiles": opts.tiles, "stage_dir": opts.stage_dir,
                         "no_delete": opts.no_delete, **opts.paths.as_dict()})))
        run_id = cur.fetchone()[0]
    conn.commit()
    return run_id


def _finish_run(conn, opts, run_id, outcome, counts):
    conn.rollback()
    with conn.cursor() as cur:
        cur.execute(sql.SQL("UPDATE {} SET finished = now(), outcome = %s, counts = %s "
                            "WHERE id = %s").format(qualified(opts.schema, "load_run")),
                    (outcome, json.dumps(counts, default=str), run_id))
    conn.commit()


def load(comm, opts):
    """Run the whole pipeline on every rank; returns the common exit status."""
    set_rank(comm.rank, comm.size)
    t0 = time.time()
    conn = None
    header = None
    if comm.rank == 0:
        try:
            conn = db.connect(opts.dsn)
            if not db.schema_exists(conn, opts.schema):
                raise RunRefused(f"schema {opts.schema} does not exist; run "
                                 f"'specprod-db init --schema {opts.schema}' first")
            if not opts.dry_run:
                check_write_access(conn, opts.schema)
            acquire_lock(conn, opts.schema)
            actions = plan_run(conn, opts)
            if not opts.dry_run:
                stage.check_directory(opts.stage_dir, opts.stage_min_free)
                stage.cleanup_temporaries(opts.stage_dir)
                stage.remove_stale_tiles(opts.stage_dir, [
                    a.tileid for a in actions if a.action in (INSERT, UPDATE)])
            header = {"actions": [a.as_dict() for a in actions]}
        except (RunRefused, MassDeleteRefused, db.ConnectionFailed, stage.StageError,
                OSError, psycopg2.Error) as err:
            header = {"error": f"{type(err).__name__ if isinstance(err, psycopg2.Error) else ''}"
                               f"{' ' if isinstance(err, psycopg2.Error) else ''}"
                               f"{' '.join(str(err).split())}"}
        except tile.InputError as err:
            header = {"error": str(err)}
    mpi.wait_quietly(comm)  # workers sleep while rank 0 plans
    header = comm.bcast(header, root=0)
    if "error" in header:
        if comm.rank == 0:
            print(f"specprod-db: {header['error']}", file=sys.stderr)
            if conn is not None:
                conn.close()
        return 2
    actions = [TileAction(**a) for a in header["actions"]]
    if opts.dry_run:
        if comm.rank == 0:
            print(format_plan(actions, opts.show_unchanged))
            conn.close()
        return 0
    try:
        status = _run(comm, conn, opts, actions, t0)
    except Exception as err:  # rank 0 only: workers return from _run by themselves
        status = _failed_run(comm, opts, err)
    mpi.wait_quietly(comm)  # workers sleep while rank 0 writes
    status = comm.bcast(status, root=0)
    if conn is not None:
        conn.close()
    return status


def _failed_run(comm, opts, err):
    """Rank 0 could not go on (e.g. the database went away): say so and stop.

    Every tile is one transaction, so what was committed is whole and the interrupted
    tile was rolled back by the server; a rerun completes the work.  While the workers
    still wait for tasks there is no clean way back: the job is aborted.
    """
    import traceback
    message = " ".join(str(err).split())
    print(f"specprod-db: load interrupted: {type(err).__name__}: {message}; tiles "
          f"committed before are complete, the interrupted one was rolled back; rerun "
          f"the load", file=sys.stderr)
    get_logger().debug("%s", traceback.format_exc())
    if comm.size > 1 and opts.extra.get("phase") != "write":
        comm.Abort(3)
    return 3


def _run(comm, conn, opts, actions, t0):
    """Extraction on every rank, writing on rank 0; returns the status on rank 0."""
    log = get_logger()
    timers = {}
    run_id = _start_run(conn, opts, comm) if comm.rank == 0 else None
    failures = {}   # tileid -> message
    counts = {"tables": {}, "plan": summary(actions)}

    # --- tile tasks ---------------------------------------------------------------
    t = time.time()
    jobs = [{"action": a.as_dict(), "paths": opts.paths, "stage_dir": opts.stage_dir}
            for a in actions if a.action in (INSERT, UPDATE)] if comm.rank == 0 else None
    tile_results = mpi.run_tasks(comm, jobs, tasks.extract_tile,
                                 progress=mpi.Progress("tile") if comm.rank == 0 else None)
    timers["extract tiles"] = time.time() - t
    brick_jobs = None
    staged = {}
    if comm.rank == 0:
        for job, result in tile_results:
            tid = job["action"]["tileid"]
            if isinstance(result, mpi.TaskFailure):
                failures[tid] = result.message
            else:
                staged[tid] = result
                _warn_stats(tid, result.get("stats") or {}, counts)
                if result.get("missing_petals"):
                    log.warning("tile %d: no redrock file for petal(s) %s", tid,
                                ", ".join(map(str, result["missing_petals"])))
        brick_jobs, tiles_of_brick = bricks.brick_jobs(conn, opts, staged, actions)
        keep = bricks.run_targetids(staged)
    # --- brick tasks --------------------------------------------------------------
    t = time.time()
    brick_results = mpi.run_tasks(comm, brick_jobs, tasks.extract_brick,
                                  progress=mpi.Progress("brick") if comm.rank == 0 else None)
    timers["extract bricks"] = time.time() - t
    if comm.rank != 0:
        return None
    # --- write (rank 0) -----------------------------------------------------------
    opts.extra["phase"] = "write"  # the workers now wait for the final status only
    t = time.time()
    stage.write_manifest(opts.stage_dir, {
        "run_id": run_id, "schema": opts.schema,
        "plan": [{"tileid": a.tileid, "action": a.action, "reason": a.reason}
                 for a in actions],
        "tiles": {str(k): v["file"] for k, v in staged.items()},
        "bricks": [r["file"] for _, r in brick_results
                   if not isinstance(r, mpi.TaskFailure)],
        "failed": {str(k): v for k, v in failures.items()}})
    rebuild, written = _write(conn, opts, actions, staged, brick_results, tiles_of_brick,
                              keep, failures, counts["tables"], run_id)
    timers["write"] = time.time() - t
    t = time.time()
    _finalize(conn, opts, actions, rebuild, failures, brick_results, keep)
    timers["finalize"] = time.time() - t
    for path in written:
        tasks.remove_stage_file(path)
    if not failures:  # bricks of a crashed run too; kept for a rerun after failures
        stage.remove_bricks(opts.stage_dir)
    counts["failed"] = {str(k): v for k, v in failures.items()}
    counts["timers"] = timers
    outcome = "failed" if failures else "ok"
    _finish_run(conn, opts, run_id, outcome, counts)
    _report(actions, failures, counts["tables"], timers, time.time() - t0, run_id)
    return 1 if failures else 0


def _write(conn, opts, actions, staged, brick_results, tiles_of_brick, keep, failures,
           tcounts, run_id):
    """Rank 0: Legacy Surveys photometry in batches, then one transaction per tile.

    Fills ``failures`` and ``tcounts``; returns ``(rebuild, written stage files)``.
    """
    log = get_logger()
    pending, npending = [], 0
    for job, result in brick_results:
        if isinstance(result, mpi.TaskFailure):
            failed = {b.decode(): result.message
                      for b in np.unique(job["targets"]["BRICKNAME"])}
        else:
            failed = result.get("failed") or {}
        for brick, message in failed.items():
            for tid in tiles_of_brick.get(brick, ()):
                failures.setdefault(tid, f"tile {tid}: brick {brick}: {message}")
        if isinstance(result, mpi.TaskFailure):
            continue
        pending.append(stage.read(result["file"], ["photometry"])["photometry"])
        npending += len(pending[-1])
        if npending >= PHOTOMETRY_BATCH_ROWS:
            tcounts["photometry (Legacy Surveys)"] = tcounts.get(
                "photometry (Legacy Surveys)", 0) + writer.write_photometry(
                conn, opts.schema, np.concatenate(pending))
            pending, npending = [], 0
    if pending:
        tcounts["photometry (Legacy Surveys)"] = tcounts.get(
            "photometry (Legacy Surveys)", 0) + writer.write_photometry(
            conn, opts.schema, np.concatenate(pending))
    rebuild = opts.initial or bool(db.missing_indexes(conn, opts.schema))
    if opts.initial:
        log.info("initial load: dropping secondary indexes until the end: %s",
                 ", ".join(db.drop_secondary_indexes(conn, opts.schema)))
    written = []
    for a in actions:
        try:
            if a.tileid in failures or a.action == FAIL:
                message = failures.get(a.tileid) or a.reason
                failures[a.tileid] = message
                writer.record_failure(conn, opts.schema, a.tileid, message, run_id)
            elif a.action in (INSERT, UPDATE):
                tables = stage.read(staged[a.tileid]["file"])
                c, _ = writer.write_tile(conn, opts.schema, a, tables, run_id, keep,
                                         primary=not rebuild)
                for k, v in c.items():
                    tcounts[k] = tcounts.get(k, 0) + v
                written.append(staged[a.tileid]["file"])
                log.info("tile %d %s: %s", a.tileid, a.action,
                         ", ".join(f"{k} {v}" for k, v in c.items()))
            elif a.action == DELETE:
                c, _ = writer.delete_tile(conn, opts.schema, a, run_id, keep)
                log.warning("tile %d DELETED (%s): %s", a.tileid, a.reason,
                            ", ".join(f"{k} {v}" for k, v in c.items()))
            elif a.action == REFRESH:
                writer.refresh_state(conn, opts.schema, a, run_id)
        except (psycopg2.Error, OSError, KeyError, ValueError) as err:
            message = f"tile {a.tileid}: {type(err).__name__}: {' '.join(str(err).split())}"
            if conn.closed:
                raise DatabaseLost(f"database connection lost while writing {message}") \
                    from None
            log.error(message)
            failures[a.tileid] = message
            writer.record_failure(conn, opts.schema, a.tileid, message, run_id)
    return rebuild, written


def _finalize(conn, opts, actions, rebuild, failures, brick_results, keep):
    """Rank 0 after the writes: orphaned photometry of failed tiles, the flags and
    indexes of a bulk load, ANALYZE."""
    log = get_logger()
    # photometry staged by bricks whose tiles all failed is not kept
    if failures:
        cand = np.concatenate([job["targets"]["TARGETID"] for job, _ in brick_results]
                              + [np.fromiter(keep, dtype=np.int64, count=len(keep))])
        with conn.cursor() as cur:
            n = writer.delete_orphan_photometry(cur, opts.schema, cand)
        conn.commit()
        if n:
            log.info("removed %d photometry row(s) of failed tiles", n)
    if rebuild:
        # after an initial bulk load, or a rerun of an interrupted one: flags of every
        # TARGETID at once, then the secondary indexes, built once rather than row by row
        log.info("primary flags of all ztile rows: %d rows changed",
                 finalize.update_primary(conn, opts.schema))
        db.create_indexes(conn, opts.schema)
        conn.commit()
    if rebuild or any(a.action in (INSERT, UPDATE, DELETE) for a in actions):
        finalize.analyze(conn, opts.schema, ("tile", "exposure", "frame", "photometry",
                                             "target", "fiberassign", "potential", "ztile"))
        conn.commit()


def _warn_stats(tileid, stats, counts):
    """Warnings that count values loaded despite being odd (the run still succeeds)."""
    log = get_logger()
    warnings = counts.setdefault("warnings", {})
    fin = stats.get("finitized") or {}
    if fin:
        n = sum(fin.values())
        warnings["finitized"] = warnings.get("finitized", 0) + n
        log.warning("tile %d: %d non-finite value(s) (NaN/Inf) stored as -9999 in %d "
                    "column(s): %s", tileid, n, len(fin),
                    ", ".join(f"{k} {v}" for k, v in sorted(fin.items())))
    bad = stats.get("targetid_mismatch", 0)
    if bad:
        warnings["targetid_mismatch"] = warnings.get("targetid_mismatch", 0) + bad
        log.warning("tile %d: %d targeting row(s) whose TARGETID does not encode their own "
                    "RELEASE/BRICKID/BRICK_OBJID; loaded with the rows' columns, as "
                    "desispec reads them", tileid, bad)


def _report(actions, failures, tcounts, timers, elapsed, run_id):
    log = get_logger()
    plan_counts = summary(actions)
    lines = [f"load run {run_id} finished in {elapsed:.1f} s",
             "  plan: " + ", ".join(f"{k} {v}" for k, v in sorted(plan_counts.items())),
             "  rows written:"]
    lines += [f"    {k:<28} {v:>10}" for k, v in sorted(tcounts.items())]
    lines += ["  timing:"] + [f"    {k:<28} {v:>9.2f} s" for k, v in timers.items()]
    if not any(plan_counts.get(k) for k in (INSERT, UPDATE, DELETE, REFRESH)) \
            and not failures:
        lines.append(f"  nothing to do: {plan_counts.get(UNCHANGED, 0)} tile(s) unchanged, "
                     f"the database is not changed")
    if failures:
        lines.append(f"  FAILED tiles ({len(failures)}):")
        lines += [f"    {k}: {v}" for k, v in sorted(failures.items())]
    log.info("\n".join(lines))
