"""Before a load writes: its options, its plan, its session.

* :func:`plan_run` — on an open connection: check the schema, take its lock, read the
  tiles file, the exposures file and the load state, and diff them
  (:mod:`specprod_db.load.plan`) into a :class:`Plan`.  ``specprod-db status`` calls it
  too (:func:`specprod_db.ops.status.pending`), without loading anything.
* :func:`begin` — the stage directory (checked, claimed, cleaned) and the ``load_run``
  row: a :class:`Session`.
* :func:`prepare_write` — before the first write: the indexes of a bulk load, the run's
  ``keep`` table, the writer session's settings.
"""
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import psycopg2
from psycopg2 import sql

from specprod_db import faults, stage
from specprod_db.db import build_scheduler, builds
from specprod_db.db.connect import bulk_session, connect, schema_exists, server_stop
from specprod_db.db.lock import acquire_lock, check_write_access, database_identity, read_state
from specprod_db.errors import InputError, RunRefused, one_line
from specprod_db.extract import redshift, tile
from specprod_db.load import fingerprints, photometry_ids, runrecord, tile_writer, writer_ranks
from specprod_db.load.photometry_ids import PhotometryIds
from specprod_db.load.plan import (INSERT, UPDATE, MassDeleteRefused, TileAction, absent_tiles,
                                   make_plan)
from specprod_db.load.tally import Tally
from specprod_db.log import get_logger


@dataclass
class Options:
    """What a ``load`` (or ``plan``) is asked to do; the same on every rank."""
    schema: str
    paths: Any  # specprod_db.paths.Paths
    dsn: str = ""
    stage_dir: Optional[str] = None
    tiles: Optional[list[int]] = None
    dry_run: bool = False
    no_delete: bool = False
    allow_mass_delete: bool = False
    max_delete_fraction: float = 0.1
    max_delete_count: int = 3
    show_unchanged: bool = False
    initial: bool = False  # bulk mode: keys, indexes and primary flags built at the end
    wave_tiles: int = 64   # tiles extracted, matched and written together (memory bound)
    writers: int = 1       # >1: ranks 1..writers write tiles concurrently (writer_ranks.py)
    build_connections: int = 3  # sessions building the keys and indexes at the end (build_scheduler.py)
    stage_min_free: int = 0  # bytes the stage directory must have free to start
    command: str = "load"
    healpix: Optional[bool] = None  # HEALPix redshifts (zpix); None: not daily


@dataclass
class Plan:
    """The plan of a run: one action per tile, the load state it was diffed with, the
    tiles file's bad lines and what was read (path, resolved path, size, SHA-256)."""
    actions: list[TileAction]
    state: dict[int, dict] = field(default_factory=dict)
    bad_lines: int = 0
    tiles_file: dict[str, Any] = field(default_factory=dict)

    def extracted(self) -> list[TileAction]:
        """The INSERT and UPDATE actions: the tiles whose inputs are read."""
        return [a for a in self.actions if a.action in (INSERT, UPDATE)]

    def others(self) -> list[TileAction]:
        """Every other action (DELETE, REFRESH, FAIL, SKIP, UNCHANGED)."""
        return [a for a in self.actions if a.action not in (INSERT, UPDATE)]


@dataclass
class Session:
    """The root's side of the database during a run: its connection, ``load_run`` id,
    stage directory, the run's ``keep`` table (TARGETIDs whose photometry stays), the
    touched table of writer ranks, whether every flag and index is rebuilt at the end,
    and the stage files staged so far (the manifest)."""
    conn: Any  # a specprod_db.db.connect.Connection
    schema: str
    # run_id and stage_dir are set by begin(), keep by prepare_write(): None before, which
    # only open_session, plan_run and abandon see (typed as after, for the stages)
    run_id: int = None  # type: ignore[assignment]
    stage_dir: str = None  # type: ignore[assignment]
    keep: sql.Composable = None  # type: ignore[assignment]
    touched: Optional[sql.Composable] = None
    rebuild: bool = False
    wrote: bool = False
    dsn: str = ""               # where the builds of the end connect (db/build_scheduler.py)
    build_connections: int = 3
    known: Optional[PhotometryIds] = None  # photometry's TARGETIDs (photometry_ids)
    staged: dict[str, Any] = field(default_factory=lambda: {"tiles": {}, "bricks": []})

    def close(self) -> None:
        if self.conn is not None and not self.conn.closed:
            self.conn.close()

    def abandon(self, outcome: str, counts: dict) -> None:
        """Best effort after a failure that stops the run: record it as ``outcome``."""
        if self.run_id is None or self.conn is None or self.conn.closed:
            return
        try:
            runrecord.finish(self.conn, self.schema, self.run_id, outcome, counts)
        except psycopg2.Error:
            pass  # the next run marks an unfinished row 'interrupted'

    def write_manifest(self, plan: Plan, tally: Tally) -> None:
        """``manifest.json`` of the stage directory (for the operator only)."""
        manifest = {"run_id": self.run_id, "schema": self.schema,
                    "plan": [{"tileid": a.tileid, "action": a.action, "reason": a.reason}
                             for a in plan.actions],
                    "tiles": self.staged["tiles"], "bricks": self.staged["bricks"],
                    "failed": {str(t): f.message for t, f in tally.failures.items()}}
        try:
            stage.write_manifest(self.stage_dir, manifest)
        except OSError as err:  # a full stage disk: the manifest is for the operator only
            get_logger().warning("stage directory %s: manifest.json not written: %s",
                                 self.stage_dir, err)


def check_ranks(opts: Options, ranks: int) -> None:
    """``--writers K`` needs the root, K writers and one extracting rank."""
    if opts.writers > 1 and ranks < opts.writers + 2 and not opts.dry_run:
        raise RunRefused(f"--writers {opts.writers} needs at least {opts.writers + 2} "
                         f"ranks (the root, the writers and one to extract); this job "
                         f"has {ranks}")


def open_session(opts: Options) -> Session:
    """A connection to the database of ``opts`` (a refusal, or exit 3, on failure)."""
    try:
        return Session(connect(opts.dsn), opts.schema)
    except (InputError, OSError, psycopg2.Error) as err:
        raise server_stop(err, None, "planning") or RunRefused(one_line(err)) from None


def plan_run(conn: Any, opts: Options, tally: Tally) -> Plan:
    """Check, lock, and diff the tiles file with the load state (no transaction stays
    open).  Tiles named by ``--tiles`` that the file lacks are failed in ``tally``."""
    try:
        if not schema_exists(conn, opts.schema):
            raise RunRefused(f"schema {opts.schema} does not exist; run "
                             f"'specprod-db init --schema {opts.schema}' first")
        from specprod_db.db.migrate import check_layout
        check_layout(conn, opts.schema)
        if not opts.dry_run:
            check_write_access(conn, opts.schema)
        acquire_lock(conn, opts.schema)
        state = read_state(conn, opts.schema, opts.tiles)
        conn.rollback()  # no transaction stays open while planning
        faults.hit("plan")  # failure tests only (faults.py)
        return _plan_actions(opts, state, tally)
    except (InputError, OSError, psycopg2.Error) as err:
        raise server_stop(err, conn, "planning") or RunRefused(one_line(err)) from None


def _plan_actions(opts: Options, state: dict, tally: Tally) -> Plan:
    paths, log = opts.paths, get_logger()
    tiles_path = paths.tiles()
    if not os.path.exists(tiles_path):
        raise RunRefused(f"tiles file {tiles_path} does not exist")
    tiles_file: dict[str, Any] = {}
    table, problems, bad_lines = tile.read_tiles_file(tiles_path, info=tiles_file)
    if len(table) == 0 and not problems:
        raise RunRefused(f"tiles file {tiles_path} has no tiles")
    exposures, frames = tile.read_exposures_file(paths.exposures())
    orphans = sorted(set(exposures["TILEID"].tolist()) - set(table["TILEID"].tolist()))
    if orphans:
        n = int(np.isin(exposures["TILEID"], orphans).sum())
        tally.warn("orphan_exposures", n, "%d exposure row(s) of %d tile(s) not in the "
                   "tiles file are ignored: %s", n, len(orphans),
                   ", ".join(map(str, orphans[:10])))

    def planned(tileid: int, line: dict, old: Optional[dict]) -> dict:
        old = old or {}
        return {
            "exposures_hash": fingerprints.exposures_digest(exposures, frames, tileid),
            "redrock_fingerprint": fingerprints.planned(
                old.get("redrock_fingerprint"), fingerprints.stat(
                    redshift.redrock_files(paths, tileid, line["LASTNIGHT"]))),
            "fiberassign_fingerprint": fingerprints.planned(
                old.get("fiberassign_fingerprint"),
                fingerprints.stat(tile.fiberassign_files(paths, tileid)))}

    def plan(allow_mass_delete: bool) -> list[TileAction]:
        return make_plan(table, problems, state, planned, tiles=opts.tiles,
                         no_delete=opts.no_delete,
                         max_delete_fraction=opts.max_delete_fraction,
                         max_delete_count=opts.max_delete_count,
                         bad_lines=bad_lines, allow_mass_delete=allow_mass_delete)
    try:
        actions = plan(opts.allow_mass_delete)
    except MassDeleteRefused as err:
        if not opts.dry_run:
            raise
        log.warning("the load would refuse to start: %s", err)  # the plan is still shown
        actions = plan(True)
    for tid in absent_tiles(opts.tiles, actions):  # the run exits 1
        message = f"tile {tid}: not in the tiles file {tiles_path} (named by --tiles)"
        log.error("%s", message)
        tally.fail(tid, message)
    return Plan(actions, state, bad_lines, tiles_file)


def begin(session: Session, opts: Options, plan: Plan, ranks: int) -> None:
    """The stage directory (checked, claimed, cleaned) and the ``load_run`` row."""
    identity = database_identity(session.conn)
    session.stage_dir = opts.stage_dir or stage.default_directory(identity, opts.schema)
    stage.check_directory(session.stage_dir, opts.stage_min_free)
    stage.claim(session.stage_dir, identity, opts.schema)
    stage.cleanup_temporaries(session.stage_dir)
    stage.remove_stale_tiles(session.stage_dir, [a.tileid for a in plan.extracted()])
    session.run_id = runrecord.start(session.conn, opts.schema, ranks, opts.command, {
        "tiles": opts.tiles, "stage_dir": session.stage_dir, "no_delete": opts.no_delete,
        "initial": opts.initial, "writers": opts.writers, **opts.paths.as_dict(),
        "tiles_file": plan.tiles_file})


def prepare_write(session: Session, opts: Options, plan: Plan, tally: Tally) -> None:
    """Before the first write: the keys and indexes of a bulk load, the run's ``keep``
    table (or the root's set of photometry TARGETIDs, :mod:`~specprod_db.load.photometry_ids`),
    the writer session's settings.

    ``--initial`` drops every key, foreign key and index of the data tables but
    :data:`~specprod_db.db.builds.BULK_KEEP` (the writer's ``ON CONFLICT`` needs them;
    :data:`~specprod_db.db.builds.BULK_KEEP_ALONE` when the root writes alone and knows
    photometry's TARGETIDs), to be built once at the end
    (:func:`specprod_db.load.finish.finalize`).  A run
    without ``--initial`` on a schema lacking builds (:func:`specprod_db.db.builds.missing`:
    an unfinished initial load, a foreign key left NOT VALID included) runs as the rerun
    of that bulk load: it writes as the bulk load does (a key it lacks refuses nothing
    until it is built), computes every flag and builds what is missing at the end; the
    keys the writer needs are built first, before anything is written.
    """
    conn, log = session.conn, get_logger()
    session.dsn, session.build_connections = opts.dsn, opts.build_connections
    lacking = builds.missing(conn, opts.schema)
    session.rebuild = opts.initial or bool(lacking)
    session.known = photometry_ids.start(conn, opts.schema, session.rebuild,
                                         plan.actions)
    if session.known is not None:
        log.info("photometry is empty and the plan removes none: its TARGETIDs are "
                 "kept in memory by the root, not asked of the database")
    keep = builds.BULK_KEEP_ALONE if session.known is not None and opts.writers <= 1 \
        else builds.BULK_KEEP
    if opts.initial:
        log.info("initial load: dropping keys and indexes until the end: %s",
                 ", ".join(builds.drop(conn, opts.schema, builds.bulk_builds(keep)))
                 or "none")
        bulk_session(conn)
    elif lacking:
        log.warning("%s; this run writes as that bulk load does and builds them at the "
                    "end", builds.unfinished_message(opts.schema, [b.name for b in lacking]))
    writer_keys(opts, tally, [b for b in lacking if b.name in keep])
    writer_ranks.drop_shared(conn, opts.schema)  # left by a crashed run
    if opts.writers > 1:
        session.keep, session.touched = writer_ranks.create_shared(conn, opts.schema,
                                                                   session.run_id)
    else:
        session.keep = tile_writer.keep_targetids(conn)  # filled unless session.known


def writer_keys(opts: Options, tally: Tally, lacking: list[builds.Build]) -> None:
    """Build ``lacking``, keys the writing needs, before it writes (dropped by hand, or
    by a bulk load that did not need them: a rerun asks the database which TARGETIDs
    have photometry, the HEALPix stage looks them up); their seconds go to
    ``counts["builds"]`` with the end of the load's."""
    if lacking:
        get_logger().info("building %s before writing", ", ".join(b.name for b in lacking))
        tally.counts.setdefault("builds", {}).update(
            build_scheduler.build_missing(opts.dsn, opts.schema, lacking, connections=1))
