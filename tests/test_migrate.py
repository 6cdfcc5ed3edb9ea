"""Schema layout versions and ``specprod-db migrate``: a schema built exactly as the old
tool's 1.3 catalog, and one of each of this project's layouts since (2.0, 2.2, 2.3), each
with rows, migrate to the catalog ``init`` creates today with their rows intact; a load
into an un-migrated schema is refused (exit 2) naming the command; migrating twice
changes nothing."""
import dataclasses
import json
import subprocess

import psycopg2
import pytest
from psycopg2 import sql

from conftest import CLI, dump_schema, mock_env, query
from test_history import load_in_process
from test_schema import _reference

from specprod_db import schema

from specprod_db.db import ddl, migrate

from specprod_db.db.sql import qualified
from specprod_db.db import migrate
from specprod_db.cli import main

#: The tables added by layout 2.3 (the tile afterburners), absent from older layouts.
AFTERBURNERS = {t.name for t in schema.AFTERBURNER_TABLES}

#: The old tool's data tables, in its creation order.
OLD_TOOL_TABLES = tuple(t for t in schema.DATA_TABLES if t.name not in AFTERBURNERS)

#: frame before layout 2.4: no unique index (expid, camera), no index on expid, camera.
FRAME_V2_3 = dataclasses.replace(schema.FRAME, unique=(), indexes=("night", "tileid"))

#: frame's indexes added by layout 2.4 (desihub/specprod-db d86b6c7).
FRAME_INDEXES_V2_4 = {"ix_frame_unique", "ix_frame_expid", "ix_frame_camera"}


def before_2_4(tables):
    """``tables`` with frame as it was before layout 2.4."""
    return tuple(FRAME_V2_3 if t.name == "frame" else t for t in tables)


def build_layout(dsn, name, tables):
    """Schema ``name`` with ``tables`` and their indexes, as ``init`` made them."""
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        for t in tables:
            cur.execute(ddl.create_table_sql(t, name))
            for statement in ddl.index_sql(t, name):
                cur.execute(statement)
    conn.commit()
    conn.close()


def record(dsn, name, layout_version):
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        migrate.record_layout(cur, name, layout_version)
    conn.commit()
    conn.close()

# --- catalogs ---------------------------------------------------------------------------


def catalog(dsn, name):
    """Columns, indexes and constraints of schema ``name`` as the server shows them, the
    schema name replaced by ``SCHEMA`` (the three views test_schema compares)."""
    def norm(text):
        return (text or "").replace(f'"{name}".', "SCHEMA.").replace(f"{name}.", "SCHEMA.")
    columns = query(dsn, """SELECT table_name, ordinal_position, column_name, data_type,
                                   character_maximum_length, numeric_precision, is_nullable,
                                   column_default
                            FROM information_schema.columns WHERE table_schema = %s""",
                    (name,))
    indexes = query(dsn, "SELECT tablename, indexname, indexdef FROM pg_indexes "
                         "WHERE schemaname = %s", (name,))
    constraints = query(dsn, """SELECT c.conrelid::regclass::text, c.conname, c.contype,
                                       pg_get_constraintdef(c.oid)
                                FROM pg_constraint c
                                JOIN pg_namespace n ON n.oid = c.connamespace
                                WHERE n.nspname = %s""", (name,))
    return {
        "columns": {(r[0], r[1]): (r[2], r[3], "" if r[4] is None else str(r[4]),
                                   "" if r[5] is None else str(r[5]), r[6], norm(r[7]))
                    for r in columns},
        "indexes": {r[1]: (r[0], norm(r[2])) for r in indexes},
        "constraints": {r[1]: (norm(r[0]).removeprefix("SCHEMA."), r[2], norm(r[3]))
                        for r in constraints},
    }


def assert_same(got, expected):
    """Catalogs equal; else the entries that differ, by view."""
    diff = {view: {k: (got[view].get(k), expected[view].get(k))
                   for k in set(got[view]) | set(expected[view])
                   if got[view].get(k) != expected[view].get(k)} for view in expected}
    assert not any(diff.values()), {v: d for v, d in diff.items() if d}


def reference_catalog():
    """The old tool's catalog from tests/data, in :func:`catalog`'s form."""
    return {
        "columns": {(r["table_name"], int(r["ordinal_position"])): (
            r["column_name"], r["data_type"], r["char_len"], r["num_precision"],
            r["is_nullable"], r["column_default"].replace("ref13.", "SCHEMA."))
            for r in _reference("specprod-db-1.3-columns.csv", ",")},
        "indexes": {r["indexname"]: (r["tablename"], r["indexdef"])
                    for r in _reference("specprod-db-1.3-indexes.psv", "|")},
        "constraints": {r["conname"]: (r["table_name"], r["contype"], r["definition"])
                        for r in _reference("specprod-db-1.3-constraints.psv", "|")},
    }


def _pgtype(data_type, char_len, precision, default):
    if default.startswith("nextval("):
        return "serial"
    if data_type == "character varying":
        return f"varchar({char_len})" if char_len else "varchar"
    if data_type == "numeric":
        return f"numeric({precision})"
    return data_type


def build_old_tool_schema(dsn, name):
    """Schema ``name`` exactly as specprod-db 1.3 creates it (tests/data): tables in
    the old tool's order, then keys, unique constraints, foreign keys and indexes."""
    ref = reference_catalog()
    tables = {}
    for (table, pos), (col, data_type, char_len, precision, _, default) in sorted(
            ref["columns"].items(), key=lambda kv: kv[0][1]):
        tables.setdefault(table, []).append(
            sql.SQL("{} {} NOT NULL").format(sql.Identifier(col), sql.SQL(
                _pgtype(data_type, char_len, precision, default))))
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        for t in OLD_TOOL_TABLES:  # the old tool's creation order
            cur.execute(sql.SQL("CREATE TABLE {} ({})").format(
                qualified(name, t.name), sql.SQL(", ").join(tables[t.name])))
        here = sql.Identifier(name).as_string(conn) + "."
        constraints = sorted(ref["constraints"].items(), key=lambda kv: kv[1][1] == "f")
        for conname, (table, _, definition) in constraints:
            cur.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                qualified(name, table), sql.Identifier(conname),
                sql.SQL(definition.replace("SCHEMA.", here))))
        for indexname, (_, indexdef) in ref["indexes"].items():
            if indexname not in ref["constraints"]:
                cur.execute(indexdef.replace("SCHEMA.", here))
    conn.commit()
    conn.close()


def fill(dsn, name, tables, n=3):
    """``n`` rows in each of ``tables``: every integer (and numeric id) of row k is k, so
    every foreign key holds; the version table as the old tool fills it (explicit ids)."""
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        for t in tables:
            if t.name == "version":
                for i, package in enumerate(("astropy", "desiutil", "lsd9-photometry",
                                             "numpy", "redshift", "release", "specprod",
                                             "specprod-db", "sqlalchemy", "tiles"), 1):
                    cur.execute(sql.SQL("INSERT INTO {} (id, package, version) VALUES "
                                        "(%s, %s, %s)").format(qualified(name, "version")),
                                (i, package, "1.3.0" if package == "specprod-db" else "x"))
                continue
            for k in range(1, n + 1):
                values = []
                for c in t.columns:
                    if c.pgtype in ("smallint", "integer", "bigint", "serial", "numeric(39)"):
                        values.append(k)
                    elif c.pgtype in ("real", "double precision"):
                        values.append(k + 0.25)
                    elif c.pgtype == "boolean":
                        values.append(k == 1)
                    elif c.pgtype.startswith("timestamp"):
                        values.append(f"2026-01-0{k}T12:00:00+00")
                    elif c.name == "program":
                        values.append(("dark", "bright", "backup")[k - 1])
                    else:
                        values.append(str(k))
                cur.execute(sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                    qualified(name, t.name),
                    sql.SQL(", ").join(map(sql.Identifier, t.names)),
                    sql.SQL(", ").join(sql.Placeholder() * len(values))), values)
    conn.commit()
    conn.close()


def migrate_cli(dsn, name, *extra):
    return subprocess.run(CLI + ["migrate", "--schema", name, "--db", dsn, *extra],
                          capture_output=True, text=True, timeout=120)


def version_rows(dsn, name):
    return query(dsn, f'SELECT id, package, version FROM "{name}".version ORDER BY id')


def layout(dsn, name):
    conn = psycopg2.connect(dsn)
    try:
        return migrate.layout_version(conn, name)
    finally:
        conn.close()


@pytest.fixture
def fresh_catalog(pg_dsn, schemas):
    """The catalog ``specprod-db init`` creates today."""
    return catalog(pg_dsn, schemas())


# --- the old tool's schema ----------------------------------------------------------------

def test_the_built_schema_is_the_old_tools_catalog(pg_dsn, schema_name):
    build_old_tool_schema(pg_dsn, schema_name)
    assert_same(catalog(pg_dsn, schema_name), reference_catalog())
    assert layout(pg_dsn, schema_name) == ("1.3", "inspected")


def test_migrate_from_the_old_tool(pg_dsn, schema_name, fresh_catalog):
    build_old_tool_schema(pg_dsn, schema_name)
    fill(pg_dsn, schema_name, OLD_TOOL_TABLES)
    old_tables = [t.name for t in OLD_TOOL_TABLES]
    rows = dump_schema(pg_dsn, schema_name, old_tables)
    versions = version_rows(pg_dsn, schema_name)

    dry = migrate_cli(pg_dsn, schema_name, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "1.3 -> 2.0" in dry.stdout and "2.1 -> 2.2" in dry.stdout
    assert "dry run: not applied" in dry.stdout
    assert_same(catalog(pg_dsn, schema_name), reference_catalog())

    r = migrate_cli(pg_dsn, schema_name)
    assert r.returncode == 0, r.stderr
    assert "widened in tile, exposure, target, zpix, ztile" in r.stdout
    assert_same(catalog(pg_dsn, schema_name), fresh_catalog)
    assert dump_schema(pg_dsn, schema_name, old_tables) == rows
    after = version_rows(pg_dsn, schema_name)
    assert after[:-1] == versions
    assert after[-1] == (11, migrate.LAYOUT_PACKAGE, migrate.CURRENT_LAYOUT)
    assert layout(pg_dsn, schema_name) == (migrate.CURRENT_LAYOUT, "recorded")
    # every tile the old tool loaded is known to the loader, as loaded by the migration
    runs = query(pg_dsn, f'SELECT id, command, outcome FROM "{schema_name}".load_run')
    assert runs == [(1, f"specprod-db migrate --schema {schema_name}", "migrated")]
    assert query(pg_dsn, f'SELECT tileid, status, run_id, line FROM "{schema_name}".tile_state '
                         "ORDER BY tileid") == [(k, "loaded", 1, None) for k in (1, 2, 3)]
    # the serial moved past the old tool's explicit ids
    query(pg_dsn, f"INSERT INTO \"{schema_name}\".version (package, version) VALUES ('x', 'y')")

    # twice: a no-op
    before = catalog(pg_dsn, schema_name), dump_schema(pg_dsn, schema_name)
    r = migrate_cli(pg_dsn, schema_name)
    assert r.returncode == 0, r.stderr
    assert "nothing to migrate" in r.stdout
    assert (catalog(pg_dsn, schema_name), dump_schema(pg_dsn, schema_name)) == before


# --- this project's first layout ------------------------------------------------------------

#: tile_state as the first commit (e3d2b8f) declared it: no ``line``.
FIRST_TILE_STATE = schema.Table("tile_state", """
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

FIRST_LAYOUT = before_2_4(FIRST_TILE_STATE if t.name == "tile_state" else t
                          for t in schema.TABLES
                          if t.name != "tile_history" and t.name not in AFTERBURNERS)


def build_first_layout(dsn, name):
    """The schema ``init`` created at e3d2b8f: today's DDL without tile_history, and
    tile_state without line, frame without the indexes of 2.4 (the changes since,
    ``git log -- schema.py``)."""
    build_layout(dsn, name, FIRST_LAYOUT)


#: Layout 2.3: today's tables, frame without the indexes of 2.4.
LAYOUT_2_3 = before_2_4(schema.TABLES)


def build_layout_2_3(dsn, name):
    build_layout(dsn, name, LAYOUT_2_3)


def test_migrate_from_the_first_layout(pg_dsn, schema_name, fresh_catalog):
    build_first_layout(pg_dsn, schema_name)
    fill(pg_dsn, schema_name, [t for t in FIRST_LAYOUT if t.name != "tile_state"])
    query(pg_dsn, f"""INSERT INTO "{schema_name}".tile_state (tileid, updated, lastnight,
                          status, tile_hash, run_id, error)
                      VALUES (1, '2026-01-01', 20260101, 'loaded', 'h1', 1, NULL),
                             (2, '', 20260102, 'failed', 'h2', 2, 'bad file')""")
    assert layout(pg_dsn, schema_name) == ("2.0", "inspected")
    first_tables = [t.name for t in FIRST_LAYOUT]
    rows = dump_schema(pg_dsn, schema_name, first_tables)
    bookkeeping = query(pg_dsn, f'SELECT * FROM "{schema_name}".load_run ORDER BY id')
    state = query(pg_dsn, f'SELECT tileid, updated, lastnight, status, tile_hash, run_id, '
                          f'error FROM "{schema_name}".tile_state ORDER BY tileid')

    r = migrate_cli(pg_dsn, schema_name)
    assert r.returncode == 0, r.stderr
    assert "2.0 -> 2.1" in r.stdout and "1.3 -> 2.0" not in r.stdout
    assert "tile_state rebuilt, 2 rows copied" in r.stdout
    assert_same(catalog(pg_dsn, schema_name), fresh_catalog)
    assert dump_schema(pg_dsn, schema_name, first_tables) == rows
    assert query(pg_dsn, f'SELECT * FROM "{schema_name}".load_run ORDER BY id') == bookkeeping
    assert query(pg_dsn, f'SELECT tileid, updated, lastnight, status, tile_hash, run_id, '
                         f'error FROM "{schema_name}".tile_state ORDER BY tileid') == state
    assert query(pg_dsn, f'SELECT count(*) FROM "{schema_name}".tile_history') == [(0,)]
    assert layout(pg_dsn, schema_name) == (migrate.CURRENT_LAYOUT, "recorded")

    before = catalog(pg_dsn, schema_name), dump_schema(pg_dsn, schema_name)
    r = migrate_cli(pg_dsn, schema_name, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["migrations"] == []
    assert (catalog(pg_dsn, schema_name), dump_schema(pg_dsn, schema_name)) == before


def test_migrate_from_layout_2_2_adds_the_afterburner_tables(pg_dsn, schema_name,
                                                             fresh_catalog):
    """Layout 2.2 (today's DDL without the tile afterburner tables nor frame's indexes of
    2.4), with rows and its layout recorded: migrate creates the three tables (empty) and
    their indexes, then frame's, and the catalog is init's; the rows are intact; twice
    is a no-op."""
    tables = [t for t in LAYOUT_2_3 if t.name not in AFTERBURNERS]
    build_layout(pg_dsn, schema_name, tables)
    fill(pg_dsn, schema_name, [t for t in tables if not t.bookkeeping])
    assert layout(pg_dsn, schema_name) == ("2.2", "inspected")
    record(pg_dsn, schema_name, "2.2")
    assert layout(pg_dsn, schema_name) == ("2.2", "recorded")
    names = [t.name for t in tables if not t.bookkeeping]
    rows = dump_schema(pg_dsn, schema_name, names)

    r = migrate_cli(pg_dsn, schema_name)
    assert r.returncode == 0, r.stderr
    assert "2.2 -> 2.3" in r.stdout and "2.1 -> 2.2" not in r.stdout
    assert "created ztile_emline, ztile_qso_mgii, ztile_qso_qn" in r.stdout
    assert "2.3 -> 2.4" in r.stdout
    assert_same(catalog(pg_dsn, schema_name), fresh_catalog)
    assert dump_schema(pg_dsn, schema_name, names) == rows
    for name in sorted(AFTERBURNERS):
        assert query(pg_dsn, f'SELECT count(*) FROM "{schema_name}".{name}') == [(0,)]
    assert layout(pg_dsn, schema_name) == (migrate.CURRENT_LAYOUT, "recorded")

    before = catalog(pg_dsn, schema_name), dump_schema(pg_dsn, schema_name)
    r = migrate_cli(pg_dsn, schema_name)
    assert r.returncode == 0 and "nothing to migrate" in r.stdout, r.stderr
    assert (catalog(pg_dsn, schema_name), dump_schema(pg_dsn, schema_name)) == before


def test_migrate_from_layout_2_3_adds_the_frame_indexes(pg_dsn, schema_name,
                                                        fresh_catalog):
    """Layout 2.3 (frame without its unique index (expid, camera) and the indexes on
    expid and camera), with rows, recorded: migrate builds the three indexes, the
    catalog is init's, the rows are intact, 2.4 is recorded; twice is a no-op."""
    build_layout_2_3(pg_dsn, schema_name)
    fill(pg_dsn, schema_name, [t for t in LAYOUT_2_3 if not t.bookkeeping])
    assert layout(pg_dsn, schema_name) == ("2.3", "inspected")
    record(pg_dsn, schema_name, "2.3")
    assert not FRAME_INDEXES_V2_4 & set(catalog(pg_dsn, schema_name)["indexes"])
    rows = dump_schema(pg_dsn, schema_name)

    dry = migrate_cli(pg_dsn, schema_name, "--dry-run")
    assert dry.returncode == 0 and "2.3 -> 2.4" in dry.stdout, dry.stderr
    assert not FRAME_INDEXES_V2_4 & set(catalog(pg_dsn, schema_name)["indexes"])

    r = migrate_cli(pg_dsn, schema_name)
    assert r.returncode == 0, r.stderr
    assert "2.3 -> 2.4" in r.stdout and "2.2 -> 2.3" not in r.stdout
    assert "built ix_frame_unique, ix_frame_expid, ix_frame_camera" in r.stdout
    assert_same(catalog(pg_dsn, schema_name), fresh_catalog)
    indexes = catalog(pg_dsn, schema_name)["indexes"]
    assert indexes["ix_frame_unique"] == (
        "frame", "CREATE UNIQUE INDEX ix_frame_unique ON SCHEMA.frame USING btree "
                 "(expid, camera)")
    assert dump_schema(pg_dsn, schema_name) == rows
    assert layout(pg_dsn, schema_name) == ("2.4", "recorded")

    before = catalog(pg_dsn, schema_name), dump_schema(pg_dsn, schema_name)
    r = migrate_cli(pg_dsn, schema_name)
    assert r.returncode == 0 and "nothing to migrate" in r.stdout, r.stderr
    assert (catalog(pg_dsn, schema_name), dump_schema(pg_dsn, schema_name)) == before


def test_migrate_names_a_frame_held_twice(pg_dsn, schema_name):
    """A 2.3 schema whose frame holds one (expid, camera) twice (under two frameids,
    which no loader writes): the migration to 2.4 fails naming EXPID and camera, is
    rolled back (no index, layout 2.3 still), and goes ahead once the row is gone."""
    build_layout_2_3(pg_dsn, schema_name)
    fill(pg_dsn, schema_name, [t for t in LAYOUT_2_3 if not t.bookkeeping])
    record(pg_dsn, schema_name, "2.3")
    query(pg_dsn, f'INSERT INTO "{schema_name}".frame SELECT 1000 + frameid, night, expid, '
                  f'tileid, mjd, exptime, ebv, camera, tsnr2_gpbdark, tsnr2_elg, '
                  f'tsnr2_gpbbright, tsnr2_lya, tsnr2_bgs, tsnr2_gpbbackup, tsnr2_qso, '
                  f'tsnr2_lrg FROM "{schema_name}".frame WHERE frameid = 2')
    r = migrate_cli(pg_dsn, schema_name)
    assert r.returncode == 1, r.stdout + r.stderr
    err = r.stderr.strip().splitlines()[-1]
    assert "EXPID 2 camera 2 (2 rows)" in err and "rolled back" in err, r.stderr
    assert "Traceback" not in r.stderr
    assert layout(pg_dsn, schema_name) == ("2.3", "recorded")
    assert not FRAME_INDEXES_V2_4 & set(catalog(pg_dsn, schema_name)["indexes"])
    query(pg_dsn, f'DELETE FROM "{schema_name}".frame WHERE frameid = 1002')
    assert migrate_cli(pg_dsn, schema_name).returncode == 0
    assert layout(pg_dsn, schema_name) == ("2.4", "recorded")


def test_init_records_the_layout_and_migrate_leaves_it(pg_dsn, schemas):
    name = schemas()
    assert layout(pg_dsn, name) == (migrate.CURRENT_LAYOUT, "recorded")
    versions = version_rows(pg_dsn, name)
    r = migrate_cli(pg_dsn, name)
    assert r.returncode == 0 and "nothing to migrate" in r.stdout, r.stderr
    assert version_rows(pg_dsn, name) == versions


def test_an_unrecorded_current_layout_is_recorded(pg_dsn, schema_name):
    """A schema init made before layouts were recorded: identified, then recorded."""
    conn = psycopg2.connect(pg_dsn)
    ddl.create_schema(conn, schema_name)
    conn.close()
    assert layout(pg_dsn, schema_name) == (migrate.CURRENT_LAYOUT, "inspected")
    r = migrate_cli(pg_dsn, schema_name)
    assert r.returncode == 0 and "is now recorded" in r.stdout, r.stderr
    assert layout(pg_dsn, schema_name) == (migrate.CURRENT_LAYOUT, "recorded")


#: Layout -> the tables ``init`` created then (before the row recording it existed).
EARLIER_LAYOUTS = {
    "2.0": FIRST_LAYOUT,
    "2.1": tuple(t for t in LAYOUT_2_3 if t.name != "tile_history"
                 and t.name not in AFTERBURNERS),
    "2.2": tuple(t for t in LAYOUT_2_3 if t.name not in AFTERBURNERS),
    "2.3": LAYOUT_2_3,
}


@pytest.mark.parametrize("source", migrate.LAYOUTS[:-1])
def test_every_earlier_layout_migrates_to_the_current_one(pg_dsn, schema_name,
                                                          fresh_catalog, source):
    """Each earlier layout, with rows in its data tables, identified by inspection:
    migrate takes it to init's catalog, the rows intact, the current layout recorded."""
    if source == migrate.OLD_TOOL_LAYOUT:
        build_old_tool_schema(pg_dsn, schema_name)
        tables = OLD_TOOL_TABLES
    else:
        tables = EARLIER_LAYOUTS[source]
        build_layout(pg_dsn, schema_name, tables)
    data = [t for t in tables if not t.bookkeeping]
    fill(pg_dsn, schema_name, data)
    assert layout(pg_dsn, schema_name) == (source, "inspected")
    rows = dump_schema(pg_dsn, schema_name, [t.name for t in data])
    r = migrate_cli(pg_dsn, schema_name)
    assert r.returncode == 0, r.stderr
    assert f"{source} -> " in r.stdout and "2.3 -> 2.4" in r.stdout
    assert_same(catalog(pg_dsn, schema_name), fresh_catalog)
    assert dump_schema(pg_dsn, schema_name, [t.name for t in data]) == rows
    assert layout(pg_dsn, schema_name) == (migrate.CURRENT_LAYOUT, "recorded")


def test_layouts_are_ordered_and_current_is_what_init_creates():
    assert migrate.LAYOUTS == ("1.3", "2.0", "2.1", "2.2", "2.3", "2.4")
    assert migrate.CURRENT_LAYOUT == migrate.MIGRATIONS[-1].target
    assert all(a.target == b.source for a, b in zip(migrate.MIGRATIONS, migrate.MIGRATIONS[1:]))


# --- refusals -------------------------------------------------------------------------------

@pytest.mark.parametrize("build", [build_old_tool_schema, build_first_layout,
                                   build_layout_2_3], ids=["1.3", "2.0", "2.3"])
def test_load_into_an_unmigrated_schema_is_refused(pg_dsn, schema_name, small_production,
                                                   tmp_path, build):
    build(pg_dsn, schema_name)
    old_tables = [t.name for t in OLD_TOOL_TABLES]  # both layouts lack the afterburners
    before = catalog(pg_dsn, schema_name), dump_schema(pg_dsn, schema_name, old_tables)
    for command in ("load", "plan"):
        r = subprocess.run(CLI + [command, "--schema", schema_name, "--stage-dir",
                                  str(tmp_path / "stage")],
                           env=mock_env(small_production[0], SPECPROD_DB_DSN=pg_dsn),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stdout + r.stderr
        assert f"'specprod-db migrate --schema {schema_name}'" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    assert (catalog(pg_dsn, schema_name), dump_schema(pg_dsn, schema_name, old_tables)) \
        == before
    # once migrated, the same load goes ahead
    assert migrate_cli(pg_dsn, schema_name).returncode == 0
    assert load_in_process(pg_dsn, schema_name, small_production[0], tmp_path / "stage") \
        in (0, 1)
    assert query(pg_dsn, f'SELECT count(*) FROM "{schema_name}".ztile')[0][0] > 0


def test_a_newer_layout_is_refused(pg_dsn, schemas, capsys):
    name = schemas()
    query(pg_dsn, f"UPDATE \"{name}\".version SET version = '9.0' WHERE package = %s",
          (migrate.LAYOUT_PACKAGE,))
    assert main(["migrate", "--schema", name, "--db", pg_dsn]) == 2
    err = capsys.readouterr().err
    assert "unknown to this specprod-db" in err and "newer specprod-db" in err


def test_not_a_production_schema_is_refused(pg_dsn, schema_name, capsys):
    query(pg_dsn, f'CREATE SCHEMA "{schema_name}"')
    assert main(["migrate", "--schema", schema_name, "--db", pg_dsn]) == 2
    assert "not a production schema" in capsys.readouterr().err
    assert main(["migrate", "--schema", schema_name + "x", "--db", pg_dsn]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_server_stop_during_a_migration_is_exit_3(pg_dsn, schema_name):
    """The database stopping a migration (here lock_timeout, while another session holds
    frame) is exit 3 naming the cause and the setting, rolled back (layout 2.3 still),
    not "migration failed" (exit 1); the same command later goes ahead."""
    import os
    build_layout_2_3(pg_dsn, schema_name)
    fill(pg_dsn, schema_name, [t for t in LAYOUT_2_3 if not t.bookkeeping])
    record(pg_dsn, schema_name, "2.3")
    holder = psycopg2.connect(pg_dsn)
    try:
        with holder.cursor() as cur:
            cur.execute(f'LOCK TABLE "{schema_name}".frame IN ACCESS EXCLUSIVE MODE')
        r = subprocess.run(CLI + ["migrate", "--schema", schema_name, "--db", pg_dsn],
                           capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, PGOPTIONS="-c lock_timeout=300"))
    finally:
        holder.rollback()
        holder.close()
    assert r.returncode == 3, r.stdout + r.stderr
    err = r.stderr.strip().splitlines()[-1]
    assert "lock_timeout" in err and "migrating schema" in err, r.stderr
    assert "Traceback" not in r.stderr
    assert layout(pg_dsn, schema_name) == ("2.3", "recorded")
    assert not FRAME_INDEXES_V2_4 & set(catalog(pg_dsn, schema_name)["indexes"])
    assert migrate_cli(pg_dsn, schema_name).returncode == 0
    assert layout(pg_dsn, schema_name) == ("2.4", "recorded")
