"""The keys, foreign keys and indexes of a schema as separate builds
(:mod:`specprod_db.db.builds`): the list matches the catalog of ``init``; dropped and
built again (on 1 or 3 connections) the catalog is ``init``'s again; a build killed at any
point is finished by the next call; rows a key or a foreign key refuses are named with
their table, key and tiles."""
import os
import secrets
import signal
import subprocess
import sys
import threading
import time

import psycopg2
import pytest
from psycopg2 import sql

from specprod_db.db import build_scheduler, builds, ddl, violations
from specprod_db.errors import DatabaseLost, InputError


def catalog(conn, schema_name):
    """Constraints (name, table, type, definition, validated, index used) and indexes
    (name, definition) of ``schema_name``, the schema name replaced by ``S``."""
    def norm(row):
        return tuple(str(x).replace(schema_name + ".", "S.") for x in row)
    with conn.cursor() as cur:
        cur.execute("""SELECT c.conname, c.conrelid::regclass::text, c.contype,
                              pg_get_constraintdef(c.oid), c.convalidated,
                              c.conindid::regclass::text
                       FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
                       WHERE n.nspname = %s ORDER BY 1""", (schema_name,))
        constraints = [norm(r) for r in cur.fetchall()]
        cur.execute("""SELECT i.relname, pg_get_indexdef(i.oid), x.indisprimary,
                              x.indisunique, x.indisvalid
                       FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                       JOIN pg_namespace n ON n.oid = i.relnamespace
                       WHERE n.nspname = %s ORDER BY 1""", (schema_name,))
        indexes = [norm(r) for r in cur.fetchall()]
    conn.rollback()
    return constraints, indexes


@pytest.fixture(scope="module")
def reference(pg_dsn):
    """The catalog of a fresh ``init`` schema."""
    name = "test_" + secrets.token_hex(4)
    conn = psycopg2.connect(pg_dsn)
    try:
        ddl.create_schema(conn, name)
        yield catalog(conn, name)
    finally:
        conn.rollback()
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(name)))
        conn.commit()
        conn.close()


def test_builds_are_the_catalog_of_init(created, schema_name, reference):
    every = builds.schema_builds()
    names = [b.name for b in every]
    assert len(names) == len(set(names))
    constraints, indexes = reference
    in_catalog = {c[0] for c in constraints} | {i[0] for i in indexes}
    assert set(names) == in_catalog
    kinds = {k: sum(1 for b in every if b.kind == k) for k in builds.KINDS}
    assert kinds == {builds.PRIMARY_KEY: 16, builds.UNIQUE: 1, builds.UNIQUE_INDEX: 6,
                     builds.FOREIGN_KEY: 17, builds.INDEX: 47, builds.Q3C: 4}
    assert builds.by_name("ztile_targetphotid_fkey").depends == ("target_pkey",)
    assert builds.by_name("ztile_emline_id_fkey").references == ("ztile", "id")
    assert builds.missing(created, schema_name) == []
    assert set(builds.present(created, schema_name).values()) == {builds.DONE}


@pytest.mark.parametrize("connections", [1, 3])
def test_dropped_and_built_again_is_init(created, pg_dsn, schema_name, reference,
                                         connections):
    dropped = builds.drop(created, schema_name, builds.schema_builds())
    assert len(dropped) == len(builds.schema_builds())
    assert catalog(created, schema_name) == ([], [])
    steps = []
    seconds = build_scheduler.build_missing(pg_dsn, schema_name, connections=connections,
                                            progress=lambda name, s: steps.append(name))
    assert set(seconds) == {b.name for b in builds.schema_builds()}
    assert "ztile_tileid_fkey: validate" in steps
    # a foreign key's steps come after its referenced key
    assert steps.index("ztile_pkey: add") < steps.index("ztile_emline_id_fkey: add not valid")
    assert catalog(created, schema_name) == reference
    assert build_scheduler.build_missing(pg_dsn, schema_name) == {}   # nothing left to do


@pytest.mark.parametrize("connections", [1, 3])
def test_the_end_of_a_bulk_load_clusters_before_the_other_builds(created, pg_dsn,
                                                                schema_name, reference,
                                                                connections):
    """finish=True: each q3c table CLUSTERed once its q3c index exists and before its
    other builds (CLUSTER rebuilds every index the table has), every table ANALYZEd
    after its builds; the catalog is init's."""
    builds.drop(created, schema_name, builds.bulk_builds())
    steps = []
    seconds = build_scheduler.build_missing(pg_dsn, schema_name, connections=connections,
                                            progress=lambda name, s: steps.append(name),
                                            finish=True)
    q3c_tables = [t.name for t in builds.TABLES if t.q3c]
    assert {f"cluster_{t}" for t in q3c_tables} <= set(seconds)
    assert {f"analyze_{t.name}" for t in builds.TABLES} <= set(seconds)
    for t in q3c_tables:
        cluster = steps.index(f"cluster_{t}: cluster")
        if f"ix_{t}_q3c_ang2ipix: create" in steps:
            assert steps.index(f"ix_{t}_q3c_ang2ipix: create") < cluster
        for i, step in enumerate(steps):
            b = step.split(": ")[0]
            if b in {x.name for x in builds.table_builds(builds.schema_table(t))} \
                    and not b.endswith("q3c_ang2ipix"):
                assert i > cluster, (step, t)
        assert steps.index(f"analyze_{t}: analyze") > max(
            i for i, s in enumerate(steps) if s.split(": ")[0].startswith(("ix_" + t, t + "_")))
    assert catalog(created, schema_name) == reference
    with created.cursor() as cur:
        cur.execute("""SELECT c.relname FROM pg_index x JOIN pg_class c ON c.oid = x.indrelid
                       JOIN pg_namespace n ON n.oid = c.relnamespace
                       WHERE n.nspname = %s AND x.indisclustered ORDER BY 1""",
                    (schema_name,))
        assert [r[0] for r in cur.fetchall()] == sorted(q3c_tables)
        cur.execute("SELECT count(*) FROM pg_stat_user_tables WHERE schemaname = %s AND "
                    "last_analyze IS NULL", (schema_name,))
        assert cur.fetchone()[0] == 0
    created.rollback()


@pytest.mark.parametrize("connections", [1, 3])
def test_the_flags_run_in_parts_before_their_tables_builds(created, pg_dsn, schema_name,
                                                           reference, connections):
    """finish=True with the load's flag parts (load/finish.flag_parts): ztile's in one
    step per session, every one done before any other ztile build (an UPDATE on the bare
    table writes no index entry), zpix's before zpix's builds; the catalog is init's."""
    from specprod_db.load.finish import flag_parts
    builds.drop(created, schema_name, builds.bulk_builds())
    steps = []
    seconds = build_scheduler.build_missing(pg_dsn, schema_name, connections=connections,
                                            progress=lambda name, s: steps.append(name),
                                            finish=True, first=flag_parts(schema_name, connections))
    for table, parts in (("ztile", connections), ("zpix", 1)):
        firsts = [f"first_{table}_{k}" for k in range(parts)]
        assert set(firsts) <= set(seconds)
        last = max(steps.index(f"{f}: first") for f in firsts)
        others = {b.name for b in builds.table_builds(builds.schema_table(table))}
        assert [s for s in steps[:last] if s.split(": ")[0] in others] == [], table
    assert catalog(created, schema_name) == reference


def test_direct_foreign_keys_give_the_same_catalog(created, pg_dsn, schema_name, reference):
    builds.drop(created, schema_name, builds.bulk_builds())
    build_scheduler.build_missing(pg_dsn, schema_name, builds.bulk_builds(), connections=2,
                                  fk=builds.FK_DIRECT, check=build_scheduler.CHECK_BEFORE)
    assert catalog(created, schema_name) == reference


def test_bulk_phase_keeps_bookkeeping_version_and_the_upsert_keys(created, schema_name):
    builds.drop(created, schema_name, builds.bulk_builds())
    left = set(builds.present(created, schema_name))
    expected = {b.name for b in builds.schema_builds()} - {b.name for b in
                                                           builds.bulk_builds()}
    assert left == expected
    assert builds.BULK_KEEP <= left
    assert {"version_pkey", "version_package_key", "load_run_pkey",
            "tile_state_run_id_fkey"} <= left


def test_a_referenced_key_is_not_dropped_alone(created, schema_name):
    with pytest.raises(ValueError, match="ztile_pkey.*ztile_emline_id_fkey"):
        builds.drop(created, schema_name, [builds.by_name("ztile_pkey")])
    assert builds.missing(created, schema_name) == []


_KILLED_RUN = """
import os, signal, sys
from specprod_db.db import build_scheduler
def progress(name, seconds):
    if name.endswith(": add not valid"):
        os.kill(os.getpid(), signal.SIGKILL)
build_scheduler.build_missing(sys.argv[1], sys.argv[2], connections=1, progress=progress)
"""


def test_sigkill_between_add_and_validate_then_rerun(created, pg_dsn, schema_name,
                                                     reference):
    builds.drop(created, schema_name, builds.schema_builds())
    proc = subprocess.run([sys.executable, "-c", _KILLED_RUN, pg_dsn, schema_name],
                          timeout=60, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    state = builds.present(created, schema_name)
    half = [n for n, s in state.items() if s == builds.NOT_VALIDATED]
    assert len(half) == 1 and half[0].endswith("_fkey")
    left = builds.missing(created, schema_name)
    assert builds.by_name(half[0]) in left and len(left) < len(builds.schema_builds())
    seconds = build_scheduler.build_missing(pg_dsn, schema_name, connections=2)
    assert set(seconds) == {b.name for b in left}
    assert catalog(created, schema_name) == reference


def _wait_for(pg_dsn, query, timeout=20):
    """Poll ``query`` (one row, one column) until it gives a non-NULL value."""
    deadline = time.monotonic() + timeout
    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True
    try:
        while time.monotonic() < deadline:
            with conn.cursor() as cur:
                cur.execute(query)
                row = cur.fetchone()
            if row and row[0] is not None:
                return row[0]
            time.sleep(0.05)
    finally:
        conn.close()
    pytest.fail(f"timed out waiting for: {query}")


def _blocked_build(schema_name):
    """The pid of a build session of ``schema_name`` waiting for a lock (this test's:
    under pytest-xdist another test's builds may be waiting too)."""
    return ("SELECT pid FROM pg_stat_activity WHERE application_name = 'specprod-db build' "
            "AND wait_event_type = 'Lock' AND position(" + repr(f'"{schema_name}".')
            + " in query) > 0 LIMIT 1")


def _locked(pg_dsn, schema_name, table):
    holder = psycopg2.connect(pg_dsn)
    with holder.cursor() as cur:
        cur.execute(sql.SQL("LOCK TABLE {}.{} IN ACCESS EXCLUSIVE MODE").format(
            sql.Identifier(schema_name), sql.Identifier(table)))
    return holder


def test_terminated_session_mid_build_then_rerun(created, pg_dsn, schema_name, reference):
    builds.drop(created, schema_name, builds.schema_builds())
    holder = _locked(pg_dsn, schema_name, "ztile")   # a ztile build waits: mid-flight
    outcome = {}

    def run():
        try:
            outcome["seconds"] = build_scheduler.build_missing(pg_dsn, schema_name, connections=2)
        except BaseException as err:
            outcome["error"] = err
    thread = threading.Thread(target=run)
    thread.start()
    try:
        pid = _wait_for(pg_dsn, _blocked_build(schema_name))
        _wait_for(pg_dsn, f"SELECT pg_terminate_backend({pid})")
    finally:
        holder.rollback()
        holder.close()
        thread.join(60)
    assert isinstance(outcome.get("error"), DatabaseLost), outcome
    assert "ztile" in str(outcome["error"])
    assert builds.missing(created, schema_name)       # not everything was built
    build_scheduler.build_missing(pg_dsn, schema_name, connections=3)
    assert catalog(created, schema_name) == reference


def test_sigkilled_client_ends_its_waiting_build(created, pg_dsn, schema_name, reference):
    """client_connection_check_interval: the server ends the session of a killed build
    instead of running its statement for nobody once the lock is free."""
    builds.drop(created, schema_name, builds.schema_builds())
    holder = _locked(pg_dsn, schema_name, "photometry")
    proc = subprocess.Popen([sys.executable, "-c",
                             "import sys; from specprod_db.db import build_scheduler; "
                             "build_scheduler.build_missing(sys.argv[1], sys.argv[2], connections=1)",
                             pg_dsn, schema_name], stderr=subprocess.PIPE)
    try:
        pid = _wait_for(pg_dsn, _blocked_build(schema_name))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        _wait_for(pg_dsn, f"SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM pg_stat_activity "
                          f"WHERE pid = {pid}) THEN 1 END", timeout=15)
    finally:
        holder.rollback()
        holder.close()
    assert builds.by_name("photometry_pkey") in builds.missing(created, schema_name)
    build_scheduler.build_missing(pg_dsn, schema_name, connections=2)
    assert catalog(created, schema_name) == reference


@pytest.mark.parametrize("check", [build_scheduler.CHECK_ON_FAILURE, build_scheduler.CHECK_BEFORE])
def test_duplicates_and_orphans_are_named(created, pg_dsn, schema_name, check):
    builds.drop(created, schema_name, builds.bulk_builds())
    s = sql.Identifier(schema_name)
    with created.cursor() as cur:
        # two ztile_emline rows with one id (tiles 500 and 501), referencing no ztile row
        cur.execute(sql.SQL("INSERT INTO {}.ztile_emline VALUES (1, 10, 500, 0, 0), "
                            "(1, 11, 501, 0, 0), (2, 12, 501, 0, 0)").format(s))
        # two potential rows, one (tileid, targetid, location)
        cur.execute(sql.SQL("INSERT INTO {}.tile (tileid, survey, program, faprgrm, "
                            "faflavor, nexp, exptime, tilera, tiledec, efftime_etc, "
                            "efftime_spec, efftime_gfa, goaltime, obsstatus, "
                            "lrg_efftime_dark, elg_efftime_dark, bgs_efftime_bright, "
                            "lya_efftime_dark, goaltype, mintfrac, lastnight) VALUES "
                            "(700, 's', 'p', 'f', 'f', 1, 1, 1, 1, 1, 1, 1, 1, 'o', 1, 1, "
                            "1, 1, 'g', 1, 1)").format(s))
        cur.execute(sql.SQL("INSERT INTO {}.potential VALUES "
                            "(123456789012345678901234567890, 700, 99, 1, 42), "
                            "(123456789012345678901234567891, 700, 99, 2, 42)").format(s))
    created.commit()
    with pytest.raises(violations.KeyViolation) as info:
        build_scheduler.build_missing(pg_dsn, schema_name, builds.bulk_builds(), connections=2,
                                      check=check)
    err = info.value
    assert isinstance(err, InputError)
    message = str(err)
    assert len(message.splitlines()) == 1
    assert ("ztile_emline: 1 value of its primary key ztile_emline_pkey (id) is held by "
            "more than one row: id=1 (2 rows, tiles 500, 501)") in message
    assert ("ztile_emline: 2 values of id reference no ztile row (foreign key "
            "ztile_emline_id_fkey, id -> ztile.id): id=1 (2 rows, tiles 500, 501); "
            "id=2 (1 row, tile 501)") in message
    assert ("potential: 1 value of its unique index ix_potential_unique (tileid, "
            "targetid, location) is held by more than one row: tileid=700, targetid=99, "
            "location=42 (2 rows, tile 700)") in message
    assert "potential_targetid_fkey" in message and "targetid=99" in message
    assert "duplicate key" not in message and "violates" not in message
    assert set(err.found) == {"ztile_emline_pkey", "ztile_emline_id_fkey",
                              "ix_potential_unique", "potential_targetid_fkey"}
    # everything else was built
    assert {b.name for b in builds.missing(created, schema_name)} == set(err.found)
