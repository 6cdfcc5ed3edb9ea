"""Which mechanism a bulk (initial) load should use for its keys, foreign keys and
indexes (issue 18): a measurement, not a test.

On the rows of an already loaded schema (``--source``; make one with ``specprod-db mock
DIR --tiles N``, ``specprod-db init`` and ``specprod-db load --initial``), table by table
in foreign-key order, each table's rows taken once as binary COPY data (``COPY (SELECT
...) TO STDOUT``, in memory):

* ``init``: COPY into a fresh ``init`` schema (every key, foreign key and index checked
  or maintained row by row), then COMMIT;
* ``bare``: COPY into a fresh schema whose data tables lost every build
  (:func:`specprod_db.db.builds.drop` of :func:`specprod_db.db.builds.bulk_builds` with
  nothing kept), then the builds (:func:`specprod_db.db.build_scheduler.build_missing`, K
  sessions): the time of each build step, and the wall time of them all;
* the builds again, from bare tables, once per mechanism: foreign keys added directly
  or ``NOT VALID`` then validated, duplicates and orphans looked for before each key or
  only on failure; K sessions, and on one session (each foreign key's own cost);
* ``photometry``: COPY into photometry with its primary key against COPY into the bare
  table plus ``ADD PRIMARY KEY`` afterwards.

Every COPY is repeated ``--repeats`` times (a fresh schema each time) and the fastest is
kept: the machine is shared.  Prints a table on stdout (logs on stderr) and writes JSON.

    .venv/bin/python bench/bulk_mechanism.py --source h4_src40 --json /tmp/bulk.json
"""
import argparse
import io
import json
import os
import secrets
import sys
import time

import psycopg2
from psycopg2 import sql

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "py"))

from specprod_db.db import build_scheduler, builds, ddl  # noqa: E402
from specprod_db.db.connect import resolve_dsn  # noqa: E402
from specprod_db.devdb import pgcluster  # noqa: E402
from specprod_db.schema import DATA_TABLES  # noqa: E402


def log(msg: str = "") -> None:
    print(msg, file=sys.stderr, flush=True)


def dump(conn, source: str) -> dict:
    """``{table: (rows, binary COPY bytes)}`` of the data tables of ``source`` holding
    rows, in foreign-key order."""
    out = {}
    for t in DATA_TABLES:
        if t.name == "version":
            continue
        buf = io.BytesIO()
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(
                sql.Identifier(source, t.name)))
            n = cur.fetchone()[0]
            if not n:
                continue
            cur.copy_expert(sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT (FORMAT binary)")
                            .format(sql.SQL(", ").join(map(sql.Identifier, t.names)),
                                    sql.Identifier(source, t.name)).as_string(conn), buf)
        conn.rollback()
        out[t.name] = (n, buf.getvalue())
    return out


def new_schema(conn, bare: bool, keep=()) -> str:
    name = "bench_bulk_" + secrets.token_hex(3)
    ddl.create_schema(conn, name)
    if bare:
        builds.drop(conn, name, builds.bulk_builds(keep=keep))
    return name


def drop_schema(conn, name: str) -> None:
    conn.rollback()
    with conn.cursor() as cur:
        cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
    conn.commit()


def copy_in(conn, schema_name: str, table: str, data: bytes) -> float:
    from specprod_db.schema import table as schema_table
    cols = sql.SQL(", ").join(map(sql.Identifier, schema_table(table).names))
    t = time.perf_counter()
    with conn.cursor() as cur:
        cur.copy_expert(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
            sql.Identifier(schema_name, table), cols).as_string(conn), io.BytesIO(data))
    conn.commit()
    return time.perf_counter() - t


def copy_all(conn, dsn: str, data: dict, bare: bool, repeats: int) -> dict:
    """``{table: fastest COPY seconds}`` into init (``bare`` False) or bare tables."""
    best: dict = {}
    for _ in range(repeats):
        name = new_schema(conn, bare)
        try:
            for table, (_, payload) in data.items():
                s = copy_in(conn, name, table, payload)
                best[table] = min(best.get(table, s), s)
        finally:
            drop_schema(conn, name)
    return best


def timed_builds(dsn: str, schema_name: str, which, **kw) -> tuple:
    steps: dict = {}
    t = time.perf_counter()
    build_scheduler.build_missing(dsn, schema_name, which, progress=steps.__setitem__, **kw)
    return time.perf_counter() - t, steps


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", required=True, help="a loaded schema whose rows are used")
    p.add_argument("--db", help="conninfo (default: $SPECPROD_DB_DSN, else the private "
                                "cluster)")
    p.add_argument("--connections", type=int, default=3, help="K build sessions")
    p.add_argument("--parallel-workers", type=int, default=2,
                   help="max_parallel_maintenance_workers per session")
    p.add_argument("--maintenance-work-mem", default="256MB")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", default="bulk_mechanism.json")
    args = p.parse_args()
    dsn = resolve_dsn(args.db) or pgcluster.ensure_server()
    conn = psycopg2.connect(dsn)
    kw = dict(connections=args.connections, parallel_workers=args.parallel_workers,
              maintenance_work_mem=args.maintenance_work_mem)
    res: dict = {"source": args.source, "options": vars(args), "loadavg": os.getloadavg()}

    log(f"dumping the rows of {args.source} ...")
    data = dump(conn, args.source)
    res["rows"] = {t: n for t, (n, _) in data.items()}
    res["bytes"] = {t: len(b) for t, (_, b) in data.items()}

    log("COPY into init tables / bare tables ...")
    res["copy_init_s"] = copy_all(conn, dsn, data, bare=False, repeats=args.repeats)
    res["copy_bare_s"] = copy_all(conn, dsn, data, bare=True, repeats=args.repeats)

    # builds, per mechanism, from bare tables holding the rows
    name = new_schema(conn, bare=True)
    try:
        for table, (_, payload) in data.items():
            copy_in(conn, name, table, payload)
        bulk = builds.bulk_builds(keep=())
        fks = [b for b in bulk if b.kind == builds.FOREIGN_KEY]
        variants = [("not valid, check on failure", builds.FK_NOT_VALID,
                     build_scheduler.CHECK_ON_FAILURE),
                    ("direct, check on failure", builds.FK_DIRECT, build_scheduler.CHECK_ON_FAILURE),
                    ("not valid, check before", builds.FK_NOT_VALID, build_scheduler.CHECK_BEFORE)]
        res["builds"] = {}
        for _ in range(args.repeats):
            for label, fk, check in variants:
                builds.drop(conn, name, bulk)
                wall, steps = timed_builds(dsn, name, bulk, fk=fk, check=check, **kw)
                log(f"  all builds, FK {label}, K={args.connections}: {wall:.2f} s")
                old = res["builds"].get(label)
                if old is None or wall < old["wall_s"]:
                    res["builds"][label] = {"wall_s": wall, "steps": steps,
                                            "sum_s": sum(steps.values())}
        # foreign keys alone, on K sessions and on one (every key in place)
        res["fk_only"] = {}
        for _ in range(args.repeats):
            for fk in (builds.FK_DIRECT, builds.FK_NOT_VALID):
                for k in (args.connections, 1):
                    builds.drop(conn, name, fks)
                    wall, steps = timed_builds(dsn, name, fks, fk=fk,
                                               **dict(kw, connections=k))
                    key = f"{fk}, K={k}"
                    old = res["fk_only"].get(key)
                    if old is None or wall < old["wall_s"]:
                        res["fk_only"][key] = {"wall_s": wall, "steps": steps}
                    log(f"  foreign keys only, {key}: {wall:.2f} s")
    finally:
        drop_schema(conn, name)

    # photometry: its primary key during the COPY, or built after it
    if "photometry" in data:
        payload = data["photometry"][1]
        with_pk, bare_copy, add_pk = [], [], []
        for _ in range(args.repeats):
            name = new_schema(conn, bare=True, keep=("photometry_pkey",))
            try:
                with_pk.append(copy_in(conn, name, "photometry", payload))
            finally:
                drop_schema(conn, name)
            name = new_schema(conn, bare=True)
            try:
                bare_copy.append(copy_in(conn, name, "photometry", payload))
                wall, _ = timed_builds(dsn, name, [builds.by_name("photometry_pkey")],
                                       **dict(kw, connections=1))
                add_pk.append(wall)
            finally:
                drop_schema(conn, name)
        res["photometry"] = {"copy_with_pkey_s": min(with_pk),
                             "copy_bare_s": min(bare_copy), "add_pkey_s": min(add_pk)}
    conn.close()

    report(res)
    with open(args.json, "w") as f:
        json.dump(res, f, indent=1, default=str)
    log(f"wrote {args.json}")
    return 0


def report(res: dict) -> None:
    best = res["builds"]["not valid, check on failure"]["steps"]
    per_table: dict = {}
    for step, s in best.items():
        b = builds.by_name(step.split(":")[0])
        per_table[b.table] = per_table.get(b.table, 0.0) + s
    print(f"{'table':<15}{'rows':>9}{'init COPY':>11}{'bare COPY':>11}{'ratio':>7}"
          f"{'builds (sum)':>14}")
    for t, n in res["rows"].items():
        i, b = res["copy_init_s"][t], res["copy_bare_s"][t]
        print(f"{t:<15}{n:>9}{i:>10.3f}s{b:>10.3f}s{i / b:>6.1f}x"
              f"{per_table.get(t, 0.0):>13.3f}s")
    ti, tb = sum(res["copy_init_s"].values()), sum(res["copy_bare_s"].values())
    print(f"{'all':<15}{sum(res['rows'].values()):>9}{ti:>10.3f}s{tb:>10.3f}s"
          f"{ti / tb:>6.1f}x")
    print()
    for label, r in res["builds"].items():
        print(f"all builds, FK {label:<28} wall {r['wall_s']:7.2f} s (sum of steps "
              f"{r['sum_s']:.2f} s)")
    wall = res["builds"]["not valid, check on failure"]["wall_s"]
    print(f"bulk path: bare COPY {tb:.2f} s + builds {wall:.2f} s = {tb + wall:.2f} s "
          f"against init COPY {ti:.2f} s ({ti / (tb + wall):.1f}x)")
    for key, r in res["fk_only"].items():
        print(f"foreign keys only, {key:<18} wall {r['wall_s']:7.2f} s")
    if "photometry" in res:
        ph = res["photometry"]
        print(f"photometry: COPY with its primary key {ph['copy_with_pkey_s']:.3f} s; "
              f"bare COPY {ph['copy_bare_s']:.3f} s + ADD PRIMARY KEY "
              f"{ph['add_pkey_s']:.3f} s = {ph['copy_bare_s'] + ph['add_pkey_s']:.3f} s")


if __name__ == "__main__":
    sys.exit(main())
