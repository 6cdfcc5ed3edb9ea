"""Schema layout versions, and the migrations from each older layout to the current one.

A production schema records its *layout version* (the tables, columns, keys and indexes
this package creates, not the package version) in its ``version`` table, as the row
``package = 'specprod-db-schema'`` (:data:`LAYOUT_PACKAGE`).  This module is the one
place that defines the layouts: :data:`MIGRATIONS`, in order, each from one layout to the
next; :data:`CURRENT_LAYOUT` is the last one's target, the layout ``specprod-db init``
creates.  Layouts:

======  ==================================================================================
1.3     the old tool's catalog (specprod-db 1.3, ``tests/data/specprod-db-1.3-*``):
        ``program`` columns ``VARCHAR(6)``, q3c indexes only once data was loaded, no
        bookkeeping tables
2.0     this project's first layout (e3d2b8f): ``program`` ``VARCHAR(8)`` (decision 5),
        q3c indexes from the start, ``load_run`` and ``tile_state``
2.1     ``tile_state.line``, the tiles-file line loaded (83fb4b3)
2.2     ``tile_history``, what each run did to each tile (2bad66b)
2.3     the tile afterburner tables ``ztile_emline``, ``ztile_qso_mgii``,
        ``ztile_qso_qn`` (one row per ztile row, foreign key to ``ztile.id``)
2.4     ``frame``: the unique index ``ix_frame_unique (expid, camera)`` and the indexes
        ``ix_frame_expid``, ``ix_frame_camera``, as desihub/specprod-db's daily work
        defines them (d86b6c7; astro-datalab/notebooks-latest#264)
======  ==================================================================================

A schema without the row (made before the row existed) is identified by inspection
(:func:`inspect_layout`).  ``specprod-db init`` records a new schema's layout by
inspecting what it created (:func:`specprod_db.db.migrate.record_versions`), so inspection
learns every new layout too (2.4: the index ``ix_frame_unique``).

A loader refuses a schema of another layout (:func:`check_layout`, exit 2) and names
``specprod-db migrate --schema S``, which applies the missing migrations in order, each
in one transaction that also records its target layout: an interrupted migrate leaves
the schema at a layout it names, and running it again goes on from there.  Every step
checks what is already there (``IF NOT EXISTS``, a column's width, a column's
presence), because ``specprod-db init`` on an older schema creates the tables it lacks
(``CREATE TABLE IF NOT EXISTS``) and so may have done part of a migration already.

Adding a layout: change :mod:`specprod_db.schema`, append a :class:`Migration` here
whose steps turn the previous layout into the new one; ``tests/test_migrate.py`` fails
until the migrated catalog equals the one ``init`` creates.  Steps declare the tables
as they were at their layout (the ``_V2_0`` ... tables below), never from
:mod:`specprod_db.schema`, which moves on.
"""
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import connection, cursor

from specprod_db import __version__
from specprod_db.db import ddl
from specprod_db.db.connect import server_stop
from specprod_db.db.sql import fetch_one, qualified, reading, transaction
from specprod_db.errors import InputError, RunRefused, SpecprodDBError, one_line
from specprod_db.log import get_logger
from specprod_db.schema import Table

#: ``version.package`` of the row recording the layout (``version.version``).
LAYOUT_PACKAGE = "specprod-db-schema"

#: The old tool's layout.
OLD_TOOL_LAYOUT = "1.3"


@dataclass(frozen=True)
class Step:
    """One step of a migration: what it does (for ``--dry-run`` and the report) and
    ``apply(cur, schema_name) -> str or None`` (a note on what it found or did)."""
    description: str
    apply: Callable[[cursor, str], str | None]


@dataclass(frozen=True)
class Migration:
    """One migration: from layout ``source`` to ``target``, what it does in one line
    (``summary``), and its steps in order."""
    source: str
    target: str
    summary: str
    steps: tuple[Step, ...]


# --- tables as they were at their layout ------------------------------------------------

_LOAD_RUN_V2_0 = Table("load_run", """
serial: id
timestamptz: started finished
integer: ranks
text: command options outcome counts
""", primary_key=("id",), nullable=("finished", "outcome", "counts"), bookkeeping=True)

_TILE_STATE_V2_0 = Table("tile_state", """
integer: tileid
text: updated
integer: lastnight
text: status tile_hash exposures_hash redrock_fingerprint fiberassign_fingerprint
integer: run_id
timestamptz: loaded_at
text: error
""", primary_key=("tileid",),
    nullable=("updated", "lastnight", "tile_hash", "exposures_hash", "redrock_fingerprint",
              "fiberassign_fingerprint", "loaded_at", "error"),
    foreign_keys={"run_id": "load_run.id"}, bookkeeping=True)

_TILE_STATE_V2_1 = Table("tile_state", """
integer: tileid
text: updated
integer: lastnight
text: status tile_hash exposures_hash redrock_fingerprint fiberassign_fingerprint line
integer: run_id
timestamptz: loaded_at
text: error
""", primary_key=("tileid",),
    nullable=("updated", "lastnight", "tile_hash", "exposures_hash", "redrock_fingerprint",
              "fiberassign_fingerprint", "line", "loaded_at", "error"),
    foreign_keys={"run_id": "load_run.id"}, bookkeeping=True)

_TILE_HISTORY_V2_2 = Table("tile_history", """
serial: id
integer: run_id tileid
text: action reason outcome error
timestamptz: at
text: counts tile_rows
""", primary_key=("id",), nullable=("reason", "error", "counts", "tile_rows"),
    foreign_keys={"run_id": "load_run.id"}, bookkeeping=True)

_ZTILE_EMLINE_V2_3 = Table("ztile_emline", """
numeric39: id
bigint: targetid
integer: tileid
real: oii_flux oii_flux_ivar
""", primary_key=("id",), indexes=("targetid", "tileid"),
    foreign_keys={"id": "ztile.id"}, tile_input="redrock")

_ZTILE_QSO_MGII_V2_3 = Table("ztile_qso_mgii", """
numeric39: id
bigint: targetid
integer: tileid
boolean: is_qso_mgii
""", primary_key=("id",), indexes=("targetid", "tileid"),
    foreign_keys={"id": "ztile.id"}, tile_input="redrock")

_ZTILE_QSO_QN_V2_3 = Table("ztile_qso_qn", """
numeric39: id
bigint: targetid
integer: tileid
boolean: is_qso_qn_new_rr
real: c_lya c_civ c_ciii c_mgii c_hbeta c_halpha
double: z_new
real: zerr_new
bigint: zwarn_new
varchar(6): spectype_new
varchar(20): subtype_new
real: chi2_new deltachi2_new
real: coeff_new_0 coeff_new_1 coeff_new_2 coeff_new_3 coeff_new_4
real: coeff_new_5 coeff_new_6 coeff_new_7 coeff_new_8 coeff_new_9
""", primary_key=("id",), indexes=("targetid", "tileid"),
    foreign_keys={"id": "ztile.id"}, tile_input="redrock")

#: The ``program`` columns of the 1.3 catalog (``VARCHAR(6)`` there).
_PROGRAM_TABLES = ("tile", "exposure", "target", "zpix", "ztile")

#: q3c indexes: table -> (ra, dec); the old tool created them only after loading.
_Q3C = {"tile": ("tilera", "tiledec"), "exposure": ("tilera", "tiledec"),
        "photometry": ("ra", "dec"), "fiberassign": ("target_ra", "target_dec")}


# --- helpers ----------------------------------------------------------------------------

def _q(schema_name: str, name: str) -> sql.Composed:
    return qualified(schema_name, name)


def _tables(cur: cursor, schema_name: str) -> set[str]:
    cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema_name,))
    return {r[0] for r in cur.fetchall()}


def _columns(cur: cursor, schema_name: str, table_name: str) -> dict[str, int | None]:
    """{column: character_maximum_length} of a table, in no order."""
    cur.execute("SELECT column_name, character_maximum_length FROM information_schema.columns "
                "WHERE table_schema = %s AND table_name = %s", (schema_name, table_name))
    return dict(cur.fetchall())


def _grant_like(cur: cursor, schema_name: str, model: str,
                table_names: Sequence[str]) -> list[str]:
    """SELECT on ``table_names`` (and their sequences) to the readers of ``model``."""
    roles = ddl.table_readers(cur, schema_name, model)
    for role in roles:
        for name in table_names:
            cur.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(
                _q(schema_name, name), sql.Identifier(role)))
        cur.execute(sql.SQL("GRANT SELECT ON ALL SEQUENCES IN SCHEMA {} TO {}").format(
            sql.Identifier(schema_name), sql.Identifier(role)))
    return roles


def _create(cur: cursor, schema_name: str, *tables: Table) -> str:
    """CREATE TABLE IF NOT EXISTS; the names of the tables that were missing."""
    present = _tables(cur, schema_name)
    for t in tables:
        cur.execute(ddl.create_table_sql(t, schema_name))
    created = [t.name for t in tables if t.name not in present]
    _grant_like(cur, schema_name, "tile", created)
    return f"created {', '.join(created)}" if created else "already there"


# --- 1.3 -> 2.0 -------------------------------------------------------------------------

def _widen_program(cur: cursor, schema_name: str) -> str:
    widened = []
    for name in _PROGRAM_TABLES:
        if (_columns(cur, schema_name, name).get("program") or 8) < 8:
            # binary-compatible: no table rewrite, no index rebuild; ACCESS EXCLUSIVE lock
            # for the catalog update only
            cur.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN program TYPE "
                                "character varying(8)").format(_q(schema_name, name)))
            widened.append(name)
    return f"widened in {', '.join(widened)}" if widened else "already VARCHAR(8)"


def _q3c_indexes(cur: cursor, schema_name: str) -> str:
    cur.execute("SELECT indexname FROM pg_indexes WHERE schemaname = %s", (schema_name,))
    present = {r[0] for r in cur.fetchall()}
    built = []
    for name, (ra, dec) in _Q3C.items():
        index = f"ix_{name}_q3c_ang2ipix"
        if index not in present:
            cur.execute(sql.SQL("CREATE INDEX {} ON {} (q3c_ang2ipix({}, {}))").format(
                sql.Identifier(index), _q(schema_name, name), sql.Identifier(ra),
                sql.Identifier(dec)))
            built.append(index)
    return f"built {', '.join(built)}" if built else "already there"


def _bookkeeping_2_0(cur: cursor, schema_name: str) -> str:
    return _create(cur, schema_name, _LOAD_RUN_V2_0, _TILE_STATE_V2_0)


def _seed_tile_state(cur: cursor, schema_name: str) -> str:
    cur.execute(sql.SQL("SELECT count(*) FROM {}").format(_q(schema_name, "tile_state")))
    if fetch_one(cur)[0]:
        return "tile_state not empty: left as it is"
    cur.execute(sql.SQL("SELECT count(*) FROM {}").format(_q(schema_name, "tile")))
    n = fetch_one(cur)[0]
    if not n:
        return "no tiles loaded"
    cur.execute(sql.SQL("INSERT INTO {} (started, finished, ranks, command, options, outcome, "
                        "counts) VALUES (now(), now(), 1, %s, %s, 'migrated', %s) "
                        "RETURNING id").format(_q(schema_name, "load_run")),
                (f"specprod-db migrate --schema {schema_name}",
                 json.dumps({"from": OLD_TOOL_LAYOUT, "to": "2.0"}),
                 json.dumps({"tiles_seeded": n})))
    run_id = fetch_one(cur)[0]
    cur.execute(sql.SQL("INSERT INTO {} (tileid, lastnight, status, run_id) SELECT tileid, "
                        "lastnight, 'loaded', %s FROM {}").format(
        _q(schema_name, "tile_state"), _q(schema_name, "tile")), (run_id,))
    return f"{n} tiles recorded as loaded by load_run {run_id}"


# --- 2.0 -> 2.1 -------------------------------------------------------------------------

def _tile_state_line(cur: cursor, schema_name: str) -> str:
    if "line" in _columns(cur, schema_name, "tile_state"):
        return "already there"
    old = "tile_state_layout_2_0"
    readers = ddl.table_readers(cur, schema_name, "tile_state")
    cur.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(
        _q(schema_name, "tile_state"), sql.Identifier(old)))
    for constraint in ("pkey", "run_id_fkey"):  # the new table's names
        cur.execute(sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
            _q(schema_name, old), sql.Identifier(f"tile_state_{constraint}"),
            sql.Identifier(f"{old}_{constraint}")))
    cur.execute(ddl.create_table_sql(_TILE_STATE_V2_1, schema_name))
    names = [n for n in _TILE_STATE_V2_1.names if n != "line"]
    columns = sql.SQL(", ").join(map(sql.Identifier, names))
    cur.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(
        _q(schema_name, "tile_state"), columns, columns, _q(schema_name, old)))
    rows = cur.rowcount
    cur.execute(sql.SQL("DROP TABLE {}").format(_q(schema_name, old)))
    for role in readers:
        cur.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(
            _q(schema_name, "tile_state"), sql.Identifier(role)))
    return f"tile_state rebuilt, {rows} rows copied"


# --- 2.1 -> 2.2 -------------------------------------------------------------------------

def _tile_history(cur: cursor, schema_name: str) -> str:
    return _create(cur, schema_name, _TILE_HISTORY_V2_2)


# --- 2.2 -> 2.3 -------------------------------------------------------------------------

def _afterburners(cur: cursor, schema_name: str) -> str:
    tables = (_ZTILE_EMLINE_V2_3, _ZTILE_QSO_MGII_V2_3, _ZTILE_QSO_QN_V2_3)
    note = _create(cur, schema_name, *tables)
    for t in tables:
        for statement in ddl.index_sql(t, schema_name):
            cur.execute(statement)
    return note


# --- 2.3 -> 2.4 -------------------------------------------------------------------------

#: frame's indexes added by layout 2.4: name -> (unique, columns).
_FRAME_INDEXES_V2_4 = {"ix_frame_unique": (True, ("expid", "camera")),
                       "ix_frame_expid": (False, ("expid",)),
                       "ix_frame_camera": (False, ("camera",))}


def _frame_indexes(cur: cursor, schema_name: str) -> str:
    cur.execute("SELECT indexname FROM pg_indexes WHERE schemaname = %s AND tablename = "
                "'frame'", (schema_name,))
    present = {r[0] for r in cur.fetchall()}
    if "ix_frame_unique" not in present:
        # frameid (the primary key) is 100 * EXPID + camera number, so no loader of
        # ours or the old tool's can have written one (expid, camera) twice; a schema
        # filled otherwise is named here rather than by the index build
        cur.execute(sql.SQL("SELECT expid, camera, count(*) FROM {} GROUP BY expid, camera "
                            "HAVING count(*) > 1 ORDER BY expid, camera LIMIT 5").format(
            _q(schema_name, "frame")))
        twice = cur.fetchall()
        if twice:
            raise InputError(f"{schema_name}.frame holds the same (expid, camera) more "
                             "than once: " + ", ".join(f"EXPID {e} camera {c} ({n} rows)"
                                                       for e, c, n in twice)
                             + "; delete the extra rows, then migrate again")
    built = []
    for name, (unique, columns) in _FRAME_INDEXES_V2_4.items():
        if name in present:
            continue
        cur.execute(sql.SQL("CREATE {}INDEX {} ON {} ({})").format(
            sql.SQL("UNIQUE " if unique else ""), sql.Identifier(name),
            _q(schema_name, "frame"), sql.SQL(", ").join(map(sql.Identifier, columns))))
        built.append(name)
    return f"built {', '.join(built)}" if built else "already there"


#: Every migration, in order; the last target is the current layout.
MIGRATIONS = (
    Migration(OLD_TOOL_LAYOUT, "2.0", "the old tool's catalog to this project's first layout", (
        Step("widen every program column (tile, exposure, target, zpix, ztile) from "
             "VARCHAR(6) to VARCHAR(8), for dark1b/bright1b (decision 5); no rewrite",
             _widen_program),
        Step("create the q3c indexes ix_{tile,exposure,photometry,fiberassign}_q3c_ang2ipix "
             "where missing (the old tool created them only after loading); a build on a "
             "loaded table blocks writes, not reads", _q3c_indexes),
        Step("create the bookkeeping tables load_run and tile_state, readable by the "
             "roles that can read tile", _bookkeeping_2_0),
        Step("record every tile of the tile table as loaded (fingerprints unknown) by a "
             "load_run row of this migration: the next load reloads each tile still in "
             "the tiles file (UPDATE) and deletes those that left it, as for any loaded "
             "tile", _seed_tile_state),
    )),
    Migration("2.0", "2.1", "tile_state records the tiles-file line loaded", (
        Step("rebuild tile_state with the column line (text, JSON of the tiles-file line) "
             "between fiberassign_fingerprint and run_id, rows copied (line NULL: a later "
             "change of such a tile is reported as 'changed: tiles-file line', not column "
             "by column); one row per tile, so the rebuild is short, under an ACCESS "
             "EXCLUSIVE lock of tile_state", _tile_state_line),
    )),
    Migration("2.1", "2.2", "tile_history: what each run did to each tile", (
        Step("create tile_history (one row per tile and run: action, reason, outcome, "
             "error, counts, tile_rows), readable by the roles that can read tile; empty: "
             "history starts with the next load", _tile_history),
    )),
    Migration("2.2", "2.3", "the tile afterburner tables", (
        Step("create ztile_emline, ztile_qso_mgii and ztile_qso_qn (the emline, qso_mgii "
             "and qso_qn files of each petal: one row per ztile row, id a foreign key to "
             "ztile.id) with their indexes, readable by the roles that can read tile; "
             "empty: the tiles' redrock fingerprints now include these files, so the next "
             "load UPDATEs every loaded tile whose petals have them, which fills them",
             _afterburners),
    )),
    Migration("2.3", "2.4", "frame's unique index (expid, camera) and indexes on expid "
              "and camera", (
        Step("create the unique index ix_frame_unique on frame (expid, camera) and the "
             "indexes ix_frame_expid and ix_frame_camera where missing, as desihub/"
             "specprod-db's daily work defines them; rows are unchanged (frameid already "
             "makes (expid, camera) unique: a schema holding a pair twice is refused, "
             "naming it); the builds block writes to frame, not reads, for seconds",
             _frame_indexes),
    )),
)

#: Every layout, oldest first.
LAYOUTS = (MIGRATIONS[0].source,) + tuple(m.target for m in MIGRATIONS)

#: The layout ``specprod-db init`` creates and a load writes into.
CURRENT_LAYOUT = LAYOUTS[-1]


# --- which layout a schema has ------------------------------------------------------------

def recorded_layout(cur: cursor, schema_name: str) -> str | None:
    """The layout recorded in the schema's ``version`` table, or None."""
    if "version" not in _tables(cur, schema_name):
        return None
    cur.execute(sql.SQL("SELECT version FROM {} WHERE package = %s").format(
        _q(schema_name, "version")), (LAYOUT_PACKAGE,))
    row = cur.fetchone()
    return row[0] if row else None


def inspect_layout(cur: cursor, schema_name: str) -> str | None:
    """The layout of a schema that does not record it, from its catalog; None when it
    is not a production schema (no ``tile``, ``photometry`` and ``version`` tables)."""
    tables = _tables(cur, schema_name)
    if not {"tile", "photometry", "version"} <= tables:
        return None
    if (_columns(cur, schema_name, "tile").get("program") or 0) < 8 \
            or not {"load_run", "tile_state"} <= tables:
        return OLD_TOOL_LAYOUT
    if "line" not in _columns(cur, schema_name, "tile_state"):
        return "2.0"
    if "tile_history" not in tables:
        return "2.1"
    if "ztile_emline" not in tables:
        return "2.2"
    cur.execute("SELECT 1 FROM pg_indexes WHERE schemaname = %s AND indexname = "
                "'ix_frame_unique'", (schema_name,))
    if cur.fetchone() is None:
        return "2.3"
    return "2.4"


def layout_version(conn: connection, schema_name: str) -> tuple[str | None, str | None]:
    """``(layout, how)``: how is ``'recorded'`` or ``'inspected'``; ``(None, None)`` for
    a schema that is not a production schema.  Leaves no transaction open."""
    with reading(conn) as cur:
        layout = recorded_layout(cur, schema_name)
        if layout is not None:
            return layout, "recorded"
        layout = inspect_layout(cur, schema_name)
        return layout, (None if layout is None else "inspected")


def pending(layout: str) -> tuple[Migration, ...]:
    """The migrations that take ``layout`` to :data:`CURRENT_LAYOUT`, in order."""
    if layout not in LAYOUTS:
        raise RunRefused(f"layout {layout!r} is unknown to this specprod-db (it knows "
                         f"{', '.join(LAYOUTS)}): use a newer specprod-db")
    return MIGRATIONS[LAYOUTS.index(layout):]


def check_layout(conn: connection, schema_name: str) -> str:
    """RunRefused (exit 2) unless the schema has the current layout; the message says
    how to migrate.  Called by a load and a plan before anything else reads the schema."""
    layout, how = layout_version(conn, schema_name)
    if layout == CURRENT_LAYOUT:
        return layout
    if layout is None:
        raise RunRefused(f"schema {schema_name} is not a production schema (no tile, "
                         "photometry and version tables); run "
                         f"'specprod-db init --schema {schema_name}' for a new one")
    if layout not in LAYOUTS:
        raise RunRefused(f"schema {schema_name} has layout {layout} ({how}), newer than "
                         f"this specprod-db knows ({CURRENT_LAYOUT}): use a newer "
                         "specprod-db")
    raise RunRefused(f"schema {schema_name} has layout {layout} ({how}); this specprod-db "
                     f"writes layout {CURRENT_LAYOUT}: run 'specprod-db migrate --schema "
                     f"{schema_name}' first ('--dry-run' lists the steps)")


# --- migrating ------------------------------------------------------------------------------

class MigrationFailed(SpecprodDBError):
    """A migration's transaction failed and was rolled back (exit 1); the schema is at
    the layout the message names."""


def migrate(conn: connection, schema_name: str, dry_run: bool = False) -> dict[str, Any]:
    """Apply the pending migrations, each in one transaction that records its target
    layout.  Returns the report: ``{"schema", "from", "how", "to", "migrations": [{"from",
    "to", "summary", "steps": [{"description", "result"}]}], "recorded"}`` (``result``
    None in a dry run; ``recorded`` True when a current layout found by inspection was
    just recorded)."""
    layout, how = layout_version(conn, schema_name)
    if layout is None:
        raise RunRefused(f"schema {schema_name} is not a production schema (no tile, "
                         "photometry and version tables): nothing to migrate")
    todo = pending(layout)
    migrations: list[dict[str, Any]] = []
    report = {"schema": schema_name, "from": layout, "how": how, "to": CURRENT_LAYOUT,
              "dry_run": dry_run, "migrations": migrations, "recorded": False}
    for m in todo:
        steps: list[dict[str, str | None]] = []
        entry = {"from": m.source, "to": m.target, "summary": m.summary, "steps": steps}
        migrations.append(entry)
        if dry_run:
            steps += [{"description": s.description, "result": None} for s in m.steps]
            continue
        try:
            with transaction(conn, original_error=True) as cur:
                for s in m.steps:
                    steps.append({"description": s.description,
                                  "result": s.apply(cur, schema_name)})
                record_layout(cur, schema_name, m.target)
        except Exception as err:  # rolled back
            stop = server_stop(err, conn, f"migrating schema {schema_name} from layout "
                                  f"{m.source} to {m.target} (rolled back)")
            if stop is not None:  # the database stopping the work: exit 3, not a failure
                raise stop from None
            raise MigrationFailed(
                f"migration of schema {schema_name} from layout {m.source} to {m.target} "
                f"failed and was rolled back (the schema is at layout {m.source}): "
                f"{one_line(err)}") from None
    if not todo and how == "inspected":
        report["recorded"] = True
        if not dry_run:
            with transaction(conn, original_error=True) as cur:
                record_layout(cur, schema_name, CURRENT_LAYOUT)
    return report


def format_report(report: Mapping[str, Any]) -> str:
    """The report of :func:`migrate` as text."""
    s = report["schema"]
    lines = [f"schema {s}: layout {report['from']} ({report['how']}), current layout "
             f"{report['to']}"]
    if not report["migrations"]:
        if report["recorded"]:
            lines.append(f"nothing to migrate; layout {report['to']} "
                         f"{'would be' if report['dry_run'] else 'is now'} recorded in "
                         "the version table")
        else:
            lines.append("nothing to migrate")
        return "\n".join(lines)
    for m in report["migrations"]:
        lines.append(f"{m['from']} -> {m['to']}: {m['summary']} "
                     f"({'dry run: not applied' if report['dry_run'] else 'one transaction, committed'})")
        for i, step in enumerate(m["steps"], 1):
            lines.append(f"  {i}. {step['description']}")
            if step["result"]:
                lines.append(f"     -> {step['result']}")
    lines.append(f"{'would migrate' if report['dry_run'] else 'migrated'} schema {s} to "
                 f"layout {report['to']}")
    return "\n".join(lines)


# --- recording a schema's versions and layout ---------------------------------

def package_versions(specprod: str) -> list[tuple[str, str]]:
    """Rows of the ``version`` table: the old tool's packages, then our own libraries."""
    import astropy
    import desiutil
    import numpy
    versions = [
        ("astropy", astropy.__version__),
        ("desiutil", desiutil.__version__),
        ("lsd9-photometry", "computed"),
        ("numpy", numpy.__version__),
        ("redshift", f"{specprod}/v0"),
        ("release", specprod),
        ("specprod", specprod),
        ("specprod-db", __version__),
        ("psycopg2", psycopg2.__version__.split()[0]),  # type: ignore[attr-defined]
        ("tiles", "trunk" if specprod == "daily" else specprod),
    ]
    for name in ("fitsio", "h5py", "mpi4py"):
        try:
            mod = __import__(name)
            versions.append((name, str(mod.__version__)))
        except ImportError:  # pragma: no cover - declared dependencies
            pass
    return versions


def record_versions(conn: connection, schema_name: str, specprod: str) -> bool:
    """Fill ``version`` once (an existing table is left as it is), and record the
    schema's layout version (:mod:`specprod_db.db.migrate`) when it is the current one and
    not recorded yet.  Returns True when the package rows were written."""
    with transaction(conn, original_error=True) as cur:
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(
            qualified(schema_name, "version")))
        filled = not fetch_one(cur)[0]
        if filled:
            for package, version in package_versions(specprod):
                cur.execute(sql.SQL("INSERT INTO {} (package, version) VALUES (%s, %s)")
                            .format(qualified(schema_name, "version")),
                            (package, version[:20]))
        layout = recorded_layout(cur, schema_name)
        if layout is None:
            # init on an older schema creates the tables it lacks but widens, rebuilds
            # nothing: its layout is recorded by 'specprod-db migrate', not here
            layout = inspect_layout(cur, schema_name)
            if layout == CURRENT_LAYOUT:
                record_layout(cur, schema_name, layout)
    if layout != CURRENT_LAYOUT:
        get_logger().warning("schema %s has layout %s, not %s: run 'specprod-db migrate "
                             "--schema %s'", schema_name, layout, CURRENT_LAYOUT,
                             schema_name)
    return filled


def record_layout(cur: cursor, schema_name: str, layout: str) -> None:
    """Set the ``version`` row of the schema's layout (:data:`LAYOUT_PACKAGE`).

    The id is given explicitly and the sequence moved past it: the old tool assigned the
    ids of its rows explicitly, leaving ``version_id_seq`` behind them."""
    table = qualified(schema_name, "version")
    cur.execute(sql.SQL("UPDATE {} SET version = %s WHERE package = %s").format(table),
                (layout, LAYOUT_PACKAGE))
    if cur.rowcount:
        return
    cur.execute(sql.SQL("INSERT INTO {} (id, package, version) SELECT coalesce(max(id), 0) "
                        "+ 1, %s, %s FROM {}").format(table, table), (LAYOUT_PACKAGE, layout))
    cur.execute(sql.SQL("SELECT setval(pg_get_serial_sequence(quote_ident(%s) || '.version', "
                        "'id'), max(id)) FROM {}").format(table), (schema_name,))
