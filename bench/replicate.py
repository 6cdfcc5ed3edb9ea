"""Databases of full-survey size for ``bench/run.py`` (d), built by replicating a loaded
schema's rows in SQL, and cached between benchmark runs.

The base is a schema holding ``B`` small mock tiles loaded by ``specprod-db load
--initial`` (the 1,000-tile load of (e)).  A database of ``N`` tiles' worth of rows is
``c = N / B`` copies of the base's rows, copy ``k`` (0 .. c-1) under new keys:

* TILEID ``+ k * TILE_STEP`` (100,000: above every mock and DESI TILEID);
* TARGETID ``+ k * S``: the desitarget OBJID field (bits 0-21) moves by ``k * S``, where
  ``S`` is the power of two above the base's largest OBJID, so every replicated TARGETID
  is a valid one (same RELEASE, BRICKID, flag bits; another OBJID in the same brick:
  the key distribution of a denser sky), distinct from every other, and the Legacy
  Surveys id ``ls_id = RELEASE << 40 | BRICKID << 16 | OBJID`` of photometry (and its
  ``brick_objid``) moves with it (checked: ``OBJID + (c - 1) * S < 2**16``);
* the composite ids of :mod:`specprod_db.ids` follow: ``target.id``, ``ztile.id``,
  ``ztile.targetphotid``, ``fiberassign.id``, ``potential.id`` and the afterburners' ids
  hold TILEID in bits 64-95 and TARGETID in bits 0-63, so they move by
  ``k * TILE_STEP * 2**64 + k * S``; ``zpix.id`` holds no TILEID: ``+ k * S``;
* EXPID ``+ k * E`` (``E``: a multiple of 100,000 at least 100,000 above the base's
  largest EXPID, so above the new tiles' too) and ``frameid = 100 * EXPID +
  cameraid`` ``+ 100 * k * E``;
* ``tile_state`` and ``tile_history`` rows are copied too (tile ``loaded``, same
  fingerprints): the replicated tiles are loaded tiles to ``status`` and the planner;
  they are not in the mock's tiles file, so the daily run of (d) names its tiles
  (``--tiles``) as it always did (tiles not named are not planned).

Mechanism (chosen by measurement, ``bench/README.md``): ``init`` the schema, drop every
key, foreign key and index of the data tables (:func:`specprod_db.db.builds.drop` of
``bulk_builds(keep=())``, the bulk path's own list), one ``INSERT ... SELECT ... CROSS
JOIN generate_series(0, c - 1)`` per table, then every build once on several sessions
(:func:`specprod_db.db.build_scheduler.build_missing`; each key and foreign key validated in one
pass: the replicated rows satisfy all of them, or the build fails), then ``VACUUM
ANALYZE`` (a production's statistics and visibility map).  No CLUSTER (the daily path
never relies on it).

Cache: the schema is named ``bench_growth_<digest>_<N>``, the digest of the mock code,
the schema module, this file and the base tiles; its ``COMMENT`` records that it is
complete (JSON).  A schema of that name without the comment (a build killed half-way)
is dropped and built again; ``--rebuild-growth`` rebuilds every one.  Stale cached
schemas (other digests) are dropped when a new one is built.  The daily run of (d) adds
10 tiles to a cached database: :func:`remove_tiles` takes them out again (rows, the
photometry only they referenced, their bookkeeping rows, the flags of their TARGETIDs),
before and after each measurement, so the cache holds the same rows every time.
"""
import hashlib
import json
import os
import time

import psycopg2
from psycopg2 import sql

TILE_STEP = 100_000
EXPID_ROUND = 100_000
PREFIX = "bench_growth_"
#: copied once (not per copy)
ONCE = ("version",)
#: tables whose rows belong to a tile (deleted by :func:`remove_tiles`), children first
TILE_TABLES = ("ztile_emline", "ztile_qso_mgii", "ztile_qso_qn", "ztile", "target",
               "fiberassign", "potential", "frame", "exposure")
#: tables referencing photometry.targetid
PHOT_REFS = ("target", "fiberassign", "potential", "ztile", "zpix")
#: composite ids holding TILEID in bits 64-95 (ids.py)
TILE_COMPOSITE = {"target", "fiberassign", "potential", "ztile", "ztile_emline",
                  "ztile_qso_mgii", "ztile_qso_qn"}


def _q(schema, table):
    return sql.Identifier(schema, table)


def digest(base_tiles):
    """The cache key: mock code, schema module, this file, the base tiles."""
    from mocks import mock_digest

    import specprod_db.schema
    h = hashlib.sha256(mock_digest().encode())
    for path in (specprod_db.schema.__file__, os.path.abspath(__file__)):
        with open(path, "rb") as f:
            h.update(f.read())
    h.update(",".join(map(str, base_tiles)).encode())
    return h.hexdigest()[:10]


def schema_name(dig, size):
    return f"{PREFIX}{dig}_{size}"


def columns(cur, schema, table):
    cur.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = %s"
                " AND table_name = %s ORDER BY ordinal_position", (schema, table))
    return [r[0] for r in cur.fetchall()]


def offsets(cur, base):
    """(S, E): the TARGETID (OBJID field) step and the EXPID step of the base."""
    cur.execute(sql.SQL("SELECT max(targetid & 4194303), max(brick_objid) FROM {}").format(
        _q(base, "photometry")))
    maxobj, maxbo = cur.fetchone()
    maxobj = max(maxobj or 0, maxbo or 0)
    s = 1
    while s <= maxobj:
        s *= 2
    cur.execute(sql.SQL("SELECT max(expid) FROM {}").format(_q(base, "exposure")))
    hi = cur.fetchone()[0] or 0
    # above every EXPID of the mock (the new tiles' exposures come after the base's)
    return s, maxobj, (hi // EXPID_ROUND + 2) * EXPID_ROUND


def expression(table, column, k="g.k"):
    """The SQL expression of ``column`` of copy ``k`` (``k`` an SQL expression)."""
    c = sql.Identifier("b", column)
    k = sql.SQL(k)
    S, T, E = sql.Placeholder("s"), sql.Literal(TILE_STEP), sql.Placeholder("e")
    if column == "tileid":
        return sql.SQL("{c} + {k} * {t}").format(c=c, k=k, t=T)
    if column in ("targetid", "ls_id", "brick_objid"):
        return sql.SQL("{c} + {k} * {s}").format(c=c, k=k, s=S)
    if column == "expid":
        return sql.SQL("{c} + {k} * {e}").format(c=c, k=k, e=E)
    if column == "frameid":
        return sql.SQL("{c} + 100 * {k} * {e}").format(c=c, k=k, e=E)
    if (column == "id" and table in TILE_COMPOSITE) or column == "targetphotid":
        return sql.SQL("{c} + ({k} * {t})::numeric * 18446744073709551616 + {k} * {s}"
                       ).format(c=c, k=k, t=T, s=S)
    if column == "id" and table == "zpix":
        return sql.SQL("{c} + {k} * {s}").format(c=c, k=k, s=S)
    return c


def build(dsn, env, base, size, base_tiles, name, connections=3, log=print):
    """Build the cached schema ``name`` of ``size // base_tiles`` copies of ``base``."""
    import subprocess
    import sys

    from specprod_db.db import build_scheduler, builds
    from specprod_db.schema import DATA_TABLES
    copies = max(1, round(size / base_tiles))
    timers = {}
    t0 = time.perf_counter()
    drop(dsn, name)
    subprocess.run([os.path.join(os.path.dirname(sys.executable), "specprod-db"), "init",
                    "--schema", name, "--db", dsn, "--no-grant"], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    conn = psycopg2.connect(dsn)
    try:
        builds.drop(conn, name, builds.bulk_builds(keep=()))
        timers["init+drop"] = time.perf_counter() - t0
        with conn.cursor() as cur:
            s, maxobj, e = offsets(cur, base)
            if maxobj + (copies - 1) * s >= 1 << 16:
                raise RuntimeError(f"{copies} copies: OBJID {maxobj} + {copies - 1} x {s} "
                                   "overflows the 16 bits of ls_id's OBJID")
            cur.execute(sql.SQL("SELECT max(expid) FROM {}").format(_q(base, "exposure")))
            maxexp = cur.fetchone()[0] or 0
            if 100 * (maxexp + (copies - 1) * e) + 99 >= 2**31:
                raise RuntimeError(f"{copies} copies: frameid overflows integer")
            params = {"s": s, "e": e, "n": copies - 1}
            tables = [t.name for t in DATA_TABLES] + ["tile_state", "tile_history"]
            cur.execute(sql.SQL("DELETE FROM {}").format(_q(name, "version")))
            cur.execute(sql.SQL("INSERT INTO {} SELECT * FROM {} ORDER BY id").format(
                _q(name, "load_run"), _q(base, "load_run")))
            cur.execute(sql.SQL("SELECT setval(pg_get_serial_sequence(%s, 'id'), "
                                "(SELECT max(id) FROM {}))").format(_q(name, "load_run")),
                        (f"{name}.load_run",))
            conn.commit()
            for table in tables:
                t = time.perf_counter()
                cols = [c for c in columns(cur, base, table)
                        if not (table == "tile_history" and c == "id")]
                names = sql.SQL(", ").join(map(sql.Identifier, cols))
                if table in ONCE:
                    q = sql.SQL("INSERT INTO {dst} ({names}) SELECT {names} FROM {src}"
                                ).format(dst=_q(name, table), src=_q(base, table),
                                         names=names)
                else:
                    exprs = sql.SQL(", ").join(expression(table, c) for c in cols)
                    order = sql.SQL(" ORDER BY g.k, b.id" if table == "tile_history"
                                    else "")
                    q = sql.SQL("INSERT INTO {dst} ({names}) SELECT {exprs} FROM {src} AS b"
                                " CROSS JOIN generate_series(0, %(n)s) AS g(k){order}"
                                ).format(dst=_q(name, table), src=_q(base, table),
                                         names=names, exprs=exprs, order=order)
                cur.execute(q, params)
                conn.commit()
                timers[f"insert {table}"] = time.perf_counter() - t
        # the inserting backend's statistics counters reach the server when it exits:
        # ANALYZE after that, or the inserts count as changes since the last ANALYZE
        conn.close()
        t = time.perf_counter()
        steps = build_scheduler.build_missing(dsn, name, None, connections=connections)
        timers["builds"] = time.perf_counter() - t
        time.sleep(1.0)
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        t = time.perf_counter()
        with conn.cursor() as cur:
            for table in [t.name for t in DATA_TABLES] + ["tile_state", "tile_history"]:
                cur.execute(sql.SQL("VACUUM ANALYZE {}").format(_q(name, table)))
        timers["vacuum analyze"] = time.perf_counter() - t
        info = {"complete": True, "copies": copies, "tiles": tiles_held(conn, name),
                "base": base, "base_tiles": base_tiles, "objid_step": s, "expid_step": e,
                "build_s": time.perf_counter() - t0, "timers": timers,
                "builds_sum_s": sum(steps.values())}
        info["bytes"] = size_bytes(conn, name)
        with conn.cursor() as cur:
            cur.execute(sql.SQL("COMMENT ON SCHEMA {} IS {}").format(
                sql.Identifier(name), sql.Literal(json.dumps(info))))
        log(f"  growth cache {name}: {copies} copies, {info['tiles']} tiles, "
            f"{info['bytes'] / 1e9:.2f} GB, built in {info['build_s']:.0f} s ("
            + ", ".join(f"{k} {v:.1f}" for k, v in timers.items()) + ")")
        return info
    finally:
        conn.close()


def tiles_held(conn, name):
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(_q(name, "tile")))
        return cur.fetchone()[0]


def size_bytes(conn, name):
    """Sum of pg_total_relation_size (tables with their indexes and TOAST)."""
    with conn.cursor() as cur:
        cur.execute("SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s "
                    "AND c.relkind = 'r'", (name,))
        return int(cur.fetchone()[0])


def cached(dsn, name):
    """The schema's completion record, or None (absent or unfinished)."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace "
                        "WHERE nspname = %s", (name,))
            row = cur.fetchone()
    finally:
        conn.close()
    if not row:
        return None
    try:
        info = json.loads(row[0] or "")
    except ValueError:
        return None
    return info if info.get("complete") else None


def drop(dsn, name):
    """``DROP SCHEMA name CASCADE`` (if it exists), in its own autocommit session: the
    benchmarks' schemas, cached or not (``bench/run.py`` drops its own with it)."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
    conn.close()


def drop_stale(dsn, keep):
    """Drop every cached growth schema but ``keep`` (other digests, other sizes)."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s",
                        (PREFIX + "%",))
            names = [r[0] for r in cur.fetchall()]
    finally:
        conn.close()
    for n in names:
        if n not in keep:
            drop(dsn, n)
    return [n for n in names if n not in keep]


def ensure(dsn, env, sizes, base_tiles, make_base, rebuild=False, connections=3,
           log=print):
    """``{size: (schema, info)}``: the cached schema of each size, built where absent,
    unfinished or ``rebuild``; ``make_base()`` returns the base schema (called once, only
    when something is built)."""
    if max(base_tiles) >= TILE_STEP:
        raise ValueError(f"TILEID {max(base_tiles)} >= the replicas' step {TILE_STEP}")
    dig = digest(base_tiles)
    names = {n: schema_name(dig, n) for n in sizes}
    stale = drop_stale(dsn, set(names.values()))
    if stale:
        log(f"  growth cache: dropped stale {', '.join(stale)}")
    out, base = {}, None
    for n in sizes:
        info = None if rebuild else cached(dsn, names[n])
        if info is None:
            if base is None:
                base = make_base()
            log(f"  growth cache: building {names[n]} ({n} tiles' worth of rows)")
            info = build(dsn, env, base, n, len(base_tiles), names[n],
                         connections=connections, log=log)
            info["built_now"] = True
        else:
            log(f"  growth cache: reusing {names[n]} ({info['tiles']} tiles, "
                f"{info['bytes'] / 1e9:.2f} GB, built in {info['build_s']:.0f} s)")
            info["built_now"] = False
        out[n] = (names[n], info)
    return out


def remove_tiles(dsn, name, tileids):
    """Take ``tileids`` (a daily run's new tiles) out of ``name`` again: their rows, the
    photometry rows no other row references, their tile_state / tile_history rows and the
    load_run rows left without either, and recompute the flags of their TARGETIDs; then
    ANALYZE what went stale (:func:`specprod_db.load.finalize.stale_tables`).  Returns
    the tiles that were there."""
    from specprod_db.load import finalize
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            ids = list(map(int, tileids))
            cur.execute(sql.SQL("SELECT tileid FROM {} WHERE tileid = ANY(%s)").format(
                _q(name, "tile_state")), (ids,))
            there = [r[0] for r in cur.fetchall()]
            if not there:
                conn.rollback()
                return []
            cur.execute(sql.SQL(" UNION ").join(
                sql.SQL("SELECT targetid FROM {} WHERE tileid = ANY(%(t)s)").format(
                    _q(name, t)) for t in ("target", "fiberassign", "potential", "ztile")),
                {"t": ids})
            tids = [r[0] for r in cur.fetchall()]
            for t in TILE_TABLES + ("tile_state", "tile_history", "tile"):
                cur.execute(sql.SQL("DELETE FROM {} WHERE tileid = ANY(%s)").format(
                    _q(name, t)), (ids,))
            refs = sql.SQL(" ").join(
                sql.SQL("AND NOT EXISTS (SELECT 1 FROM {} r WHERE r.targetid = p.targetid)"
                        ).format(_q(name, t)) for t in PHOT_REFS)
            cur.execute(sql.SQL("DELETE FROM {} p WHERE p.targetid = ANY(%s) {}").format(
                _q(name, "photometry"), refs), (tids,))
            cur.execute(sql.SQL(
                "DELETE FROM {r} WHERE id NOT IN (SELECT run_id FROM {s}) "
                "AND id NOT IN (SELECT run_id FROM {h})").format(
                    r=_q(name, "load_run"), s=_q(name, "tile_state"),
                    h=_q(name, "tile_history")))
            finalize.update_primary(conn, name, targetids=tids)
        conn.commit()
        from specprod_db.schema import DATA_TABLES
        stale = finalize.stale_tables(conn, name, [t.name for t in DATA_TABLES])
        finalize.analyze(conn, name, stale)
        conn.commit()
        return there
    finally:
        conn.close()
