"""The end of a load: primary flags, indexes, ANALYZE; the run recorded and reported.

* :func:`finalize` — after a bulk load (or a rerun of an interrupted one), every primary
  flag (``ztile``'s in one part per session, by TARGETID modulo the sessions, each
  table's before its builds), then the keys, foreign keys and indexes the schema lacks,
  CLUSTER on the q3c indexes and ANALYZE of every table, scheduled together on
  ``--build-connections`` sessions (:func:`specprod_db.db.build_scheduler.build_missing` with
  ``finish`` and :func:`flag_parts`); after a daily
  run, the flags of the TARGETIDs writer ranks touched and ANALYZE of the tables whose
  statistics went stale (:mod:`specprod_db.load.finalize` has the SQL).  Fault
  points (:mod:`specprod_db.faults`): ``builds`` before the first build, ``built-NAME``
  after each step of build ``NAME`` (a foreign key: after its NOT VALID add, then after
  its validation).
* :func:`finish` — stage files of the run removed, ``load_run`` finished, the report
  printed on stdout (:mod:`specprod_db.load.runrecord`); returns the exit status.
"""
from typing import Any

from specprod_db import faults, mpi, schema, stage
from specprod_db.db import build_scheduler, builds, violations
from specprod_db.errors import EXIT_FAILED, EXIT_OK
from specprod_db.load import finalize as flags, runrecord, writer_ranks
from specprod_db.load.prepare import Plan, Session
from specprod_db.load.tally import Tally
from specprod_db.log import get_logger


def finalize(session: Session, tally: Tally) -> None:
    """After a bulk load, every primary flag and the keys and indexes; ANALYZE.

    The seconds of each build go to ``load_run.counts["builds"]`` (the builds done
    before a failure too) and the builds' wall time to the report's timing.  Rows a key
    refuses stop the run (:class:`~specprod_db.db.violations.KeyViolation`, exit 1) with the
    table, key and tiles named; the schema stays an unfinished initial load, which
    ``status`` reports."""
    faults.hit("finalize")  # failure tests only (faults.py)
    conn, schema_name, log = session.conn, session.schema, get_logger()
    if session.touched is not None:
        if not session.rebuild:  # the writer ranks left the flags to the root
            log.info("primary flags of the TARGETIDs the writers touched: %d rows changed",
                     flags.update_primary(conn, schema_name, table=session.touched))
            conn.commit()
        writer_ranks.drop_shared(conn, schema_name)
    if session.rebuild:
        # after an initial bulk load, or a rerun of an interrupted one: flags of every
        # TARGETID, then the keys and indexes, built once not row by row; the flags in
        # parts on the build sessions, each table's before its builds
        _build(session, tally)  # with CLUSTER and ANALYZE of every table
        tally.counts["analyzed"] = [t.name for t in schema.TABLES]
    elif session.wrote:  # a daily run: only the tables whose statistics went stale
        tables = flags.stale_tables(conn, schema_name, [t.name for t in schema.TABLES],
                                    flags.changed_rows(tally.counts["tables"]))
        flags.analyze(conn, schema_name, tables)
        conn.commit()
        tally.counts["analyzed"] = tables
        log.info("ANALYZE: %s", ", ".join(tables) or "no table had enough changes")


def flag_parts(schema_name: str, sessions: int) -> dict[str, list[list[Any]]]:
    """The primary flags of every ``ztile`` and ``zpix`` row as ``builds.finishing``'s
    ``first``: ``ztile`` in one part per build session (TARGETIDs modulo the sessions:
    disjoint rows), ``zpix`` (rows of a static production's HEALPix files, empty in a
    daily one) in one."""
    n = max(1, int(sessions))
    return {"ztile": [flags.update_all_sql(schema_name, "ztile", k, n) for k in range(n)],
            "zpix": [flags.update_all_sql(schema_name, "zpix")]}


def _build(session: Session, tally: Tally) -> None:
    """The builds the schema lacks, then CLUSTER and ANALYZE, on
    ``session.build_connections`` sessions; the seconds of each in ``counts["builds"]``
    (the catalog's keys and indexes) and ``counts["maintenance"]`` (``cluster_TABLE``,
    ``analyze_TABLE``)."""
    log, done = get_logger(), tally.counts.setdefault("builds", {})
    upkeep = tally.counts.setdefault("maintenance", {})

    def progress(step: str, seconds: float) -> None:
        name = step.split(": ")[0]
        into = upkeep if name.startswith(("first_", "cluster_", "analyze_")) else done
        into[name] = round(into.get(name, 0.0) + seconds, 3)
        log.debug("built %s in %.2f s", step, seconds)
        faults.hit(f"built-{name}")  # crash tests only (faults.py)

    faults.hit("builds")  # crash tests only (faults.py)
    with tally.timed("builds"):
        try:
            build_scheduler.build_missing(
                session.dsn, session.schema, connections=session.build_connections,
                progress=progress, finish=True,
                first=flag_parts(session.schema, session.build_connections))
        except violations.KeyViolation as err:
            raise violations.KeyViolation(
                f"{err}; {session.schema} is left an {builds.UNFINISHED} (its rows are "
                f"all there, these keys are not): correct the input and rerun "
                f"`{builds.finish_command(session.schema)}`", err.found) from None
    log.info("keys, foreign keys and indexes built: %d; tables clustered on their q3c "
             "index: %s; every table analysed; on %d session(s)", len(done),
             ", ".join(n.removeprefix("cluster_") for n in upkeep
                       if n.startswith("cluster_")) or "none", session.build_connections)


def finish(dispatcher: mpi.Dispatcher, session: Session, plan: Plan, tally: Tally) -> int:
    """The run recorded and reported (with each rank's busy time); its exit status."""
    if not tally.failures:  # bricks of a crashed run too; kept for a rerun after failures
        stage.remove_bricks(session.stage_dir)
    stage.remove_catalogs(session.stage_dir)  # a rerun's waves want other rows
    busy, balance = dispatcher.balance()
    tally.counts["ranks"] = {
        "busy_seconds": {str(r): round(t, 2) for r, t in busy.items()},
        "balance_max_over_mean": round(balance, 3),
        "write_seconds": round(tally.overlap.total, 2),
        "write_seconds_with_workers_busy": round(tally.overlap.hidden, 2)}
    failed = tally.any_failed() or plan.bad_lines
    runrecord.finish(session.conn, session.schema, session.run_id,
                     "failed" if failed else "ok", runrecord.summary_counts(plan, tally))
    print("\n".join(runrecord.report_lines(session.run_id, plan, tally)), flush=True)
    return EXIT_FAILED if failed else EXIT_OK
