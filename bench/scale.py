"""How the load's cost grows: helpers of ``bench/run.py`` parts (d)-(f).

(d) growth: the same ``--new`` tiles (default 10) loaded, as a daily run, into databases
    already holding 50, 200 and 1,000 small mock tiles (each an ``--initial`` load of the
    first N tiles of one 1,010-tile small mock production); seconds per new tile, the
    load's timers, and for the smallest and largest database a cProfile of rank 0 and
    the seconds of every SQL statement it sent (``rank_wrapper.py``), to say which grow;
(e) memory: peak RSS of rank 0 after ``--initial`` loads of 100 and 1,000 small tiles
    (default ``--wave-tiles``);
(f) a daily morning on the loaded full-size production: a copy of the full-size mock
    advanced one night (new tiles, re-observed tiles, one withdrawn tile) and loaded
    into the schema of the last full-size initial load.
"""
import csv
import json
import os
import pstats
import re
import shutil
import subprocess
import time

from mocks import mock_digest, mock_is_current


def tile_ids(mockdir):
    """TILEIDs of a mock daily production's tiles file with EFFTIME_SPEC > 0, in file
    order (the tiles a load inserts)."""
    path = os.path.join(mockdir, "spectro", "redux", "daily", "tiles-daily.csv")
    out, seen = [], set()
    with open(path) as f:
        for row in csv.DictReader(f):
            t = int(row["TILEID"])
            if float(row["EFFTIME_SPEC"] or 0) > 0 and t not in seen:
                seen.add(t)
                out.append(t)
    return out


def ensure_advanced(base, new_tiles, reobserve, withdraw, log=print):
    """A copy of the mock production ``base`` advanced one night, written once."""
    from specprod_db.mock.production import advance_production
    outdir = f"{base}-next-n{new_tiles}-r{reobserve}{'-w' if withdraw else ''}"
    done = os.path.join(outdir, "bench-complete.json")
    if mock_is_current(done):
        log(f"advanced mock: reusing {outdir}")
        return outdir, None
    shutil.rmtree(outdir, ignore_errors=True)
    t = time.time()
    log(f"advanced mock: copying {base} and advancing it one night ...")
    # cp -a keeps the mtimes: the copied tiles' fingerprints (name, size, mtime) match
    subprocess.run(["cp", "-a", base, outdir], check=True)
    os.remove(os.path.join(outdir, "bench-complete.json"))
    advance_production(outdir, new_tiles=new_tiles, reobserve=reobserve, withdraw=withdraw)
    elapsed = time.time() - t
    with open(done, "w") as f:
        json.dump({"seconds": elapsed, "mock_digest": mock_digest()}, f)
    log(f"advanced mock: {elapsed:.0f} s")
    return outdir, elapsed


def sql_times(prof_dir, rank=0):
    """``{statement: {"seconds", "calls"}}`` of one rank (``rank_wrapper.py``), the cached
    growth schemas' names (``bench_growth_<digest>_<N>``) written ``S`` as
    ``rank_wrapper`` writes the others'."""
    path = os.path.join(prof_dir, f"sql-rank-{rank}.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        raw = json.load(f)
    out = {}
    for k, v in raw.items():
        # rank_wrapper cut the statement at 160 characters with the long name in it
        k = re.sub(r'"?bench_growth_[0-9a-f]+_\d+"?', "S", k)[:120]
        o = out.setdefault(k, {"seconds": 0.0, "calls": 0})
        o["seconds"] += v.get("seconds", 0.0)
        o["calls"] += v.get("calls", 0)
    return out


def compare_sql(small_dir, large_dir, top=12):
    """Statements of rank 0, seconds in the small and the large database, by growth."""
    a, b = sql_times(small_dir), sql_times(large_dir)
    rows = []
    for k in set(a) | set(b):
        sa = a.get(k, {}).get("seconds", 0.0)
        sb = b.get(k, {}).get("seconds", 0.0)
        rows.append({"statement": k, "small_s": sa, "large_s": sb, "growth_s": sb - sa,
                     "calls_small": a.get(k, {}).get("calls", 0),
                     "calls_large": b.get(k, {}).get("calls", 0)})
    rows.sort(key=lambda r: -r["growth_s"])
    total = {"small_s": sum(r["small_s"] for r in rows),
             "large_s": sum(r["large_s"] for r in rows)}
    return {"total": total, "top": rows[:top]}


def _func_times(prof_path):
    st = pstats.Stats(prof_path)
    out = {}
    for (fn, line, name), (cc, nc, tt, ct, callers) in st.stats.items():
        name = re.sub(r" at 0x[0-9a-f]+", "", name)  # the same function in both runs
        short = f"{os.path.basename(fn)}:{line}({name})"
        if "site-packages" in fn and "specprod_db" not in fn:
            short = f"[lib] {short}"
        if short in out:
            ct, tt, nc = ct + out[short][0], tt + out[short][1], nc + out[short][2]
        out[short] = (ct, tt, nc)
    return out


def compare_profiles(small_dir, large_dir, top=12, rank=0):
    """Functions of rank 0 (cProfile) whose own time (tottime) grew most."""
    pa = os.path.join(small_dir, f"rank-{rank}.prof")
    pb = os.path.join(large_dir, f"rank-{rank}.prof")
    if not (os.path.exists(pa) and os.path.exists(pb)):
        return []
    a, b = _func_times(pa), _func_times(pb)
    rows = []
    for k in set(a) | set(b):
        ca, ta, na = a.get(k, (0, 0, 0))
        cb, tb, nb = b.get(k, (0, 0, 0))
        rows.append({"function": k, "tottime_small": ta, "tottime_large": tb,
                     "cumtime_small": ca, "cumtime_large": cb, "calls_small": na,
                     "calls_large": nb, "growth_s": tb - ta})
    rows.sort(key=lambda r: -r["growth_s"])
    return rows[:top]


def explain_daily(dsn, schema_name, tileids):
    """EXPLAIN (ANALYZE, BUFFERS) of the per-tile primary-flag UPDATE
    (:func:`specprod_db.load.finalize.update_primary` over a temporary table of TARGETIDs,
    as the writer calls it) and of the orphan-photometry DELETE
    (``tile_writer.delete_orphan_photometry``) for the TARGETIDs of ``tileids`` (one
    tile's worth each, the first tile), in a transaction rolled back: ``{name: plan}``."""
    import psycopg2
    from psycopg2 import sql

    from specprod_db.db import tempids
    from specprod_db.load import finalize
    from specprod_db.load.tile_writer import delete_orphan_photometry
    conn = psycopg2.connect(dsn)
    out = {}
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT DISTINCT targetid FROM {} WHERE tileid = %s").format(
                sql.Identifier(schema_name, "ztile")), (int(tileids[0]),))
            ids = [r[0] for r in cur.fetchall()]
            table = tempids.create(cur, ids)
            q = finalize._flags_sql(schema_name, sql.SQL(
                "JOIN {} AS s ON s.targetid = z.targetid").format(table))
            cur.execute(sql.SQL("EXPLAIN (ANALYZE, BUFFERS) ") + q)
            out["flag UPDATE"] = "\n".join(r[0] for r in cur.fetchall())

            class Explaining:
                """A cursor whose execute prefixes EXPLAIN (ANALYZE, BUFFERS)."""
                connection = conn

                def execute(self, query, params=None):
                    text = (query if isinstance(query, str)
                            else query.as_string(conn)).lstrip()
                    if not text.startswith("DELETE"):
                        return cur.execute(query, params)
                    cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + text, params)
                    out["orphan DELETE"] = "\n".join(r[0] for r in cur.fetchall())

                def __getattr__(self, name):
                    return getattr(cur, name)

            delete_orphan_photometry(Explaining(), schema_name, table)
    finally:
        conn.rollback()
        conn.close()
    return out
