"""``bench/results/RESULTS.md`` and its PNG plots, from one ``bench/run.py`` result.

Plots are drawn with ``matplotlib.figure.Figure`` and the Agg canvas (no pyplot, no
display).
"""
import os

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

def rss_growth(res):
    """Peak RSS of each rank at the largest (e) load over the smallest, or None."""
    sb = res.get("small_bulk") or {}
    sizes = [str(x) for x in res.get("rss_sizes", []) if str(x) in sb]
    if len(sizes) < 2:
        return None
    a0, a1 = sb[sizes[0]]["peak_rss_mib"], sb[sizes[-1]]["peak_rss_mib"]
    return {"small": sizes[0], "large": sizes[-1],
            "ratios": [y / x for x, y in zip(a0, a1)]}


def write_ratio(res):
    """(b)'s write stage against (a)'s ceiling: the rows the 1-rank ``--initial`` run of
    (b) wrote (``load_run`` counts, primary flags not counted) per second of its ``write``
    timer, over (a)'s server-side ``COPY ... FROM file`` into bare tables of that run's
    staged rows (all tables' rows / all tables' ceiling seconds); None without both.
    With ``copy_written`` (:func:`copy_ceiling.written`), also the issue's own measure:
    ``same_rows_ratio`` = the server's COPY of exactly the rows written, seconds / the
    write stage's seconds."""
    loads, copy = res.get("loads") or [], res.get("copy") or {}
    one = next((r for r in loads if r["ranks"] == 1 and r.get("writers", 1) == 1), None)
    if one is None or not copy or not one["timers"].get("write"):
        return None
    rows = sum(v for k, v in one["tables"].items() if k != "primary")
    ours = rows / one["timers"]["write"]
    ceiling = sum(r["rows"] for r in copy.values()) / sum(r["ceiling_s"] for r in copy.values())
    out = {"rows": rows, "write_s": one["timers"]["write"], "write_rows_per_s": ours,
           "ceiling_rows_per_s": ceiling, "ratio": ours / ceiling}
    same = res.get("copy_written")  # copy_ceiling.written: the issue's own measure
    if same:
        out["same_rows_ceiling_s"] = sum(r["ceiling_s"] for r in same.values())
        out["same_rows_ratio"] = out["same_rows_ceiling_s"] / one["timers"]["write"]
    return out


def fmt_ratio(x):
    return "n/a" if x is None else f"{x:.2f}"


def fmt_s(x):
    return "n/a" if x is None else f"{x:.1f} s"


def end_of_load_rows(res):
    """[(tiles, rows, rest_s, {K: end_s}, {K: builds_s})] of (e)'s end-of-load runs."""
    e = res.get("end_of_load") or {}
    out = []
    for n in sorted(e, key=int):
        r = e[n]
        out.append((r["tiles"], r["rows"], r["rest_s"],
                    {k: v["end_s"] for k, v in r["k"].items()},
                    {k: v["builds_s"] for k, v in r["k"].items()}))
    return out


def end_of_load_growth(res):
    """{K: seconds per tile of the slope smallest -> largest load} of (e)'s runs."""
    rows = end_of_load_rows(res)
    if len(rows) < 2:
        return {}
    a, b = rows[0], rows[-1]
    return {k: (b[3][k] - a[3][k]) / (b[0] - a[0]) for k in a[3] if k in b[3]}


TIMERS = ("plan", "extract tiles", "plan bricks", "extract bricks", "write", "finalize")


def _save(fig, path):
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _timer_names(runs):
    names = [t for t in TIMERS if any(t in r["timers"] for r in runs)]
    names += sorted({k for r in runs for k in r["timers"]} - set(names))
    return names


def plot_stages(res, path):
    runs = res.get("loads") or []
    if not runs:
        return False
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    names = _timer_names(runs)
    x = list(range(len(runs)))
    bottom = [0.0] * len(runs)
    for name in names:
        v = [r["timers"].get(name, 0.0) for r in runs]
        ax.bar(x, v, bottom=bottom, label=name)
        bottom = [a + b for a, b in zip(bottom, v)]
    ax.plot(x, [r["wall_s"] for r in runs], "k_", markersize=40, label="wall (mpiexec)")
    ax.set_xticks(x, [f"{r['ranks']} rank(s)\n{r.get('writers', 1)} writer(s)"
                      f"\n{r['tiles']} tiles" for r in runs], fontsize=7)
    ax.set_ylabel("seconds")
    ax.set_title("Initial load of full-size mock tiles: time per stage")
    ax.legend(fontsize=7, loc="upper right")
    _save(fig, path)
    return True


def plot_growth(res, path):
    g = res.get("growth") or []
    if not g:
        return False
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    held = [d["held"] for d in g]
    ax.plot(held, [d["s_per_new_tile"] for d in g], "o-k", label="wall / new tile")
    for name in _timer_names(g):
        ax.plot(held, [d["timers"].get(name, 0.0) / max(1, d["tiles_written"]) for d in g],
                ".--", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("tiles already in the database")
    ax.set_ylabel("seconds per new tile")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{g[0]['tiles_written']} new small tiles loaded daily ({g[0]['ranks']} ranks)")
    ax.legend(fontsize=7)
    _save(fig, path)
    return True


def plot_rss(res, path):
    runs = list(res.get("loads") or [])
    sb = res.get("small_bulk") or {}
    runs += [sb[k] for k in sorted(sb, key=int)]
    if not runs:
        return False
    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot()
    x0 = 0
    ticks, labels = [], []
    for r in runs:
        rss = r["peak_rss_mib"]
        xs = [x0 + i for i in range(len(rss))]
        ax.bar(xs, rss, color=["C3"] + ["C0"] * (len(rss) - 1))
        ticks.append(x0 + (len(rss) - 1) / 2)
        labels.append(f"{r['tiles']} {'small' if r['label'].startswith('small') else 'full'}"
                      f"\n{r['ranks']} rk"
                      + (f", {r['writers']} wr" if (r.get("writers") or 1) > 1 else ""))
        x0 += len(rss) + 1
    ax.set_xticks(ticks, labels, fontsize=7)
    ax.set_ylabel("peak RSS, MiB")
    ax.set_title("Peak RSS per rank (red: rank 0, planner + writer)")
    _save(fig, path)
    return True


def _fmt(x, nd=1):
    return f"{x:,.{nd}f}"


def markdown(res, text):
    m = res["machine"]
    out = ["# Benchmark results", "",
           "Written by `bench/run.py` (`make bench`); method: `bench/README.md`; "
           "discussion: `doc/benchmarks.md`, `doc/scale.md`. All numbers below are from "
           f"one run started {res['started']} ({res['total_s'] / 60:.1f} min).", "",
           f"**Machine**: {m['cores']} x {m['cpu']}, {m.get('mem_gib')} GiB; PostgreSQL "
           f"{m['postgres']} (shared_buffers {m['shared_buffers']}, synchronous_commit "
           f"{m['synchronous_commit']}, max_wal_size {m['max_wal_size']}); Python "
           f"{m['python']}, numpy {m['numpy']}, h5py {m['h5py']}, psycopg2 "
           f"{m['psycopg2']}, SQLAlchemy {m['sqlalchemy']}. Package: "
           f"`{m.get('package', '?')}` at {m.get('commit', '?')}. Shared with other test "
           f"suites: load average (1/5/15 min) {' '.join(res.get('loadavg3_start', []))} at "
           f"the start, {' '.join(res.get('loadavg3_end', []))} at the end; each run's "
           "is in the tables.", ""]
    b = res.get("loads") or []
    if b:
        names = _timer_names(b)
        out += ["## (b) Initial load (`--initial`) of full-size mock tiles", "",
                "![stages](stages.png)", "",
                "| ranks | writers | tiles | rows | wall s | tiles/s | rows/s | "
                + " | ".join(names) + " | peak RSS per rank, MiB | busy s per rank | "
                "balance max/mean | write s with extractors busy | WAL MB per tile | "
                "load avg before |",
                "|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(names)
                + "---|---|---:|---:|---:|---|"]
        for r in b:
            rk = r.get("ranks_counts") or {}
            busy = rk.get("busy_seconds") or {}
            out.append(
                f"| {r['ranks']} | {r.get('writers', 1)} | {r['tiles']} | {r['rows']:,} | "
                f"{r['wall_s']:.1f} | "
                f"{r['tiles'] / r['wall_s']:.2f} | {r['rows_per_s']:,.0f} | "
                + " | ".join(f"{r['timers'].get(n, 0):.1f}" for n in names)
                + f" | {', '.join(map(str, r['peak_rss_mib']))} | "
                f"{', '.join(f'{v:.1f}' for v in busy.values())} | "
                f"{rk.get('balance_max_over_mean', '')} | "
                f"{rk.get('write_seconds_with_workers_busy', '')} of "
                f"{rk.get('write_seconds', '')} | "
                f"{r.get('wal_bytes', 0) / r['tiles'] / 1e6:.1f} | "
                f"{' '.join(r['loadavg3_before'])} |")
        tables = sorted({k for r in b for k in r["tables"]} - {"primary"})
        out += ["", "Rows per second per table (rows inserted / wall):", "",
                "| ranks | writers | " + " | ".join(tables) + " |",
                "|---:|---:|" + "---:|" * len(tables)]
        for r in b:
            out.append(f"| {r['ranks']} | {r.get('writers', 1)} | " + " | ".join(
                f"{r['tables'].get(t, 0) / r['wall_s']:,.0f}" for t in tables) + " |")
        out.append("")
        out.append("Rows: " + ", ".join(f"{t} {b[0]['tables'].get(t, 0):,}" for t in tables)
                   + f"; primary flags set: {b[0]['tables'].get('primary', 0):,}.")
        wr = write_ratio(res)
        if wr:
            out += ["", f"**Write stage / the server's own COPY of the same rows into bare "
                    f"tables: {fmt_ratio(wr.get('same_rows_ratio'))}** (goal >= 0.5): the "
                    f"1-rank run wrote {wr['rows']:,} rows in a write stage of "
                    f"{wr['write_s']:.1f} s; dumped from its tables, the server copies them "
                    f"back into bare tables in {fmt_s(wr.get('same_rows_ceiling_s'))} "
                    "(`copy_ceiling.written`, per table in `results.json`, `copy_written`). "
                    f"Against (a)'s rows/s of the staged rows, the measure reported before: "
                    f"{wr['ratio']:.2f} ({wr['write_rows_per_s']:,.0f} against "
                    f"{wr['ceiling_rows_per_s']:,.0f} rows/s) — it flatters the write: the "
                    "staged rows hold every photometry row (wide, slow) that no tile "
                    "inserts, and none of the narrow `ztile_*` rows."]
        if res.get("stage_bytes_per_tile"):
            out += ["", f"Stage files (HDF5) of the 1-rank run, all kept: "
                    f"{b[0]['stage_bytes'] / 1e6:,.1f} MB for {b[0]['tiles']} tiles = "
                    f"**{res['stage_bytes_per_tile'] / 1e6:.2f} MB per tile** (tile files "
                    "and Legacy Surveys brick files)."]
        out.append("")
    mo = res.get("morning")
    if mo:
        out += ["## (f) A daily morning on the loaded production", "",
                f"The full-size mock advanced one night (`advance_production`: "
                f"{res['argv'] and ''}new, re-observed and one withdrawn tile), loaded "
                f"with {mo['ranks']} ranks into the schema of the {mo['ranks']}-rank "
                f"initial load. Plan: {mo['plan']}.", "",
                "| wall s | tiles written | s per written tile | initial load, s per tile "
                "| ratio | timers (s) | load avg before |", "|---:|---:|---:|---:|---:|---|---|",
                f"| {mo['wall_s']:.1f} | {mo['tiles_written']} | "
                f"{mo['wall_s'] / max(1, mo['tiles_written']):.2f} | "
                f"{mo['initial_s_per_tile']:.2f} | "
                f"{mo['wall_s'] / max(1, mo['tiles_written']) / mo['initial_s_per_tile']:.2f} | "
                + ", ".join(f"{k} {v:.1f}" for k, v in mo["timers"].items())
                + f" | {' '.join(mo['loadavg3_before'])} |", ""]
        fl = mo.get("floor")
        if fl and fl["tiles"]:
            n = len(fl["tiles"])
            w = mo["timers"]["write"]
            out += ["The floor of the daily write (`bench/daily_floor.py`): the server's own "
                    "binary COPY of the same tiles' rows (as the morning left them) into the "
                    "same fully constrained tables, no client, nothing else of a tile's "
                    "transaction (a new tile's rows into vacuumed tables, a re-observed "
                    "tile's after its old rows are deleted in the same transaction).", "",
                    "| tiles written | write s per tile | floor s per tile | write / floor "
                    "| floor per table (s) |", "|---:|---:|---:|---:|---|",
                    f"| {n} | {w / n:.2f} | {fl['floor_s'] / n:.2f} | "
                    f"{w / fl['floor_s']:.2f} | "
                    + ", ".join(f"{k} {v:.1f}" for k, v in fl["tables"].items()) + " |", ""]
    g = res.get("growth") or []
    if g:
        names = _timer_names(g)
        ratio = g[-1]["s_per_new_tile"] / g[0]["s_per_new_tile"]
        out += ["## (d) How cost grows: the same new tiles into a larger database", "",
                "![growth](growth.png)", "",
                f"The same {g[0]['tiles_written']} small tiles (150 fibres) loaded as a daily "
                f"run ({g[0]['ranks']} ranks, `--tiles`) into a database holding N small "
                f"tiles' worth of rows: copies of a {res.get('growth_base', 1000)}-tile "
                f"`--initial` load under new TILEIDs and TARGETIDs (`bench/replicate.py`, "
                f"cached between runs). **Largest/smallest: {ratio:.2f}x** (goal <= 1.2).",
                "", "| tiles held | database GB | wall s | s per new tile | "
                + " | ".join(names) + " | load avg before |",
                "|---:|---:|---:|---:|" + "---:|" * len(names) + "---|"]
        for d in g:
            out.append(f"| {d['held']} | {d.get('db_bytes', 0) / 1e9:.2f} | "
                       f"{d['wall_s']:.1f} | {d['s_per_new_tile']:.2f} | "
                       + " | ".join(f"{d['timers'].get(n, 0):.2f}" for n in names)
                       + f" | {' '.join(d['loadavg3_before'])} |")
        gs = res.get("growth_sql")
        if gs:
            out += ["", f"Rank 0's SQL statements (timed client-side around `execute` / "
                    f"`copy_expert`), at {g[0]['held']} and {g[-1]['held']} tiles held: "
                    f"{gs['total']['small_s']:.2f} s -> {gs['total']['large_s']:.2f} s in "
                    "all. Those that grew most:", "",
                    "| + s | s small | s large | calls | statement |", "|---:|---:|---:|---:|---|"]
            for r in gs["top"][:10]:
                st = r["statement"].replace("|", "\\|")
                out.append(f"| {r['growth_s']:+.3f} | {r['small_s']:.3f} | "
                           f"{r['large_s']:.3f} | {r['calls_large']} | `{st}` |")
        gc = res.get("growth_cache") or {}
        if gc:
            out += ["", "Growth databases (cached): " + "; ".join(
                f"{v['tiles']} tiles {v['bytes'] / 1e9:.2f} GB, "
                + (f"built in this run in {v['build_s']:.0f} s" if v.get("built_now")
                   else f"reused (built in {v['build_s']:.0f} s)")
                for _, v in sorted(gc.items(), key=lambda kv: int(kv[0]))) + "."]
        ex = g[-1].get("explain") or {}
        for name, plan in ex.items():
            out += ["", f"EXPLAIN (ANALYZE, BUFFERS) of the per-tile {name} at "
                    f"{g[-1]['held']} tiles (one new tile's TARGETIDs, rolled back):", "",
                    "```", plan, "```"]
        gp = res.get("growth_profile")
        if gp:
            out += ["", "cProfile of rank 0, own time (tottime) that grew most:", "",
                    "| + s | tottime small | tottime large | calls large | function |",
                    "|---:|---:|---:|---:|---|"]
            for r in gp[:10]:
                out.append(f"| {r['growth_s']:+.3f} | {r['tottime_small']:.3f} | "
                           f"{r['tottime_large']:.3f} | {r['calls_large']} | "
                           f"`{r['function']}` |")
        out.append("")
    sb = res.get("small_bulk") or {}
    if sb:
        out += ["## (e) Memory: initial loads of small tiles", "",
                "![rss](rss.png)", "",
                "| tiles | ranks | wall s | tiles/s | peak RSS per rank, MiB (rank 0 first) "
                "| load avg before |", "|---:|---:|---:|---:|---|---|"]
        for k in sorted(sb, key=int):
            r = sb[k]
            out.append(f"| {r['tiles']} | {r['ranks']} | {r['wall_s']:.1f} | "
                       f"{r['tiles'] / r['wall_s']:.2f} | "
                       f"{', '.join(map(str, r['peak_rss_mib']))} | "
                       f"{' '.join(r['loadavg3_before'])} |")
        growth = rss_growth(res)
        if growth:
            out += ["", f"**Peak RSS at {growth['large']} / at {growth['small']} tiles, "
                    "rank 0 first: "
                    + ", ".join(f"{x:.2f}x" for x in growth["ratios"])
                    + "** (goal <= 1.2 for every rank; default `--wave-tiles`)."]
        out.append("")
    eol = end_of_load_rows(res)
    if eol:
        ks = sorted(eol[0][3], key=int)
        gr = end_of_load_growth(res)
        out += ["## (e) The end of the initial load on K build sessions", "",
                "Keys, foreign keys and indexes dropped again after each (e) load and "
                "rebuilt on K sessions (`db/build_scheduler.build_missing`, `--build-connections "
                "K`); flags, CLUSTER and ANALYZE timed once in the load's order (flags "
                "with the builds dropped), K-independent (`bench/endload.py`).", "",
                "| tiles | rows | flags+CLUSTER+ANALYZE s | "
                + " | ".join(f"builds K={k} s | end K={k} s" for k in ks) + " |",
                "|---:|---:|---:|" + "---:|---:|" * len(ks)]
        for tiles, rows, rest, end, bld in eol:
            out.append(f"| {tiles} | {rows:,} | {rest:.1f} | " + " | ".join(
                f"{bld[k]:.1f} | {end[k]:.1f}" for k in ks) + " |")
        parts = [(v["tiles"], v.get("rest_parts") or {}) for _, v in sorted(
            (res.get("end_of_load") or {}).items(), key=lambda kv: int(kv[0]))]
        if all(p for _, p in parts):
            out += ["", "Flags / CLUSTER / ANALYZE, s: " + "; ".join(
                f"{n} tiles {p['flags_s']:.1f} / "
                f"{p.get('cluster_steps_s', p['cluster_s']):.1f} / "
                f"{p.get('analyze_steps_s', p['analyze_s']):.1f}" for n, p in parts)
                + " (CLUSTER and ANALYZE: steps of the build sessions where the scheduler "
                "has them, so inside the builds' wall, K=1 sums)."]
        if gr:
            out += ["", "Growth per tile (slope smallest -> largest): " + ", ".join(
                f"K={k} {gr[k] * 1000:.1f} ms/tile" for k in ks) + "."]
        out.append("")
    h = res.get("restart")
    if h:
        same = h["tables_compared"] - len(h["tables_differing"])
        out += ["## (h) Restart: an initial load killed half-way, then run again", "",
                f"`mpiexec -n {h['ranks']} specprod-db load --initial` of {h['tiles']} "
                "small tiles, SIGKILLed (the whole job) once half of the tiles were "
                "committed; then the same command again.", "",
                "| killed after s | tiles committed | stage files left | rerun wall s | "
                "uninterrupted wall s | stage files reused | rerun plan | tables equal |",
                "|---:|---:|---:|---:|---:|---:|---|---|",
                f"| {h['killed_after_s']:.1f} | {h['committed_at_kill']} | "
                f"{h['stage_files_left']} | {h['rerun_wall_s']:.1f} | "
                f"{h['uninterrupted_wall_s']:.1f} | {h['rerun_reused_stage_files']} | "
                f"{h['rerun_plan']} | **{same} of {h['tables_compared']}**"
                + (f" (differ: {', '.join(h['tables_differing'])})"
                   if h["tables_differing"] else "") + " |", ""]
    g = res.get("operator")
    if g:
        out += ["## (g) The operator's morning: start-up and 4 new tiles", "",
                f"Tiles of {g['potential_per_tile']:.0f} potential targets (the held-out "
                f"DESI tree's size). The old tool: {g['old_tool_s_per_tile']:.0f} s per "
                f"tile (one process per tile), so "
                f"{g['old_tool_s_per_tile'] * g['tiles']:.0f} s for {g['tiles']}.", "",
                f"`specprod-db --help`: **{g['help_s']:.2f} s** (goal < 0.3); a load with "
                f"nothing to do: **{g['nothing_s']:.2f} s** (goal < 1).", "",
                "| ranks | wall s | work per tile, s (goal <= 0.4) | x the old tool "
                "(goal >= 60) |", "|---:|---:|---:|---:|"]
        for m_ in g["mornings"]:
            out.append(f"| {m_['ranks']} | {m_['wall_s']:.2f} | "
                       f"{m_['work_s_per_tile']:.2f} | {m_['speedup_vs_old_tool']:.0f} |")
        out.append("")
    out += ["## The whole report as printed (includes (a) COPY ceiling and (c) ORM)", "",
            "```", text, "```", ""]
    return "\n".join(out)


def write(res, outdir, text):
    os.makedirs(outdir, exist_ok=True)
    plot_stages(res, os.path.join(outdir, "stages.png"))
    plot_growth(res, os.path.join(outdir, "growth.png"))
    plot_rss(res, os.path.join(outdir, "rss.png"))
    with open(os.path.join(outdir, "RESULTS.md"), "w") as f:
        f.write(markdown(res, text))
