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
cluster (``specprod_db.devdb.pgcluster.ensure_server``). Every schema made here is called
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
import daily_floor  # noqa: E402
import endload  # noqa: E402
import mocks  # noqa: E402
import morning  # noqa: E402
import orm  # noqa: E402
import replicate  # noqa: E402
import restart  # noqa: E402
import results_md  # noqa: E402
import scale  # noqa: E402
from mocks import mock_env  # noqa: E402

VENV_BIN = os.path.dirname(sys.executable)


def log(msg=""):
    print(msg, flush=True)


# --- set-up ----------------------------------------------------------------------------

def ensure_mock(workdir, tiles, seed, small=False, fibers=None):
    """``mocks.ensure_mock``, logging as the rest of the run does."""
    return mocks.ensure_mock(workdir, tiles, seed, small=small, fibers=fibers, log=log)


def get_dsn():
    dsn = os.environ.get("SPECPROD_DB_TEST_DSN", "").strip()
    if dsn:
        return dsn
    from specprod_db.devdb import pgcluster
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

    import specprod_db
    info["package"] = os.path.dirname(os.path.abspath(specprod_db.__file__))
    commit = os.environ.get("BENCH_COMMIT", "")
    if not commit:
        try:
            commit = subprocess.run(["git", "-C", info["package"], "rev-parse", "HEAD"],
                                    capture_output=True, text=True).stdout.strip()
            commit += " + working tree"
        except OSError:
            pass
    info["commit"] = commit
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


def settle(dsn, limit_s=180.0, quiet_load=0.5):
    """Before a timed section: wait (at most ``limit_s``) until the server runs no
    autovacuum worker and no other client statement, and the machine's 1-minute load
    average is below ``quiet_load``, then CHECKPOINT (the earlier sections' GBs of
    dirty pages are not flushed inside this one).  The earlier sections leave work
    behind — autovacuum of the growth databases after (d), a checkpoint due after (b)'s
    and (e)'s WAL — and the short runs of (g) measured it (the morning took 2.7 s
    after (d) where it takes 1.5 s on its own).  Logs and returns the seconds waited."""
    t0 = time.perf_counter()
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            while True:
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid <> "
                            "pg_backend_pid() AND (backend_type = 'autovacuum worker' OR "
                            "(backend_type = 'client backend' AND state = 'active'))")
                busy = cur.fetchone()[0]
                waited = time.perf_counter() - t0
                if (not busy and loadavg() < quiet_load) or waited > limit_s:
                    break
                time.sleep(2.0)
            try:
                cur.execute("CHECKPOINT")
            except psycopg2.Error:  # not a superuser of that server: go on without
                pass
    finally:
        conn.close()
    waited = time.perf_counter() - t0
    log(f"  waited {waited:.0f} s for a quiet server and machine (load average now "
        f"{loadavg():.2f}), then CHECKPOINT")
    return waited


def wal_lsn(dsn):
    """The server's current WAL position (WAL bytes written by a run: the difference;
    the server is shared with other work, so an upper bound)."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_current_wal_lsn()::text")
            return cur.fetchone()[0]
    finally:
        conn.close()


def new_schema(dsn, env):
    name = "bench_" + secrets.token_hex(4)
    subprocess.run([os.path.join(VENV_BIN, "specprod-db"), "init", "--schema", name,
                    "--db", dsn, "--no-grant"], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return name


# --- (b) end-to-end load ---------------------------------------------------------------

def run_load(dsn, env, workdir, ranks, label, tiles=None, keep_stage=False, initial=False,
             schema_name=None, profile=False, wave_tiles=None, writers=1):
    """``mpiexec -n ranks rank_wrapper.py load ...``; into a new schema unless
    ``schema_name`` is given. Returns wall time, the run's load_run counts, peak RSS."""
    if schema_name is None:
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
    if initial:
        argv.append("--initial")
    if wave_tiles:
        argv += ["--wave-tiles", str(wave_tiles)]
    if writers > 1:
        argv += ["--writers", str(writers)]
    e = dict(env, BENCH_RSS_DIR=rss_dir, DESI_LOGLEVEL="WARNING")
    if keep_stage:
        e["BENCH_KEEP_STAGE"] = "1"
    prof_dir = None
    if profile:
        prof_dir = os.path.join(workdir, f"profile-{label}")
        shutil.rmtree(prof_dir, ignore_errors=True)
        e["BENCH_PROFILE_DIR"] = prof_dir
    loadavg3 = open("/proc/loadavg").read().split()[:3]
    load0 = loadavg()
    wal0 = wal_lsn(dsn)
    t = time.perf_counter()
    proc = subprocess.run(argv, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, stdin=subprocess.DEVNULL, timeout=1800)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"load failed ({proc.returncode}): {' '.join(argv)}\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (wal0,))
        wal_bytes = int(cur.fetchone()[0])
        cur.execute(sql.SQL("SELECT counts, extract(epoch FROM finished - started) FROM {} "
                            "ORDER BY id DESC LIMIT 1").format(
            sql.Identifier(schema_name, "load_run")))
        counts, inner = cur.fetchone()
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(schema_name, "tile")))
        ntiles = cur.fetchone()[0]
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(schema_name, "load_run")))
        nruns = cur.fetchone()[0]
    conn.close()
    counts = json.loads(counts) if isinstance(counts, str) else counts
    # rows inserted ("primary" counts rows whose primary flags were updated)
    rows = sum(v for k, v in counts["tables"].items() if k != "primary")
    rss = {}
    for p in glob.glob(os.path.join(rss_dir, "rank-*.json")):
        with open(p) as f:
            r = json.load(f)
        rss[r["rank"]] = r["ru_maxrss_kib"] / 1024
    plan = counts.get("plan", {})
    written = sum(plan.get(k, 0) for k in ("INSERT", "UPDATE", "DELETE", "REFRESH"))
    stage_bytes = 0
    if keep_stage:
        for root, _, files in os.walk(stage_dir):
            stage_bytes += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    res = {"label": label, "ranks": ranks, "writers": writers, "tiles": ntiles, "wall_s": wall,
           "load_s": float(inner), "rows": rows, "rows_per_s": rows / wall,
           "tables": counts["tables"], "timers": counts["timers"],
           "ranks_counts": counts.get("ranks"), "plan": plan, "tiles_written": written,
           "initial": initial, "load_runs": nruns, "stage_bytes": stage_bytes,
           "wal_bytes": wal_bytes,
           "peak_rss_mib": [round(rss[k]) for k in sorted(rss)], "schema": schema_name,
           "stage_dir": stage_dir, "loadavg_before": load0, "loadavg3_before": loadavg3,
           "loadavg3_after": open("/proc/loadavg").read().split()[:3],
           "profile_dir": prof_dir}
    log(f"  {label:<14} ranks {ranks} writers {writers}  tiles {ntiles:>4} (plan {plan})  wall {wall:6.1f} s  "
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
                "best of repeats; goal ours/ceiling >= 0.85)",
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
    wr = results_md.write_ratio(res)
    if wr:
        out += ["", f"(b) write stage / server-side COPY of the same rows into bare tables "
                f"(goal >= 0.5): {results_md.fmt_ratio(wr.get('same_rows_ratio'))} "
                f"({wr['rows']} rows written in {wr['write_s']:.1f} s; the server copies "
                f"them back in {results_md.fmt_s(wr.get('same_rows_ceiling_s'))}); against "
                f"(a)'s rows/s of the staged rows (the measure reported before 2026-12-07 "
                f"evening): {wr['ratio']:.2f} ({wr['write_rows_per_s']:.0f} against "
                f"{wr['ceiling_rows_per_s']:.0f} rows/s)"]
    if b:
        out += ["", "(b) end-to-end load (fresh schema each; --initial; wall = mpiexec start "
                "to exit)",
                f"{'run':<22} {'ranks':>5} {'tiles':>5} {'rows':>9} {'wall s':>7} "
                f"{'rows/s':>8} {'peak RSS per rank, MiB':<26} timers (s)"]
        for r in b:
            out.append(f"{r['label']:<22} {r['ranks']:>5} {r['tiles']:>5} {r['rows']:>9} "
                       f"{r['wall_s']:>7.1f} {r['rows_per_s']:>8.0f} "
                       f"{str(r['peak_rss_mib']):<26} "
                       + ", ".join(f"{k} {v:.1f}" for k, v in r["timers"].items()))
    if b:
        out += ["", "(b) per table: rows inserted / wall (rows/s); ranks: busy s, balance "
                "max/mean, write s with extractors busy / write s"]
        for r in b:
            rk = r.get("ranks_counts") or {}
            out.append(f"{r['label']:<22} {r['tiles'] / r['wall_s']:.2f} tiles/s  "
                       + ", ".join(f"{k} {v / r['wall_s']:.0f}" for k, v in
                                   sorted(r["tables"].items()) if k != "primary")
                       + f"  | busy {rk.get('busy_seconds')} balance "
                       f"{rk.get('balance_max_over_mean')} overlap "
                       f"{rk.get('write_seconds_with_workers_busy')}/{rk.get('write_seconds')}"
                       + (f" | WAL {r['wal_bytes'] / r['tiles'] / 1e6:.1f} MB/tile"
                          if r.get("wal_bytes") else ""))
        if res.get("stage_bytes_per_tile"):
            out.append(f"stage files (1-rank run, all kept): "
                       f"{res['stage_bytes_per_tile'] / 1e6:.2f} MB per tile")
    mo = res.get("morning")
    if mo:
        out += ["", "(f) daily morning on the loaded full-size production "
                f"({mo['ranks']} ranks): plan {mo['plan']}, wall {mo['wall_s']:.1f} s, "
                f"{mo['wall_s'] / max(1, mo['tiles_written']):.2f} s per written tile vs "
                f"{mo['initial_s_per_tile']:.2f} s per tile in the initial load; timers "
                + ", ".join(f"{k} {v:.1f}" for k, v in mo["timers"].items())]
        fl = mo.get("floor")
        if fl and fl["tiles"]:
            n = len(fl["tiles"])
            out.append(f"    write {mo['timers']['write'] / n:.2f} s per written tile; the "
                       f"server's own COPY of the same rows into the constrained tables "
                       f"{fl['floor_s'] / n:.2f} s per tile (write / floor "
                       f"{mo['timers']['write'] / fl['floor_s']:.2f}; goal <= 0.6 s per tile)")
    g = res.get("growth")
    if g:
        out += ["", f"(d) the same {g[0]['tiles_written']} new small tiles loaded daily "
                f"({g[0]['ranks']} ranks) into databases holding N small tiles' worth of "
                f"rows (replicated, bench/replicate.py)",
                f"{'held':>6} {'GB':>6} {'wall s':>7} {'s/new tile':>10} {'load avg':>16}  "
                f"timers (s)"]
        for d in g:
            out.append(f"{d['held']:>6} {d.get('db_bytes', 0) / 1e9:>6.2f} "
                       f"{d['wall_s']:>7.1f} {d['s_per_new_tile']:>10.2f} "
                       f"{' '.join(d['loadavg3_before']):>16}  "
                       + ", ".join(f"{k} {v:.2f}" for k, v in d["timers"].items()))
        out.append(f"largest/smallest (goal <= 1.2): "
                   f"{g[-1]['s_per_new_tile'] / g[0]['s_per_new_tile']:.2f}x")
        gs = res.get("growth_sql")
        if gs:
            out.append(f"rank-0 SQL seconds: {gs['total']['small_s']:.2f} at {g[0]['held']} "
                       f"-> {gs['total']['large_s']:.2f} at {g[-1]['held']}; grew most:")
            for r in gs["top"][:6]:
                out.append(f"  +{r['growth_s']:.2f} s ({r['small_s']:.2f} -> "
                           f"{r['large_s']:.2f}, {r['calls_large']} calls) "
                           f"{r['statement'][:110]}")
    gc = res.get("growth_cache")
    if gc:
        out.append("growth databases: " + "; ".join(
            f"{v['tiles']} tiles {v['bytes'] / 1e9:.2f} GB "
            + ("built now" if v.get("built_now") else "cached") + f" ({v['build_s']:.0f} s)"
            for _, v in sorted(gc.items(), key=lambda kv: int(kv[0]))))
    eol = results_md.end_of_load_rows(res)
    if eol:
        ks = sorted(eol[0][3], key=int)
        out += ["", "(e) the end of the initial load (builds on K sessions + flags/CLUSTER/"
                "ANALYZE of the load), seconds",
                f"{'tiles':>6} {'rows':>9} {'rest':>6} "
                + " ".join(f"{'K=' + k:>7}" for k in ks)]
        for tiles, rows, rest, end, _ in eol:
            out.append(f"{tiles:>6} {rows:>9} {rest:>6.1f} "
                       + " ".join(f"{end[k]:>7.1f}" for k in ks))
        gr = results_md.end_of_load_growth(res)
        if gr:
            out.append("growth per tile: " + ", ".join(
                f"K={k} {gr[k] * 1000:.1f} ms" for k in ks))
    sb = res.get("small_bulk")
    if sb:
        out += ["", "(e) initial loads of small tiles: rank-0 peak RSS (default --wave-tiles)"]
        for k, r in sorted(sb.items(), key=lambda kv: int(kv[0])):
            out.append(f"{int(k):>6} tiles: wall {r['wall_s']:.1f} s, "
                       f"{r['tiles'] / r['wall_s']:.2f} tiles/s, peak RSS per rank "
                       f"{r['peak_rss_mib']} MiB, load avg {' '.join(r['loadavg3_before'])}")
        growth = results_md.rss_growth(res)
        if growth:
            out.append(f"peak RSS at {growth['large']} / at {growth['small']} tiles, per rank "
                       f"(goal <= 1.2): {', '.join(f'{x:.2f}x' for x in growth['ratios'])}")
    h = res.get("restart")
    if h:
        out += ["", f"(h) initial load of {h['tiles']} small tiles ({h['ranks']} ranks) "
                f"killed after {h['killed_after_s']:.1f} s with {h['committed_at_kill']} "
                f"tiles committed and {h['stage_files_left']} stage files left; the same "
                f"command again: {h['rerun_wall_s']:.1f} s (uninterrupted load "
                f"{h['uninterrupted_wall_s']:.1f} s), {h['rerun_reused_stage_files']} "
                f"complete tile stage files reused, plan {h['rerun_plan']}; tables equal "
                f"to the uninterrupted load: {h['tables_compared'] - len(h['tables_differing'])}"
                f" of {h['tables_compared']}"
                + (f" (differ: {', '.join(h['tables_differing'])})"
                   if h["tables_differing"] else "")]
    g = res.get("operator")
    if g:
        out += ["", f"(g) the operator's morning on tiles of "
                f"{g['potential_per_tile']:.0f} potential targets: `specprod-db --help` "
                f"{g['help_s']:.2f} s (goal < 0.3), a load with nothing to do "
                f"{g['nothing_s']:.2f} s (goal < 1)"]
        for m_ in g["mornings"]:
            out.append(f"  {g['tiles']} new tiles, {m_['ranks']} rank(s): wall "
                       f"{m_['wall_s']:.2f} s, work per tile {m_['work_s_per_tile']:.2f} s "
                       f"(goal <= 0.4), {m_['speedup_vs_old_tool']:.0f}x the old tool's "
                       f"{g['old_tool_s_per_tile'] * g['tiles']:.0f} s (goal >= 60x)")
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
    p.add_argument("--tiles", type=int, default=100,
                   help="full-size tiles of the mock production of (a)-(c) and (f) (100)")
    p.add_argument("--small-tiles", type=int, default=0,
                   help="tiles of the old full-size memory-comparison run (0: skipped; "
                        "(e) replaces it)")
    p.add_argument("--runs", default="1,2,4,4w2",
                   help="(b) the full-size initial loads: RANKS or RANKSwWRITERS "
                        "(--writers K), comma-separated (1,2,4,4w2; e.g. 6w4 adds K = 4 writers "
                        "at 6 ranks)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="attempts per COPY variant (3)")
    p.add_argument("--growth", default="1000,5000,25000",
                   help="(d) tiles' worth of rows held before the new ones, replicated "
                        "from the --growth-base load (bench/replicate.py; 1000,5000,25000)")
    p.add_argument("--growth-base", type=int, default=1000,
                   help="(d) small tiles of the --initial load the growth databases are "
                        "replicated from (1000; a size of --rss-sizes is reused)")
    p.add_argument("--rebuild-growth", action="store_true",
                   help="(d) build the cached growth databases again")
    p.add_argument("--growth-connections", type=int, default=3,
                   help="(d) build sessions of the growth databases' keys (3)")
    p.add_argument("--build-ks", default="1,2,4",
                   help="(e) K of the end of the load rebuilt on K build sessions per "
                        "--rss-sizes load (1,2,4; skip with --skip k)")
    p.add_argument("--new", type=int, default=10, help="(d) new tiles loaded daily (10)")
    p.add_argument("--rss-sizes", default="100,300,1000",
                   help="(e) small tiles of the --initial loads whose peak RSS is "
                        "compared, smallest to largest (100,300,1000; a size also in "
                        "--growth is measured once)")
    p.add_argument("--restart-tiles", type=int, default=300,
                   help="(h) small tiles of the initial load killed half-way and rerun; "
                        "also added to --rss-sizes, whose load is the reference (300)")
    p.add_argument("--heldout-fibers", type=int, default=330,
                   help="(g) fibres per tile of the morning's mock: ~830 potential "
                        "targets a tile, the held-out DESI tree's size (330)")
    p.add_argument("--bulk-ranks", type=int, default=4,
                   help="ranks of the --initial small-tile loads of (d) and (e) (4)")
    p.add_argument("--growth-ranks", type=int, default=2,
                   help="ranks of the timed daily loads of (d) (2)")
    p.add_argument("--morning", default="30,20",
                   help="(f) NEW,REOBSERVED tiles of the advanced night, one tile "
                        "withdrawn (30,20)")
    p.add_argument("--skip", default="c",
                   help="comma list of parts to skip: a,b,c,d,e,f,g,h,k (without b, no "
                        "a, c, f either; "
                        "default c: the ORM comparison of an earlier issue, ~4 min)")
    p.add_argument("--results-dir", default=os.path.join(HERE, "results"),
                   help="RESULTS.md, PNG plots and results.json (default bench/results)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--report", default=None, metavar="JSON",
                   help="only print the report of a saved --json result (and rewrite "
                        "RESULTS.md and the plots)")
    args = p.parse_args()
    if args.report:
        with open(args.report) as f:
            res = json.load(f)
        log(report(res))
        results_md.write(res, args.results_dir, report(res))
        return
    skip = set(args.skip.split(",")) - {""}
    os.makedirs(args.workdir, exist_ok=True)
    t_start = time.time()
    dsn = get_dsn()
    res = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(
               timespec="seconds"),
           "machine": machine(dsn), "argv": sys.argv,
           "loadavg3_start": open("/proc/loadavg").read().split()[:3]}
    lo0 = loadavg()
    if "b" in skip:  # (a), (c) and (f) need (b)'s loads
        skip |= {"a", "c", "f"}
    else:
        mock, mock_s = ensure_mock(args.workdir, args.tiles, args.seed)
        res["mock_s"] = mock_s
        env = mock_env(mock)
    runs = [tuple(int(x) for x in (item + "w1").split("w")[:2])
            for item in args.runs.split(",")]
    ranks = [n for n, _ in runs]
    schemas = []
    try:
        # (b) first: its 1st run keeps the stage files that (a) and (c) reuse
        loads = []
        if "b" not in skip:
            log("\n(b) end-to-end initial load (--initial)")
            res["b_settle_s"] = settle(dsn)
        for i, (n, k) in enumerate(runs if "b" not in skip else []):
            label = f"full-{n}rank" + (f"-{k}writers" if k > 1 else "")
            r = run_load(dsn, env, args.workdir, n, label, keep_stage=(i == 0),
                         initial=True, writers=k)
            schemas.append(r["schema"])
            loads.append(r)
            if i > 0:
                shutil.rmtree(r["stage_dir"], ignore_errors=True)
            elif not ({"a", "c"} <= skip):
                stage_files = sorted(glob.glob(os.path.join(r["stage_dir"], "*.h5")))
                rows = copy_ceiling.concat_stage(stage_files)
                log(f"staged rows of the {r['tiles']}-tile run: "
                    + ", ".join(f"{k} {len(v)}" for k, v in rows.items()))
                if "a" not in skip:
                    # right after the write stage it is compared with: the machine is
                    # shared, and its pace drifts over a run of half an hour
                    log("\n(a) writer COPY vs server-side COPY ceiling")
                    conn = psycopg2.connect(dsn)
                    try:
                        res["copy"] = copy_ceiling.run(conn, r["schema"], rows,
                                                       repeats=args.repeats, log=log)
                        log("\n(b) the rows that load wrote, copied back by the server "
                            "into bare tables")
                        res["copy_written"] = copy_ceiling.written(
                            conn, r["schema"], repeats=args.repeats, log=log)
                    finally:
                        conn.close()
        if args.small_tiles:
            subset = scale.tile_ids(mock)
            step = max(1, len(subset) // args.small_tiles)
            subset = subset[::step][:args.small_tiles]
            n = 2 if 2 in ranks else ranks[0]
            r = run_load(dsn, env, args.workdir, n, f"small-{n}rank", tiles=subset,
                         initial=True)
            schemas.append(r["schema"])
            loads.append(r)
            shutil.rmtree(r["stage_dir"], ignore_errors=True)
        res["loads"] = loads
        if loads:
            res["stage_bytes_per_tile"] = (loads[0]["stage_bytes"]
                                           / max(1, loads[0]["tiles"]))
            log(f"stage files of the 1st run: {loads[0]['stage_bytes'] / 1e6:.1f} MB, "
                f"{res['stage_bytes_per_tile'] / 1e6:.2f} MB per tile")

        if "f" not in skip:
            log("\n(f) a daily morning on the loaded full-size production")
            nnew, nre = (int(x) for x in args.morning.split(","))
            adv, adv_s = scale.ensure_advanced(mock, nnew, nre, True, log=log)
            last = [r for r in loads if r["writers"] == 1][-1]
            r = run_load(dsn, mock_env(adv), args.workdir, last["ranks"], "morning",
                         schema_name=last["schema"])
            r["advance_s"] = adv_s
            r["initial_s_per_tile"] = last["wall_s"] / last["tiles"]
            r["floor"] = daily_floor.run(dsn, last["schema"], log=log)
            res["morning"] = r
            shutil.rmtree(r["stage_dir"], ignore_errors=True)

        if not ({"d", "e"} <= skip):
            growth = [int(x) for x in args.growth.split(",")] if "d" not in skip else []
            sizes = [int(x) for x in args.rss_sizes.split(",")] if "e" not in skip else []
            if "h" not in skip and args.restart_tiles not in sizes:
                sizes = sorted(sizes + [args.restart_tiles])
            base_n = args.growth_base
            res["growth_base"] = base_n
            need = max(sizes + ([base_n] if growth else [])) + (args.new if growth else 0)
            # a few mock tiles are not loadable (EFFTIME_SPEC 0): 2 % spare
            small, small_s = ensure_mock(args.workdir, need + max(2, need // 50), args.seed,
                                         small=True)
            res["small_mock_s"] = small_s
            senv = mock_env(small)
            ids = scale.tile_ids(small)
            if len(ids) < need:
                raise RuntimeError(f"{small}: {len(ids)} loadable tiles, {need} needed")
            new_ids = ids[base_n:base_n + args.new] if growth else []
            bulk, daily = {}, []
            ks = [int(x) for x in args.build_ks.split(",")] if "k" not in skip else []
            log(f"\n(e) small tiles: initial loads of {sizes} tiles ({args.bulk_ranks} "
                f"ranks)" + (f"; the end of the load rebuilt on K = {ks}" if ks else ""))
            end_of_load = {}
            for n in sizes:
                r = run_load(dsn, senv, args.workdir, args.bulk_ranks, f"small-init-{n}",
                             tiles=ids[:n], initial=True)
                schemas.append(r["schema"])
                shutil.rmtree(r["stage_dir"], ignore_errors=True)
                bulk[n] = r
                if ks:
                    end_of_load[str(n)] = endload.measure(dsn, r, ks, log=log)
            res["end_of_load"] = end_of_load

            def make_base():
                if base_n in bulk:
                    return bulk[base_n]["schema"]
                r = run_load(dsn, senv, args.workdir, args.bulk_ranks,
                             f"small-init-{base_n}", tiles=ids[:base_n], initial=True)
                schemas.append(r["schema"])
                shutil.rmtree(r["stage_dir"], ignore_errors=True)
                return r["schema"]

            if growth:
                log(f"\n(d) the same {args.new} new small tiles ({args.growth_ranks} ranks) "
                    f"loaded daily into databases of {growth} tiles' worth of rows "
                    f"(replicated from a {base_n}-tile initial load, cached)")
                t = time.time()
                cache = replicate.ensure(dsn, senv, growth, ids[:base_n], make_base,
                                         rebuild=args.rebuild_growth,
                                         connections=args.growth_connections, log=log)
                res["growth_cache"] = {str(k): v[1] for k, v in cache.items()}
                res["growth_cache_s"] = time.time() - t
                for n in growth:
                    name, info = cache[n]
                    replicate.remove_tiles(dsn, name, new_ids)  # a run killed before
                    try:
                        d = run_load(dsn, senv, args.workdir, args.growth_ranks,
                                     f"small-new{args.new}-at{n}", tiles=new_ids,
                                     schema_name=name, profile=True)
                        if n == growth[-1]:
                            d["explain"] = scale.explain_daily(dsn, name, new_ids)
                    finally:
                        replicate.remove_tiles(dsn, name, new_ids)
                    shutil.rmtree(d["stage_dir"], ignore_errors=True)
                    d["held"] = info["tiles"]
                    d["db_bytes"] = info["bytes"]
                    d["s_per_new_tile"] = d["wall_s"] / max(1, d["tiles_written"])
                    daily.append(d)
            if "h" not in skip:
                log(f"\n(h) an initial load of {args.restart_tiles} small tiles killed "
                    f"half-way, then rerun ({args.bulk_ranks} ranks)")
                ref = bulk[args.restart_tiles]
                res["restart"] = restart.run(
                    dsn, senv, args.workdir, args.bulk_ranks, ids[:args.restart_tiles],
                    ref["schema"], lambda: new_schema(dsn, senv), log=log)
                res["restart"]["uninterrupted_wall_s"] = ref["wall_s"]
                schemas.append(res["restart"]["schema"])
            res["small_bulk"] = {str(k): v for k, v in bulk.items()}
            res["growth"] = daily
            res["rss_sizes"] = sizes
            if len(daily) >= 2:
                lo_, hi_ = daily[0], daily[-1]
                res["growth_sql"] = scale.compare_sql(lo_["profile_dir"], hi_["profile_dir"])
                res["growth_profile"] = scale.compare_profiles(lo_["profile_dir"],
                                                               hi_["profile_dir"])

        if "g" not in skip:
            log(f"\n(g) the operator's morning: tiles of {args.heldout_fibers} fibres")
            res["g_settle_s"] = settle(dsn)
            held, held_s = ensure_mock(args.workdir, 10, args.seed,
                                       fibers=args.heldout_fibers)
            henv = mock_env(held)
            def morning_schema():
                schemas.append(new_schema(dsn, henv))  # dropped even if (g) fails
                return schemas[-1]

            res["operator"] = morning.run(dsn, henv, args.workdir, scale.tile_ids(held),
                                          morning_schema, log=log)
            res["operator"]["mock_s"] = held_s

        if "c" not in skip:
            log("\n(c) ORM, one object per row")
            s = new_schema(dsn, env)
            schemas.append(s)
            t = time.time()
            res["orm"] = {"tables": orm.run(dsn, s, rows, log=log),
                          "wall_s": time.time() - t}
        if loads:
            shutil.rmtree(loads[0]["stage_dir"], ignore_errors=True)
    except BaseException:
        # what was measured before the failure is kept, not only in the log
        partial = (args.json or os.path.join(args.results_dir, "results.json")) + ".partial"
        os.makedirs(os.path.dirname(os.path.abspath(partial)), exist_ok=True)
        with open(partial, "w") as f:
            json.dump(res, f, indent=1, default=str)
        log(f"the benchmark run failed; what it measured is in {partial}")
        raise
    finally:
        for s in schemas:
            replicate.drop(dsn, s)
    res["loadavg"] = (lo0, loadavg())
    res["loadavg3_end"] = open("/proc/loadavg").read().split()[:3]
    res["total_s"] = time.time() - t_start
    text = report(res)
    log("\n" + "=" * 100 + "\n" + text)
    log(f"\nbenchmark run: {res['total_s'] / 60:.1f} min")
    os.makedirs(args.results_dir, exist_ok=True)
    for path in filter(None, (args.json, os.path.join(args.results_dir, "results.json"))):
        with open(path, "w") as f:
            json.dump(res, f, indent=1, default=str)
    results_md.write(res, args.results_dir, text)
    log(f"wrote {args.results_dir}/RESULTS.md and plots")


if __name__ == "__main__":
    main()
