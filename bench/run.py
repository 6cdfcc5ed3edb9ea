#!/usr/bin/env python
"""specprod-db benchmarks, measured in one run on the same mock tiles and the same server.

(a) our writer's COPY (numpy -> ``pgcopy.Encoder`` -> ``copy_expert``) against the
    server-side ``COPY table FROM '/tmp/file' (FORMAT binary)`` ceiling, per table;
(b) end-to-end ``specprod-db load`` of a full-size mock day with 1, 2, 4 ranks (fresh
    schema each): wall time, rows/s, peak RSS per rank; plus a smaller run
    (``--small-tiles``) to show that peak memory follows one tile, not the run;
(c) the same rows inserted the old way, one SQLAlchemy ORM object per row.

Usage (from the checkout)::

    .venv/bin/python bench/run.py [--workdir /tmp/specprod-bench] [--json results.json]

The mock production is written once under ``--workdir`` and reused by later runs.
The database is the tests' one: ``SPECPROD_DB_TEST_DSN`` if set, else the private
cluster (``specprod_db.pgcluster.ensure_server``). Every schema made here is called
``bench_<hex>`` and dropped at the end. This is not a test: nothing here asserts a goal,
it prints measurements (and the goals next to them).
"""
import argparse
import datetime
import glob
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import psycopg2  # noqa: E402
from psycopg2 import sql  # noqa: E402

import copy_ceiling  # noqa: E402
import orm  # noqa: E402

VENV_BIN = os.path.dirname(sys.executable)


def log(msg=""):
    print(msg, flush=True)


# --- set-up ----------------------------------------------------------------------------

def mock_env(outdir):
    """The process environment plus the mock production's DESI variables."""
    from specprod_db.mock import environment
    return dict(os.environ, **environment(outdir))


def ensure_mock(workdir, tiles, seed):
    from specprod_db.mock import make_production
    outdir = os.path.join(workdir, f"mock-{tiles}tiles-seed{seed}")
    done = os.path.join(outdir, "bench-complete.json")
    if os.path.exists(done):
        log(f"mock production: reusing {outdir}")
        return outdir, None
    shutil.rmtree(outdir, ignore_errors=True)
    log(f"mock production: writing {tiles} full-size tiles to {outdir} ...")
    t = time.time()
    summary = make_production(outdir, tiles=tiles, seed=seed)
    elapsed = time.time() - t
    with open(done, "w") as f:
        json.dump({"seconds": elapsed, "tiles": len(summary["tiles"])}, f)
    log(f"mock production: {elapsed:.0f} s")
    return outdir, elapsed


def get_dsn():
    dsn = os.environ.get("SPECPROD_DB_TEST_DSN", "").strip()
    if dsn:
        return dsn
    from specprod_db import pgcluster
    return pgcluster.ensure_server()


def machine(dsn):
    info = {"cpu": "?", "cores": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(l.split(":", 1)[1].strip() for l in f
                               if l.startswith("model name"))
        with open("/proc/meminfo") as f:
            info["mem_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    import h5py
    import sqlalchemy
    info.update(numpy=np.__version__, h5py=h5py.__version__, psycopg2=psycopg2.__version__,
                sqlalchemy=sqlalchemy.__version__)
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT current_setting('server_version'), current_setting('shared_buffers'),"
                    " current_setting('synchronous_commit'), current_setting('max_wal_size')")
        (info["postgres"], info["shared_buffers"], info["synchronous_commit"],
         info["max_wal_size"]) = cur.fetchone()
    conn.close()
    return info


def loadavg():
    return os.getloadavg()[0]


def new_schema(dsn, env):
    name = "bench_" + secrets.token_hex(4)
    subprocess.run([os.path.join(VENV_BIN, "specprod-db"), "init", "--schema", name,
                    "--db", dsn, "--no-grant"], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return name


def drop_schema(dsn, name):
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
    conn.close()


# --- (b) end-to-end load ---------------------------------------------------------------

def run_load(dsn, env, workdir, ranks, label, tiles=None, keep_stage=False):
    schema_name = new_schema(dsn, env)
    stage_dir = os.path.join(workdir, f"stage-{label}")
    rss_dir = os.path.join(workdir, f"rss-{label}")
    for d in (stage_dir, rss_dir):
        shutil.rmtree(d, ignore_errors=True)
    argv = [os.path.join(VENV_BIN, "mpiexec"), "-n", str(ranks), sys.executable,
            os.path.join(HERE, "rank_wrapper.py"), "load", "--schema", schema_name,
            "--db", dsn, "--stage-dir", stage_dir]
    if tiles:
        argv += ["--tiles", ",".join(map(str, tiles))]
    e = dict(env, BENCH_RSS_DIR=rss_dir, DESI_LOGLEVEL="WARNING")
    if keep_stage:
        e["BENCH_KEEP_STAGE"] = "1"
    load0 = loadavg()
    t = time.perf_counter()
    proc = subprocess.run(argv, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, stdin=subprocess.DEVNULL, timeout=1800)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"load failed ({proc.returncode}): {' '.join(argv)}\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT counts, extract(epoch FROM finished - started) FROM {} "
                            "ORDER BY id DESC LIMIT 1").format(
            sql.Identifier(schema_name, "load_run")))
        counts, inner = cur.fetchone()
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(schema_name, "tile")))
        ntiles = cur.fetchone()[0]
    conn.close()
    counts = json.loads(counts) if isinstance(counts, str) else counts
    # rows inserted ("primary" counts rows whose primary flags were updated)
    rows = sum(v for k, v in counts["tables"].items() if k != "primary")
    rss = {}
    for p in glob.glob(os.path.join(rss_dir, "rank-*.json")):
        with open(p) as f:
            r = json.load(f)
        rss[r["rank"]] = r["ru_maxrss_kib"] / 1024
    res = {"label": label, "ranks": ranks, "tiles": ntiles, "wall_s": wall,
           "load_s": float(inner), "rows": rows, "rows_per_s": rows / wall,
           "tables": counts["tables"], "timers": counts["timers"],
           "peak_rss_mib": [round(rss[k]) for k in sorted(rss)], "schema": schema_name,
           "stage_dir": stage_dir, "loadavg_before": load0}
    log(f"  {label:<14} ranks {ranks}  tiles {ntiles:>3}  wall {wall:6.1f} s  "
        f"{res['rows_per_s']:>8.0f} rows/s  peak RSS/rank (MiB) {res['peak_rss_mib']}  "
        f"[" + ", ".join(f"{k} {v:.1f}s" for k, v in counts["timers"].items()) + "]")
    return res


# --- report ----------------------------------------------------------------------------

def report(res):
    out = []
    a, b, c = res.get("copy"), res.get("loads"), res.get("orm")
    m = res["machine"]
    out.append(f"machine: {m['cores']} x {m['cpu']}, {m.get('mem_gib')} GiB; PostgreSQL "
               f"{m['postgres']} (shared_buffers {m['shared_buffers']}); Python "
               f"{m['python']}, numpy {m['numpy']}, SQLAlchemy {m['sqlalchemy']}; load avg "
               f"{res['loadavg'][0]:.1f} -> {res['loadavg'][1]:.1f}")
    if a:
        out += ["", "(a) writer COPY vs server-side COPY ceiling (index-free tables; "
                "best of repeats; goal ours/ceiling >= 0.7)",
                f"{'table':<12} {'rows':>9} {'MB':>7} {'ours rows/s':>12} "
                f"{'ceiling rows/s':>15} {'ours/ceil':>9} {'encode s':>9} {'stdin s':>8} "
                f"{'ceiling s':>9}"]
        tot = {"rows": 0, "bytes": 0, "ours_s": 0, "ceiling_s": 0, "encode_s": 0,
               "stdin_s": 0}
        for name, r in a.items():
            for k in tot:
                tot[k] += r[k]
            out.append(f"{name:<12} {r['rows']:>9} {r['bytes'] / 1e6:>7.1f} "
                       f"{r['rows'] / r['ours_s']:>12.0f} {r['rows'] / r['ceiling_s']:>15.0f} "
                       f"{r['ratio']:>9.2f} {r['encode_s']:>9.3f} {r['stdin_s']:>8.3f} "
                       f"{r['ceiling_s']:>9.3f}")
        out.append(f"{'all':<12} {tot['rows']:>9} {tot['bytes'] / 1e6:>7.1f} "
                   f"{tot['rows'] / tot['ours_s']:>12.0f} "
                   f"{tot['rows'] / tot['ceiling_s']:>15.0f} "
                   f"{tot['ceiling_s'] / tot['ours_s']:>9.2f} {tot['encode_s']:>9.3f} "
                   f"{tot['stdin_s']:>8.3f} {tot['ceiling_s']:>9.3f}")
    if b:
        out += ["", "(b) end-to-end load (fresh schema each; wall = mpiexec start to exit)",
                f"{'run':<14} {'ranks':>5} {'tiles':>5} {'rows':>9} {'wall s':>7} "
                f"{'rows/s':>8} {'peak RSS per rank, MiB':<26} timers (s)"]
        for r in b:
            out.append(f"{r['label']:<14} {r['ranks']:>5} {r['tiles']:>5} {r['rows']:>9} "
                       f"{r['wall_s']:>7.1f} {r['rows_per_s']:>8.0f} "
                       f"{str(r['peak_rss_mib']):<26} "
                       + ", ".join(f"{k} {v:.1f}" for k, v in r["timers"].items()))
    if c:
        tot = sum(r["insert_s"] for r in c["tables"].values())
        rows = sum(r["rows"] for r in c["tables"].values())
        out += ["", f"(c) ORM, one object per row, add_all + commit per {orm.CHUNK} rows "
                f"(insert step only)",
                f"{'table':<12} {'rows':>9} {'insert s':>9} {'rows/s':>8}"]
        for name, r in c["tables"].items():
            out.append(f"{name:<12} {r['rows']:>9} {r['insert_s']:>9.1f} "
                       f"{r['rows'] / r['insert_s']:>8.0f}")
        out.append(f"{'all':<12} {rows:>9} {tot:>9.1f} {rows / tot:>8.0f}")
        if b:
            full = [r for r in b if r["label"].startswith("full")]
            out.append("")
            out.append("ORM insert step alone / our end-to-end load (goal >= 20): "
                       + ", ".join(f"{r['ranks']} rank(s) {tot / r['wall_s']:.1f}x"
                                   for r in full))
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="/tmp/specprod-bench",
                   help="mock production, stage files, temporary files (default %(default)s)")
    p.add_argument("--tiles", type=int, default=30, help="tiles of the mock day (30)")
    p.add_argument("--small-tiles", type=int, default=10,
                   help="tiles of the memory-comparison run (10; 0 to skip)")
    p.add_argument("--ranks", default="1,2,4", help="rank counts of the full loads")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="attempts per COPY variant (3)")
    p.add_argument("--skip", default="", help="comma list of parts to skip: a,b,c")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--report", default=None, metavar="JSON",
                   help="only print the report of a saved --json result")
    args = p.parse_args()
    if args.report:
        with open(args.report) as f:
            log(report(json.load(f)))
        return
    skip = set(args.skip.split(",")) - {""}
    os.makedirs(args.workdir, exist_ok=True)
    t_start = time.time()
    dsn = get_dsn()
    res = {"started": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine": machine(dsn), "argv": sys.argv}
    lo0 = loadavg()
    mock, mock_s = ensure_mock(args.workdir, args.tiles, args.seed)
    res["mock_s"] = mock_s
    env = mock_env(mock)
    ranks = [int(x) for x in args.ranks.split(",")]
    schemas = []
    try:
        # (b) first: its 1-rank run keeps the stage files that (a) and (c) reuse
        log("\n(b) end-to-end load")
        loads = []
        for i, n in enumerate(ranks):
            r = run_load(dsn, env, args.workdir, n, f"full-{n}rank", keep_stage=(i == 0))
            schemas.append(r["schema"])
            loads.append(r)
            if i > 0:
                shutil.rmtree(r["stage_dir"], ignore_errors=True)
        if args.small_tiles:
            conn = psycopg2.connect(dsn)
            with conn.cursor() as cur:
                cur.execute(sql.SQL("SELECT tileid FROM {} ORDER BY tileid").format(
                    sql.Identifier(loads[0]["schema"], "tile")))
                all_tiles = [x[0] for x in cur.fetchall()]
            conn.close()
            step = max(1, len(all_tiles) // args.small_tiles)
            subset = all_tiles[::step][:args.small_tiles]
            n = 2 if 2 in ranks else ranks[0]
            r = run_load(dsn, env, args.workdir, n, f"small-{n}rank", tiles=subset)
            schemas.append(r["schema"])
            loads.append(r)
            shutil.rmtree(r["stage_dir"], ignore_errors=True)
        res["loads"] = loads
        stage_files = sorted(glob.glob(os.path.join(loads[0]["stage_dir"], "*.h5")))
        rows = copy_ceiling.concat_stage(stage_files)
        log(f"staged rows of the {loads[0]['tiles']}-tile run: "
            + ", ".join(f"{k} {len(v)}" for k, v in rows.items()))

        if "a" not in skip:
            log("\n(a) writer COPY vs server-side COPY ceiling")
            conn = psycopg2.connect(dsn)
            try:
                res["copy"] = copy_ceiling.run(conn, loads[0]["schema"], rows,
                                               repeats=args.repeats, log=log)
            finally:
                conn.close()
        if "c" not in skip:
            log("\n(c) ORM, one object per row")
            s = new_schema(dsn, env)
            schemas.append(s)
            t = time.time()
            res["orm"] = {"tables": orm.run(dsn, s, rows, log=log),
                          "wall_s": time.time() - t}
        shutil.rmtree(loads[0]["stage_dir"], ignore_errors=True)
    finally:
        for s in schemas:
            drop_schema(dsn, s)
    res["loadavg"] = (lo0, loadavg())
    res["total_s"] = time.time() - t_start
    text = report(res)
    log("\n" + "=" * 100 + "\n" + text)
    log(f"\nbenchmark run: {res['total_s'] / 60:.1f} min")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1, default=str)


if __name__ == "__main__":
    main()
