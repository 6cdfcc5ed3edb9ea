"""The DDL generated from schema.py matches the specprod-db 1.3 catalog, read back from
the server: column by column, index by index, constraint by constraint.

Intended differences, and nothing else: the ``program`` columns are VARCHAR(8) (decision
5); our bookkeeping tables (``load_run``, ``tile_state``, ``tile_history``); the tile
afterburner tables of layout 2.3 (``ztile_emline``, ``ztile_qso_mgii``, ``ztile_qso_qn``:
:data:`ADDED` lists their columns, indexes and constraints); frame's unique index on
(expid, camera) and indexes on expid and camera of layout 2.4 (:data:`ADDED_FRAME_INDEXES`:
the old tool's catalog in tests/data is specprod-db 1.3's, made before its daily work
added them, d86b6c7)."""
import csv
import os

import psycopg2

from specprod_db import schema

from specprod_db.db import ddl
from specprod_db.commands import init

DATA = os.path.join(os.path.dirname(__file__), "data")


#: The tile afterburner tables (layout 2.3): an addition to the old tool's catalog.  Each
#: has id (primary key, foreign key to ztile.id), targetid, tileid, then the columns
#: desispec's read_redrock reads from the file, and indexes on targetid and tileid.
ADDED = {
    "ztile_emline": ["id", "targetid", "tileid", "oii_flux", "oii_flux_ivar"],
    "ztile_qso_mgii": ["id", "targetid", "tileid", "is_qso_mgii"],
    "ztile_qso_qn": ["id", "targetid", "tileid", "is_qso_qn_new_rr", "c_lya", "c_civ",
                     "c_ciii", "c_mgii", "c_hbeta", "c_halpha", "z_new", "zerr_new",
                     "zwarn_new", "spectype_new", "subtype_new", "chi2_new",
                     "deltachi2_new"] + [f"coeff_new_{k}" for k in range(10)],
}
ADDED_INDEXES = {f"{t}_pkey" for t in ADDED} | {f"ix_{t}_{c}" for t in ADDED
                                                for c in ("targetid", "tileid")}
ADDED_CONSTRAINTS = {f"{t}_pkey" for t in ADDED} | {f"{t}_id_fkey" for t in ADDED}

#: frame's indexes of layout 2.4, as desihub/specprod-db's daily work defines them
#: (``Index('ix_frame_unique', "expid", "camera", unique=True)``, ``index=True`` on
#: expid and camera): additions to the 1.3 catalog, indexes only (no constraint).
ADDED_FRAME_INDEXES = {
    "ix_frame_unique": "CREATE UNIQUE INDEX ix_frame_unique ON SCHEMA.frame USING btree "
                       "(expid, camera)",
    "ix_frame_expid": "CREATE INDEX ix_frame_expid ON SCHEMA.frame USING btree (expid)",
    "ix_frame_camera": "CREATE INDEX ix_frame_camera ON SCHEMA.frame USING btree (camera)",
}


def _reference(name, delimiter):
    with open(os.path.join(DATA, name)) as f:
        return list(csv.DictReader(f, delimiter=delimiter))


def test_columns_match_reference(created, schema_name):
    with created.cursor() as cur:
        cur.execute("""SELECT table_name, ordinal_position, column_name, data_type,
                              character_maximum_length, numeric_precision, is_nullable,
                              column_default
                       FROM information_schema.columns WHERE table_schema = %s""",
                    (schema_name,))
        got = {(r[0], r[1]): r for r in cur.fetchall()}
    reference = _reference("specprod-db-1.3-columns.csv", ",")
    assert reference
    differences = []
    for ref in reference:
        key = (ref["table_name"], int(ref["ordinal_position"]))
        row = got.pop(key, None)
        assert row is not None, f"missing column {key}"
        ours = [row[2], row[3], "" if row[4] is None else str(row[4]),
                "" if row[5] is None else str(row[5]), row[6],
                (row[7] or "").replace(schema_name + ".", "SCHEMA.")]
        theirs = [ref["column_name"], ref["data_type"], ref["char_len"], ref["num_precision"],
                  ref["is_nullable"], ref["column_default"].replace("ref13.", "SCHEMA.")]
        if ours != theirs:
            differences.append((key, theirs, ours))
    # The one intended difference (design decision 5): program columns are VARCHAR(8).
    widened = {(k[0], d[2]) for k, d, _ in [(k, d, o) for k, d, o in differences]}
    assert all(o[0] == "program" and d[2] == "6" and o[2] == "8" for _, d, o in differences), \
        differences
    assert {(k[0], "program") for k, _, _ in differences} == schema.WIDENED_PROGRAM_COLUMNS
    assert widened  # the difference exists and is exactly the listed one
    # Everything left is ours: the bookkeeping tables and the afterburner tables.
    assert {k[0] for k in got} == {t.name for t in schema.TABLES if t.bookkeeping} \
        | set(ADDED)
    assert {t.name for t in schema.AFTERBURNER_TABLES} == set(ADDED)
    for name, columns in ADDED.items():
        assert [got[(name, i)][2] for i in range(1, len(columns) + 1)] == columns
        assert got[(name, 1)][3] == "numeric" and got[(name, 1)][5] == 39
        assert all(got[(name, i)][6] == "NO" for i in range(1, len(columns) + 1))


def test_indexes_match_reference(created, schema_name):
    with created.cursor() as cur:
        cur.execute("SELECT tablename, indexname, indexdef FROM pg_indexes "
                    "WHERE schemaname = %s", (schema_name,))
        got = {r[1]: r[2].replace(f"{schema_name}.", "SCHEMA.") for r in cur.fetchall()}
    for ref in _reference("specprod-db-1.3-indexes.psv", "|"):
        assert got.pop(ref["indexname"]) == ref["indexdef"]
    for name, definition in ADDED_FRAME_INDEXES.items():
        assert got.pop(name) == definition
    q3c = {k: v for k, v in got.items() if k.endswith("_q3c_ang2ipix")}
    assert set(q3c) == {"ix_tile_q3c_ang2ipix", "ix_exposure_q3c_ang2ipix",
                        "ix_photometry_q3c_ang2ipix", "ix_fiberassign_q3c_ang2ipix"}
    assert "q3c_ang2ipix(target_ra, target_dec)" in q3c["ix_fiberassign_q3c_ang2ipix"]
    assert set(got) - set(q3c) == {f"{t.name}_pkey" for t in schema.TABLES if t.bookkeeping} \
        | ADDED_INDEXES


def test_constraints_match_reference(created, schema_name):
    with created.cursor() as cur:
        cur.execute("""SELECT c.conrelid::regclass::text, c.conname, c.contype,
                              pg_get_constraintdef(c.oid)
                       FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
                       WHERE n.nspname = %s""", (schema_name,))
        got = {r[1]: (r[2], r[3].replace(f"{schema_name}.", "SCHEMA.")) for r in cur.fetchall()}
    for ref in _reference("specprod-db-1.3-constraints.psv", "|"):
        assert got.pop(ref["conname"]) == (ref["contype"], ref["definition"])
    for t in ADDED:
        assert got[f"{t}_id_fkey"] == ("f", "FOREIGN KEY (id) REFERENCES SCHEMA.ztile(id)")
    assert set(got) == ({f"{t.name}_pkey" for t in schema.TABLES if t.bookkeeping}
                        | {"tile_state_run_id_fkey", "tile_history_run_id_fkey"}
                        | ADDED_CONSTRAINTS)


def test_init_is_idempotent(pg_dsn, schema_name, caplog):
    assert init.run(init_args(pg_dsn, schema_name)) == 0
    conn = psycopg2.connect(pg_dsn)

    def snapshot():
        with conn.cursor() as cur:
            cur.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname=%s "
                        "ORDER BY 1", (schema_name,))
            idx = cur.fetchall()
            cur.execute(f'SELECT id, package, version FROM "{schema_name}".version ORDER BY id')
            return idx, cur.fetchall()
    first = snapshot()
    assert init.run(init_args(pg_dsn, schema_name)) == 0
    assert snapshot() == first
    assert [p for _, p, _ in first[1]][:3] == ["astropy", "desiutil", "lsd9-photometry"]
    conn.close()


def test_overwrite_needs_confirmation(pg_dsn, schema_name, capsys):
    args = init_args(pg_dsn, schema_name, overwrite=True)
    assert init.run(args) == 2
    assert "--yes" in capsys.readouterr().err
    args.yes = True
    assert init.run(args) == 0


def test_missing_grant_role_is_a_warning(pg_dsn, schema_name):
    args = init_args(pg_dsn, schema_name)
    args.grant = ["no_such_role_xyz"]
    args.no_grant = False
    assert init.run(args) == 0


def test_grants_include_default_privileges(pg_dsn, schema_name):
    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = 'specprod_test_reader'")
        if not cur.fetchone():
            cur.execute("CREATE ROLE specprod_test_reader")
    args = init_args(pg_dsn, schema_name)
    args.grant = ["specprod_test_reader"]
    args.no_grant = False
    assert init.run(args) == 0
    with conn.cursor() as cur:
        cur.execute(f'CREATE TABLE "{schema_name}".later (x int)')
        cur.execute("SELECT has_table_privilege('specprod_test_reader', %s, 'SELECT'), "
                    "has_table_privilege('specprod_test_reader', %s, 'SELECT')",
                    (f"{schema_name}.ztile", f"{schema_name}.later"))
        assert cur.fetchone() == (True, True)
        cur.execute(f'DROP SCHEMA "{schema_name}" CASCADE')
        cur.execute("DROP OWNED BY specprod_test_reader")
    conn.close()


def test_unreachable_database_is_one_clear_line(capsys):
    from specprod_db.cli import main
    code = main(["init", "--schema", "x", "--db",
                 "host=127.0.0.1 port=1 dbname=nodb user=nobody connect_timeout=2"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "host=127.0.0.1" in err and "port=1" in err and "database=nodb" in err
    assert "user=nobody" in err and "Traceback" not in err


def init_args(dsn, schema_name, overwrite=False):
    import argparse
    p = argparse.ArgumentParser()
    init.add_arguments(p)
    argv = ["--schema", schema_name, "--db", dsn, "--no-grant"]
    if overwrite:
        argv.append("--overwrite")
    return p.parse_args(argv)


def test_secondary_indexes_dropped_and_rebuilt(created, schema_name):
    def names():
        with created.cursor() as cur:
            cur.execute("SELECT indexname FROM pg_indexes WHERE schemaname = %s",
                        (schema_name,))
            return {r[0] for r in cur.fetchall()}
    before = names()
    dropped = ddl.drop_secondary_indexes(created, schema_name)
    after = names()
    assert set(dropped) == before - after
    assert "ix_ztile_z" in dropped and "ix_photometry_q3c_ang2ipix" in dropped
    assert {"ix_ztile_unique", "ztile_pkey", "ix_target_unique"} <= after
    ddl.create_indexes(created, schema_name)
    assert names() == before


def test_overwrite_refused_while_a_load_runs(pg_dsn, schema_name, capsys):
    """init --overwrite takes the schema's load lock before dropping anything: with a load
    holding it, init says so in one line, exits 2 and the schema is left intact."""
    from specprod_db.db import lock
    from specprod_db.cli import main
    assert init.run(init_args(pg_dsn, schema_name)) == 0
    holder = psycopg2.connect(pg_dsn, application_name="specprod-db")
    holder.autocommit = True
    try:
        with holder.cursor() as cur:
            cur.execute(f'INSERT INTO "{schema_name}".load_run (started, ranks, command, '
                        "options) VALUES (now(), 4, 'specprod-db load --schema x', '{}')")
            cur.execute(f'INSERT INTO "{schema_name}".version (package, version) '
                        "VALUES ('marker', 'kept')")
            cur.execute("SELECT pg_advisory_lock(%s, %s)",
                        (lock.LOCK_NAMESPACE, lock.lock_key(schema_name)))
        capsys.readouterr()
        code = main(["init", "--schema", schema_name, "--db", pg_dsn, "--no-grant",
                     "--overwrite", "--yes"])
        err = capsys.readouterr().err.strip()
        assert code == 2, err
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        assert "init --overwrite refused" in err and schema_name in err
        assert "specprod-db load --schema x" in err  # names the running load
        with holder.cursor() as cur:
            cur.execute(f'SELECT version FROM "{schema_name}".version '
                        "WHERE package = 'marker'")
            assert cur.fetchall() == [("kept",)]
            cur.execute(f'SELECT count(*) FROM "{schema_name}".load_run')
            assert cur.fetchone() == (1,)
            cur.execute("SELECT pg_advisory_unlock(%s, %s)",
                        (lock.LOCK_NAMESPACE, lock.lock_key(schema_name)))
        # once the load is gone, the overwrite goes ahead
        assert main(["init", "--schema", schema_name, "--db", pg_dsn, "--no-grant",
                     "--overwrite", "--yes"]) == 0
        with holder.cursor() as cur:
            cur.execute(f'SELECT count(*) FROM "{schema_name}".load_run')
            assert cur.fetchone() == (0,)
    finally:
        holder.close()
