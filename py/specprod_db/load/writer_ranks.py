"""Several writer ranks (``load --writers K``): tiles written concurrently.

By default the root writes every tile itself.  With ``--writers K`` (K > 1), ranks
1..K only write: the root sends each tile of a wave as a ``write`` task (the tile's
stage file, its recorded state, and the photometry rows its targets need) and the
writer rank loads it in one transaction on its own connection, exactly as the root
would (:func:`specprod_db.load.tile_writer.write_tile`).  The other ranks go on extracting.

What makes concurrent transactions safe:

* every tile writes disjoint rows (its TILEID) but photometry is shared: each tile's
  photometry rows are inserted in one ``INSERT ... ORDER BY targetid ON CONFLICT DO
  NOTHING`` (:func:`specprod_db.load.photometry_rows.first_per_targetid`), so two writers inserting
  the same TARGETIDs lock them in the same order: one waits for the other, never a
  deadlock;
* the photometry rows of a TARGETID are the same in every tile of a wave (the root
  chooses them once per wave), so which writer commits first does not change the
  result;
* the primary-spectrum flags of a TARGETID depend on rows of several tiles: writers
  do not compute them; each records the TARGETIDs it touched in the run's shared
  table, and the root recomputes their flags once, after the waves;
* the run's TARGETIDs protected from orphan deletion (``keep``) and the touched ones
  are ordinary (unlogged) tables of the schema, visible to every writer's session,
  dropped at the end of the run (and at the start of the next, after a crash).
"""
from dataclasses import dataclass, field
from typing import Optional

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import connection

from specprod_db.db.connect import bulk_session, connect, server_stop
from specprod_db.db.sql import transaction
from specprod_db.errors import one_line
from specprod_db.load.jobs import WriteJob

#: This process's connection, per (conninfo, schema, bulk).
_session: dict[tuple[str, str, bool], connection] = {}


def shared_table(schema_name: str, run_id: int, what: str) -> sql.Composed:
    """The identifier of a run's shared TARGETID table (``keep`` or ``touched``)."""
    return sql.SQL("{}.{}").format(sql.Identifier(schema_name),
                                   sql.Identifier(f"_run_{int(run_id)}_{what}"))


def create_shared(conn: connection, schema_name: str,
                  run_id: int) -> tuple[sql.Composed, ...]:
    """The run's ``keep`` and ``touched`` tables (unlogged, empty); returns their
    identifiers ``(keep, touched)``."""
    out = []
    with transaction(conn, original_error=True) as cur:
        for what in ("keep", "touched"):
            ident = shared_table(schema_name, run_id, what)
            cur.execute(sql.SQL("CREATE UNLOGGED TABLE {} (targetid bigint PRIMARY KEY)")
                        .format(ident))
            out.append(ident)
    return tuple(out)


def drop_shared(conn: connection, schema_name: str) -> None:
    """Drop every run's shared TARGETID tables in the schema."""
    with transaction(conn, original_error=True) as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s AND "
                    "tablename ~ '^_run_[0-9]+_(keep|touched)$'", (schema_name,))
        for (name,) in cur.fetchall():
            cur.execute(sql.SQL("DROP TABLE {}.{}").format(sql.Identifier(schema_name),
                                                           sql.Identifier(name)))


def _connection(job: WriteJob) -> connection:
    key = (job.dsn, job.schema, job.bulk)
    conn = _session.get(key)
    if conn is None or conn.closed:
        conn = connect(job.dsn)
        if job.bulk:
            bulk_session(conn)
        _session.clear()
        _session[key] = conn
    return conn


@dataclass
class WriteResult:
    """A write task's outcome: the rows written (table -> count), or why the database
    refused them (``error``: the tile fails, the run goes on)."""
    counts: dict[str, int] = field(default_factory=dict)
    error: Optional[str] = None


def write_task(job: WriteJob) -> WriteResult:
    """A writer rank's task: load one tile (:class:`~specprod_db.load.jobs.WriteJob`).
    A lost connection raises :class:`~specprod_db.errors.DatabaseLost`, which stops the
    run."""
    from specprod_db.load import tile_writer
    conn = _connection(job)
    action = job.action
    tables = tile_writer.staged_tile_rows(job.stage)  # the wave's photometry: in the job
    try:
        mode = tile_writer.WriteMode.on_writer_rank(
            shared_table(job.schema, job.run_id, "keep"),
            shared_table(job.schema, job.run_id, "touched"))
        counts = tile_writer.write_tile(conn, job.schema, action, tables, job.state,
                                        job.run_id, [job.photometry], mode)
    except psycopg2.Error as err:
        stop = server_stop(err, conn, f"writing tile {action.tileid}")
        if stop is not None:  # cancelled, timed out, connection lost: the run stops
            raise stop from None
        return WriteResult(error=f"tile {action.tileid}: the database refused its rows: "
                                 f"{one_line(err)}")
    return WriteResult(counts)
