#!/usr/bin/env python
"""A projection on paper, from one ``bench/run.py`` result, to a full production.

    .venv/bin/python bench/project.py [bench/results/results.json] [--tiles 25000]

Model (``doc/scale.md`` explains it and its limits): ``K`` writers (``--writers K``) and
one PostgreSQL server; ``128 N - 1 - K`` extracting ranks on ``N`` nodes (``K = 1``:
rank 0 writes).

* per-tile costs from (b)'s 1-rank ``--initial`` run (stages run one after the other
  there, so each timer is that stage's cost): extraction = extract tiles + targetphot
  (the wave's catalog reads and each tile's targeting rows) + extract bricks (+ plan
  bricks), write = the write timer; scaled from the mock tile's rows to a real
  tile's (bytes-weighted with (a)'s PGCOPY bytes per row for the write; rows of ztile
  for extraction);
* the wall of the tile phase is the largest of: the writers' total divided by
  ``min(K, server cores)`` (each writer is one server backend; assumed to scale until the
  server's cores are used, which this 2-core machine cannot show), the WAL the load
  writes at the server's WAL rate (WAL bytes per tile measured in (b) with
  ``pg_current_wal_lsn``, scaled like the write; the rate an assumption,
  ``--wal-mb-s``), and the extractors' total divided by their number (the write
  overlaps the next wave's extraction);
* the end of the load (keys, foreign keys, indexes, primary flags, CLUSTER, ANALYZE)
  from (e)'s measured growth (``bench/endload.py``: the ``--initial`` loads of 100, 300
  and 1,000 small tiles, their builds redone on K = 1, 2, 4 sessions): the builds' and
  the rest's (flags, CLUSTER, ANALYZE) seconds per row of the slope from the smallest to
  the largest load, times a production's rows, times log(rows) / log(rows of the largest
  load) (sorts); the end on ``B`` sessions takes the larger of the sum of its steps
  over ``min(B, server cores)`` and the longest chain of its dependencies
  (:func:`critical_path`: the scheduler's graph, ztile's flags in ``B`` parts), both
  scaled alike; what runs outside the scheduler (the flags, in a version without flag
  steps) is serial.  Without (e)'s figures: (b)'s finalize
  timer scaled with rows x log(rows);
* no growth of the per-tile write with the rows held: (d) found the per-tile work of a
  daily run flat and its growth in the per-run ANALYZE; the growth of the write timer in
  (e)'s larger initial loads was not separated from CPU contention on 2 cores
  (``doc/scale.md``). The measured ratios are printed next to the projection.
"""
import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

#: rows of a full production, per table (the issue's figures; target and fiberassign
#: one per fibre like ztile)
REAL = {"ztile": 125e6, "potential": 375e6, "photometry": 50e6, "target": 125e6,
        "fiberassign": 125e6}


def _write_ratio(res):
    try:
        import results_md
    except ImportError:
        return None
    wr = results_md.write_ratio(res)
    if not wr:
        return None
    return round(wr.get("same_rows_ratio", wr["ratio"]), 3)


def _by_build(steps):
    """``{build: seconds}`` of ``{step: seconds}`` (a foreign key's two steps summed)."""
    out = {}
    for name, sec in steps.items():
        b = name.split(": ")[0]
        out[b] = out.get(b, 0.0) + sec
    return out


def end_of_load(res, real_all, server_cores, sessions=(1, 2, 4, 8, 16)):
    """The end of a production's initial load from (e)'s measured growth (module doc);
    None without at least two (e) sizes with K = 1."""
    e = res.get("end_of_load") or {}
    sizes = sorted((n for n in e if "1" in e[n]["k"]), key=int)
    if len(sizes) < 2:
        return None
    a, b = e[sizes[0]], e[sizes[-1]]
    drows = b["rows"] - a["rows"]
    logf = math.log(real_all) / math.log(b["rows"])
    # each step of the end on one session, scaled on its own: its slope per row from the
    # smallest to the largest load x a production's rows x log factor; ANALYZE samples
    # (300 x default_statistics_target rows a table) and does not grow: as measured
    sa, sb = _by_build(a["k"]["1"]["steps"]), _by_build(b["k"]["1"]["steps"])
    real = {n: sb[n] if n.startswith("analyze_") else
            max(0.0, (sb[n] - sa.get(n, 0.0)) / drows) * real_all * logf for n in sb}
    # outside the scheduler (a version that ran the flags alone first): serial
    pa, pb = a.get("rest_parts") or {}, b.get("rest_parts") or {}
    rest = 0.0 if pb.get("flags_in_steps", True) and not b.get("rest_s") else max(
        0.0, (b["rest_s"] - a["rest_s"]) / drows) * real_all * logf
    total = sum(real.values())
    measured = {k: v["end_s"] for k, v in b["k"].items()}
    flags = sum(v for n, v in real.items() if n.startswith("first_ztile_"))
    out = {"sizes": [int(s) for s in sizes], "rows": [e[s]["rows"] for s in sizes],
           "steps_1_h": total / 3600, "flags_1_h": flags / 3600, "log_factor": logf,
           "analyze_h": sum(v for n, v in real.items() if n.startswith("analyze_")) / 3600,
           "rest_h": rest / 3600, "measured_end_s_at_largest": measured, "sessions": []}
    for k in sessions:
        kk = min(k, server_cores)
        path, via = critical_path(real, kk)
        w = max(path, total / kk)
        out["sessions"].append({"sessions": k, "builds_h": w / 3600,
                                "end_h": (w + rest) / 3600, "critical_path_h": path / 3600,
                                "critical_path": via})
    return out


def critical_path(seconds, sessions):
    """The longest chain of the end of the load's dependencies (seconds, [builds on
    it]), from ``seconds`` (``{build: seconds}`` of one end on one session): the graph
    of :func:`specprod_db.db.builds.finishing` over the bulk builds with ztile's flags
    in ``sessions`` parts (each 1/sessions of the flags measured), a foreign key after
    the CLUSTER of the table it references (their locks conflict).  However many
    sessions, the end takes at least that long."""
    from specprod_db.db import builds
    secs = dict(seconds)
    flags = sum(v for n, v in secs.items() if n.startswith("first_ztile_"))
    graph = builds.finishing(builds.bulk_builds(),
                             first={"ztile": [[]] * sessions, "zpix": [[]]})
    for b in graph:
        if b.name.startswith("first_ztile_"):
            secs[b.name] = flags / sessions
    clustered = {b.table for b in graph if b.kind == builds.CLUSTER}
    # a foreign key's steps lock the referenced table (ROW SHARE), which CLUSTER holds
    # ACCESS EXCLUSIVE: the scheduler starts CLUSTER first, so they run after it
    deps = {b.name: b.depends + ((f"cluster_{b.references[0]}",) if b.references and
                                 b.references[0] in clustered else ())
            for b in graph}
    best = {}

    def longest(name):
        if name not in best:
            before = [longest(d) for d in deps.get(name, ()) if d in deps]
            top = max(before, default=(0.0, []), key=lambda r: r[0])
            best[name] = (top[0] + secs.get(name, 0.0), top[1] + [name])
        return best[name]
    return max((longest(n) for n in deps), key=lambda r: r[0])


def project(res, tiles=25000, nodes=(1, 2, 4, 8, 16, 32), cores=128, writers=(1, 4, 16),
            server_cores=32, wal_mb_s=300.0, build_sessions=8):
    one = res["loads"][0]
    assert one["ranks"] == 1, "the first load of (b) must be the 1-rank run"
    nt = one["tiles"]
    t = one["timers"]
    copy = res.get("copy") or {}
    mock_rows = {k: one["tables"].get(k, 0) / nt for k in REAL}
    real_rows = {k: v / tiles for k, v in REAL.items()}
    bpr = {k: (copy[k]["bytes"] / copy[k]["rows"]) if k in copy else 100.0 for k in REAL}
    mock_bytes = sum(mock_rows[k] * bpr[k] for k in REAL)
    real_bytes = sum(real_rows[k] * bpr[k] for k in REAL)
    wscale = real_bytes / mock_bytes
    escale = real_rows["ztile"] / mock_rows["ztile"]
    extract = (t.get("extract tiles", 0) + t.get("targetphot", 0)
               + t.get("extract bricks", 0) + t.get("plan bricks", 0)) / nt * escale
    write = t.get("write", 0) / nt * wscale
    g = res.get("growth") or []
    growth = g[-1]["s_per_new_tile"] / g[0]["s_per_new_tile"] if len(g) >= 2 else 1.0
    held = (g[0]["held"], g[-1]["held"]) if len(g) >= 2 else (0, 0)
    sb = res.get("small_bulk") or {}
    ks = sorted(sb, key=int)
    bulk_write_growth = ((sb[ks[-1]]["timers"]["write"] / sb[ks[-1]]["tiles"])
                         / (sb[ks[0]]["timers"]["write"] / sb[ks[0]]["tiles"])
                         if len(ks) >= 2 else None)
    write_total = write * tiles
    mock_all = sum(v for k, v in one["tables"].items() if k != "primary")
    real_all = sum(REAL.values()) + tiles * (sum(v for k, v in one["tables"].items()
                                                 if k not in REAL and k != "primary") / nt)
    fin_scaled = t.get("finalize", 0) * (real_all / mock_all) * (
        math.log(real_all) / math.log(mock_all))
    eol = end_of_load(res, real_all, server_cores)
    fin = fin_scaled
    if eol:
        pick = [r for r in eol["sessions"] if r["sessions"] == build_sessions]
        fin = (pick[0] if pick else eol["sessions"][-1])["end_h"] * 3600
    allc = copy and (sum(r["rows"] for r in copy.values())
                     / sum(r["ceiling_s"] for r in copy.values()))
    allb = copy and (sum(r["bytes"] for r in copy.values())
                     / sum(r["ceiling_s"] for r in copy.values()))
    copy_floor = (real_bytes * tiles / allb) if copy else None
    out = {"tiles": tiles, "write_scale": wscale, "extract_scale": escale,
           "extract_s_per_tile": extract, "write_s_per_tile": write,
           "daily_growth_ratio": growth, "daily_growth_held": held,
           "initial_write_per_tile_growth": bulk_write_growth,
           "initial_write_growth_sizes": (ks[0], ks[-1]) if ks else None,
           "write_total_h": write_total / 3600, "finalize_h": fin / 3600,
           "finalize_scaled_from_b_h": fin_scaled / 3600, "end_of_load": eol,
           "build_sessions": build_sessions, "real_rows": real_all,
           "bulk_write_ratio_to_copy": _write_ratio(res),
           "copy_ceiling_rows_per_s": allc, "copy_ceiling_bytes_per_s": allb,
           "copy_floor_h": copy_floor / 3600 if copy_floor else None,
           "real_pgcopy_bytes_per_tile": real_bytes,
           "stage_bytes_per_tile_mock": res.get("stage_bytes_per_tile"),
           "stage_bytes_per_tile_real": (res.get("stage_bytes_per_tile") or 0) * wscale,
           "nodes": []}
    for n in nodes:
        ex = cores * n - 1
        ext_total = extract * tiles / ex
        tile_phase = max(write_total, ext_total)
        out["nodes"].append({"nodes": n, "extractors": ex, "extract_h": ext_total / 3600,
                             "tile_phase_h": tile_phase / 3600,
                             "total_h": (tile_phase + fin) / 3600,
                             "bound": "writer" if write_total >= ext_total else "extract"})
    out["writer_bound_from_nodes"] = extract / (write * cores)
    wal = one.get("wal_bytes")
    wal_tile = wal / nt * wscale if wal else None
    out.update(wal_bytes_per_tile_real=wal_tile, server_cores=server_cores,
               wal_mb_s=wal_mb_s, writers=[])
    wal_floor = wal_tile * tiles / (wal_mb_s * 1e6) if wal_tile else 0.0
    for k in writers:
        for n in nodes:
            ex = cores * n - (1 if k == 1 else 1 + k)
            ext_total = extract * tiles / ex
            w = write_total / min(k, server_cores)
            phase = max(w, wal_floor, ext_total)
            bound = ("writers" if phase == w else "WAL" if phase == wal_floor
                     else "extract")
            out["writers"].append({"writers": k, "nodes": n, "extractors": ex,
                                   "write_h": w / 3600, "wal_h": wal_floor / 3600,
                                   "extract_h": ext_total / 3600,
                                   "tile_phase_h": phase / 3600,
                                   "total_h": (phase + fin) / 3600, "bound": bound})
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="?", default="bench/results/results.json")
    p.add_argument("--tiles", type=int, default=25000)
    p.add_argument("--server-cores", type=int, default=32,
                   help="cores of the PostgreSQL server: writers beyond them do not "
                        "help (assumption; default 32)")
    p.add_argument("--wal-mb-s", type=float, default=300.0,
                   help="WAL the server sustains, MB/s (assumption; default 300)")
    p.add_argument("--build-sessions", type=int, default=8,
                   help="--build-connections of the production's end of the load "
                        "(default 8)")
    args = p.parse_args()
    with open(args.results) as f:
        res = json.load(f)
    out = project(res, tiles=args.tiles, server_cores=args.server_cores,
                  wal_mb_s=args.wal_mb_s, build_sessions=args.build_sessions)
    for k, v in out.items():
        if k not in ("nodes", "writers", "end_of_load"):
            print(f"{k:<30} {v}")
    eol = out["end_of_load"]
    if eol:
        print(f"\nend of the load, from (e) at {eol['sizes']} small tiles "
              f"({eol['rows']} rows), each step's slope (K=1) x "
              f"{out['real_rows'] / 1e6:.0f} M rows x log factor {eol['log_factor']:.2f} "
              f"(ANALYZE as measured): {eol['steps_1_h']:.2f} h of steps, of which ztile's "
              f"flags {eol['flags_1_h']:.2f} h (in B parts) and ANALYZE "
              f"{eol['analyze_h']:.3f} h; outside the scheduler {eol['rest_h']:.2f} h; "
              f"measured at the largest (e) load, seconds by K: "
              f"{eol['measured_end_s_at_largest']}")
        print(f"{'sessions':>8} {'builds h':>9} {'end h':>7} {'longest chain':>13}")
        for r in eol["sessions"]:
            print(f"{r['sessions']:>8} {r['builds_h']:>9.2f} {r['end_h']:>7.2f} "
                  f"{r['critical_path_h']:>11.2f} h  {' -> '.join(r['critical_path'])}")
    best = min(out["writers"], key=lambda r: r["total_h"])
    one_node = [r for r in out["writers"] if r["nodes"] == 1]
    b1 = min(one_node, key=lambda r: r["total_h"]) if one_node else best
    print(f"\nheadline: {args.tiles} tiles on one node with {b1['writers']} writers: "
          f"{b1['total_h']:.2f} h (tile phase {b1['tile_phase_h']:.2f} h, bound by "
          f"{b1['bound']}; end of the load {out['finalize_h']:.2f} h on "
          f"{args.build_sessions} build sessions) -- goal < 1.5 h")
    print("assumptions: per-tile costs of this 2-core machine's (b) 1-rank run scaled "
          "to a real tile's rows/bytes; writers scale to min(K, --server-cores "
          f"{args.server_cores}); WAL at --wal-mb-s {args.wal_mb_s:g} MB/s; builds on "
          "B sessions = max(sum / min(B, server cores), the longest chain of dependencies "
          "with ztile's flags in B parts), linear in rows x log (ANALYZE samples: as "
          "measured); no growth of the per-tile write with the rows held (bulk path: no "
          "per-row key checks)")
    print(f"{'nodes':>5} {'extractors':>10} {'extract h':>9} {'tile phase h':>12} "
          f"{'total h':>8} bound")
    for r in out["nodes"]:
        print(f"{r['nodes']:>5} {r['extractors']:>10} {r['extract_h']:>9.2f} "
              f"{r['tile_phase_h']:>12.2f} {r['total_h']:>8.2f} {r['bound']}")
    print(f"\n{'writers':>7} {'nodes':>5} {'write h':>8} {'WAL h':>6} {'extract h':>9} "
          f"{'tile phase h':>12} {'total h':>8} bound")
    for r in out["writers"]:
        print(f"{r['writers']:>7} {r['nodes']:>5} {r['write_h']:>8.2f} {r['wal_h']:>6.2f} "
              f"{r['extract_h']:>9.2f} {r['tile_phase_h']:>12.2f} {r['total_h']:>8.2f} "
              f"{r['bound']}")


if __name__ == "__main__":
    main()
