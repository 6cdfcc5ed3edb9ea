"""(h) Restartable at scale: an initial load killed half-way, then the same command again.

``mpiexec -n N specprod-db load --initial`` of the first ``--restart-tiles`` (300) tiles of
the small mock production starts in its own process group; when half of its tiles are
committed (``tile`` rows, polled every 0.2 s) the whole job gets SIGKILL — as a batch
system's wall-clock limit would end it.  The same command then runs again, with the same
stage directory.  Measured: when the kill came, the complete stage files it left, what
the rerun reused (its log's "reusing complete stage file" lines) and planned, its wall
time against the uninterrupted load's, and whether every data table equals the
uninterrupted load of the same tiles (a digest per table: row count and the MD5 of its
rows in primary-key order).
"""
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import psycopg2
from psycopg2 import sql


def table_digests(dsn, schema_name):
    """``{table: [rows, md5]}`` of every data table of the schema (rows ordered by
    primary key; ``version`` and the bookkeeping tables excluded)."""
    from specprod_db import schema
    out = {}
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            for t in schema.DATA_TABLES:
                if t.name == "version":
                    continue
                cur.execute(sql.SQL(
                    "SELECT count(*), md5(coalesce(string_agg(md5(x::text), '' ORDER BY {pk}), "
                    "'')) FROM {t} AS x").format(
                        pk=sql.SQL(", ").join(sql.Identifier("x", c) for c in t.primary_key),
                        t=sql.Identifier(schema_name, t.name)))
                out[t.name] = list(cur.fetchone())
    finally:
        conn.close()
    return out


def _committed(dsn, schema_name):
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(
                sql.Identifier(schema_name, "tile")))
            return cur.fetchone()[0]
    finally:
        conn.close()


def run(dsn, env, workdir, ranks, tiles, reference_schema, new_schema, log=print):
    """Kill at half, rerun, compare with ``reference_schema``; returns the measurements.

    ``new_schema()`` makes an empty schema (the caller drops it: it is returned as
    ``schema``)."""
    venv_bin = os.path.dirname(sys.executable)
    schema_name = new_schema()
    stage_dir = os.path.join(workdir, "stage-restart")
    shutil.rmtree(stage_dir, ignore_errors=True)
    argv = [os.path.join(venv_bin, "mpiexec"), "-n", str(ranks),
            os.path.join(venv_bin, "specprod-db"), "load", "--initial", "--schema",
            schema_name, "--db", dsn, "--stage-dir", stage_dir,
            "--tiles", ",".join(map(str, tiles))]
    e = dict(env, DESI_LOGLEVEL="INFO")
    half = len(tiles) // 2
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=e, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    committed = 0
    try:
        while proc.poll() is None:
            try:
                committed = _committed(dsn, schema_name)
            except psycopg2.Error:
                committed = 0
            if committed >= half:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.2)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    killed_after = time.perf_counter() - t0
    if committed < half:
        raise RuntimeError(f"(h) the load ended (exit {proc.returncode}) before half of its "
                           f"{len(tiles)} tiles were committed")
    committed = _committed(dsn, schema_name)
    left = len(glob.glob(os.path.join(stage_dir, "**", "*.h5"), recursive=True))
    log(f"  killed after {killed_after:.1f} s: {committed} of {len(tiles)} tiles committed, "
        f"{left} stage files left")
    t = time.perf_counter()
    rerun = subprocess.run(argv, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, stdin=subprocess.DEVNULL, timeout=1800)
    wall = time.perf_counter() - t
    if rerun.returncode != 0:
        raise RuntimeError(f"(h) rerun failed ({rerun.returncode}):\n{rerun.stdout[-3000:]}")
    reused = len(re.findall(r"reusing complete stage file", rerun.stdout))
    plan = re.findall(r"plan: (.*)", rerun.stdout)
    ours, ref = table_digests(dsn, schema_name), table_digests(dsn, reference_schema)
    differ = sorted(k for k in ref if ours.get(k) != ref[k])
    shutil.rmtree(stage_dir, ignore_errors=True)
    res = {"tiles": len(tiles), "ranks": ranks, "killed_after_s": killed_after,
           "committed_at_kill": committed, "stage_files_left": left,
           "rerun_wall_s": wall, "rerun_reused_stage_files": reused,
           "rerun_plan": plan[-1].strip() if plan else "", "tables_compared": len(ref),
           "tables_differing": differ, "rows": {k: v[0] for k, v in ours.items()},
           "schema": schema_name}
    log(f"  rerun: {wall:.1f} s, {reused} complete stage files reused, plan "
        f"{res['rerun_plan']}; tables equal to the uninterrupted load: "
        f"{len(ref) - len(differ)} of {len(ref)}" + (f" (differ: {differ})" if differ else ""))
    return res
