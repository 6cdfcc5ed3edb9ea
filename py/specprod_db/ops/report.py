"""``specprod-db report``: a static HTML page of a schema's state, with plots.

Reads only.  :func:`write` makes ``DIR/index.html`` and its PNG files beside it (no
server, no script, nothing fetched from elsewhere): a Mollweide sky map of the loaded
tiles coloured by program, the tiles the last run changed highlighted; the tiles loaded
per night (``tile.lastnight``); the tiles by survey and program; the rows per table; the
last runs and their per-stage timings (``load_run.counts → timers``); the failed and
pending tiles.  Everything :func:`specprod_db.ops.status.collect` computes is taken from it
(tiles, failures, pending, runs, tables); this module reads only what status does not:
the tiles' positions and nights, the last run's ``tile_history`` rows and the runs'
timers.

matplotlib is imported by the plotting functions only, through the Agg canvas (no
pyplot, no display), so importing this module is cheap.
"""
import html
import json
import os
from datetime import datetime, timezone

from psycopg2 import sql

from specprod_db.db.sql import qualified, reading
from specprod_db.ops import status

#: The page and its images, in ``DIR``.
INDEX = "index.html"
SKY_PNG = "sky.png"
NIGHTS_PNG = "nights.png"
TIMINGS_PNG = "timings.png"
IMAGES = (SKY_PNG, NIGHTS_PNG, TIMINGS_PNG)

#: Colours of the usual DESI programs; any other program takes the next free colour.
PROGRAM_COLOURS = {"dark": "#1f4e9c", "bright": "#e08a00", "backup": "#2a9d3a",
                   "other": "#8c564b"}
_SPARE_COLOURS = ("#9467bd", "#d62728", "#17becf", "#bcbd22", "#7f7f7f", "#e377c2")
HIGHLIGHT = "#e0115f"

#: The order the pipeline's stages run in (timers of other names follow, sorted).
STAGE_ORDER = ("plan", "extract tiles", "plan bricks", "extract bricks", "write", "finalize")


def e(value):
    """Any value as escaped HTML text (None as an empty string)."""
    return html.escape("" if value is None else str(value), quote=True)


def _fetch(conn, statement, args=None):
    with conn.cursor() as cur:
        cur.execute(statement, args)
        return cur.fetchall()


# --- what status does not read ---------------------------------------------------------

def collect(conn, schema_name, plan_options=None, plan_error=None):
    """The status report (:func:`specprod_db.ops.status.collect`) plus ``sky`` (every loaded
    tile: tileid, survey, program, ra, dec, lastnight), ``last_run`` (the newest
    ``load_run`` id or None), ``changed`` (its ``tile_history`` rows) and ``timers``
    (``{run id: {stage: seconds}}`` of the runs status lists)."""
    r = status.collect(conn, schema_name, plan_options, plan_error)
    with reading(conn):
        _collect_more(conn, schema_name, r)
    return r


def _collect_more(conn, schema_name, r):
    """``sky``, ``last_run``, ``changed`` and ``timers`` of :func:`collect` into ``r``."""
    q = lambda name: qualified(schema_name, name)  # noqa: E731
    r["sky"] = [dict(zip(("tileid", "survey", "program", "ra", "dec", "lastnight"), row))
                for row in _fetch(conn, sql.SQL(
                    "SELECT tileid, survey, program, tilera, tiledec, lastnight FROM {} "
                    "ORDER BY tileid").format(q("tile")))]
    r["last_run"] = r["runs"][0]["id"] if r["runs"] else None
    r["changed"] = []
    if r["last_run"] is not None:
        r["changed"] = [dict(zip(("tileid", "action", "reason", "outcome", "error"), row))
                        for row in _fetch(conn, sql.SQL(
                            "SELECT tileid, action, reason, outcome, error FROM {} "
                            "WHERE run_id = %s ORDER BY id").format(q("tile_history")),
                            (r["last_run"],))]
    r["timers"] = {}
    ids = [run["id"] for run in r["runs"]]
    for rid, counts in _fetch(conn, sql.SQL("SELECT id, counts FROM {} WHERE id = ANY(%s)")
                              .format(q("load_run")), (ids,)):
        try:
            timers = (json.loads(counts) if counts else {}).get("timers") or {}
        except (ValueError, AttributeError):
            timers = {}
        r["timers"][rid] = {k: float(v) for k, v in timers.items()
                            if isinstance(v, (int, float))}


# --- plots -----------------------------------------------------------------------------

def _figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    tmp = path + ".tmp"
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)


def _empty(ax, text):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes,
            color="#555555")


def program_colours(programs):
    """``{program: colour}`` for the programs present, stable across pages."""
    out, spare = {}, iter(_SPARE_COLOURS * 10)
    for p in sorted(set(programs)):
        out[p] = PROGRAM_COLOURS.get(p) or next(spare)
    return out


def plot_sky(tiles, changed, path):
    """Mollweide map of ``tiles`` (RA increasing to the left, centred on RA 180), one
    colour per program; the TILEIDs in ``changed`` ringed."""
    import numpy as np
    fig = _figure(10, 5.6)
    ax = fig.add_subplot(projection="mollweide")
    ax.grid(True, color="#cccccc", lw=0.5)
    ticks = np.arange(-150, 151, 30)
    ax.set_xticks(np.radians(ticks))
    ax.set_xticklabels([f"{(180 - t) % 360}°" for t in ticks], fontsize=8)
    ax.tick_params(axis="y", labelsize=8)
    colours = program_colours(t["program"] or "?" for t in tiles)

    def xy(sub):
        ra = np.array([t["ra"] for t in sub], dtype=float)
        dec = np.array([t["dec"] for t in sub], dtype=float)
        return np.radians(180 - np.mod(ra, 360)), np.radians(dec)

    for program, colour in colours.items():
        sub = [t for t in tiles if (t["program"] or "?") == program]
        x, y = xy(sub)
        ax.scatter(x, y, s=14, color=colour, label=f"{program} ({len(sub)})", zorder=3)
    ringed = [t for t in tiles if t["tileid"] in changed]
    if ringed:
        x, y = xy(ringed)
        ax.scatter(x, y, s=110, facecolors="none", edgecolors=HIGHLIGHT, linewidths=1.6,
                   label=f"changed in the last run ({len(ringed)})", zorder=4)
    if tiles:
        ax.legend(loc="lower right", fontsize=8, bbox_to_anchor=(1.08, -0.12),
                  frameon=False)
    else:
        _empty(ax, "no tile loaded")
    ax.set_title(f"{len(tiles)} loaded tiles by program (RA, Dec; Mollweide)", fontsize=10,
                 pad=14)
    _save(fig, path)


def _night(n):
    from datetime import date
    s = str(n)
    return date(int(s[:4]), int(s[4:6]), int(s[6:8]))


def plot_nights(tiles, path):
    """Tiles per LASTNIGHT (bars, by program) and their running total."""
    from collections import Counter
    fig = _figure(10, 3.6)
    ax = fig.add_subplot()
    nights = sorted({t["lastnight"] for t in tiles if t["lastnight"]})
    try:
        days = {n: _night(n) for n in nights}
    except ValueError:  # not YYYYMMDD: plot against the raw numbers
        days = {n: n for n in nights}
    if not nights:
        _empty(ax, "no tile with a LASTNIGHT")
    else:
        colours = program_colours(t["program"] or "?" for t in tiles)
        bottom = Counter()
        for program, colour in colours.items():
            per = Counter(t["lastnight"] for t in tiles
                          if (t["program"] or "?") == program and t["lastnight"])
            if not per:
                continue
            x = [days[n] for n in nights]
            h = [per[n] for n in nights]
            ax.bar(x, h, bottom=[bottom[n] for n in nights], color=colour, label=program,
                   width=0.8)
            bottom.update(per)
        ax2 = ax.twinx()
        total, running = [], 0
        for n in nights:
            running += bottom[n]
            total.append(running)
        ax2.plot([days[n] for n in nights], total, color="#333333", lw=1.2,
                 label="total")
        ax2.set_ylabel("loaded tiles, total", fontsize=8)
        ax2.set_ylim(0, max(total) * 1.1)
        ax2.tick_params(labelsize=8)
        from matplotlib.ticker import MaxNLocator
        for axis in (ax, ax2):
            axis.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(loc="upper left", fontsize=8, frameon=False)
        if not isinstance(days[nights[0]], int):
            from matplotlib import dates
            ax.xaxis.set_major_locator(dates.AutoDateLocator(minticks=2, maxticks=10))
            ax.xaxis.set_major_formatter(dates.DateFormatter("%Y-%m-%d"))
        fig.autofmt_xdate()
    ax.set_ylabel("tiles per night", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.set_title("loaded tiles by LASTNIGHT", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def stage_order(timers):
    """Every stage name in ``{run: {stage: s}}``: the pipeline's order, then the rest."""
    names = {k for t in timers.values() for k in t}
    return [s for s in STAGE_ORDER if s in names] + sorted(names - set(STAGE_ORDER))


def timings_height(runs):
    """Height (inches, at 100 dpi) of the timings plot of ``runs``."""
    return 2.0 + 0.4 * max(len(runs), 1)


def plot_timings(runs, timers, path):
    """One horizontal bar per run (newest on top), split into its stages' seconds."""
    fig = _figure(10, timings_height(runs))
    ax = fig.add_subplot()
    stages = stage_order(timers)
    timed = [run for run in runs if timers.get(run["id"])]
    if not timed:
        _empty(ax, "no run with timings")
        ax.set_yticks([])
    else:
        import matplotlib
        cmap = matplotlib.colormaps["tab10"]
        labels = [f"run {run['id']}" for run in timed]
        left = [0.0] * len(timed)
        for i, stage in enumerate(stages):
            widths = [timers[run["id"]].get(stage, 0.0) for run in timed]
            ax.barh(labels, widths, left=left, color=cmap(i % 10), label=stage, height=0.6)
            left = [a + b for a, b in zip(left, widths)]
        ax.invert_yaxis()  # newest (first) on top
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8,
                  frameon=False)
    ax.set_xlabel("seconds", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.set_title("per-stage time of the last runs (load_run.counts → timers)", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


# --- the page --------------------------------------------------------------------------

CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1100px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.4em 0; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: left; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.bad { color: #b00020; font-weight: bold; } .ok { color: #1b7a2e; font-weight: bold; }
.note { color: #555; font-size: 0.9em; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
"""


def _table(table_id, headers, rows, numeric=()):
    """An HTML table; ``rows`` are lists of values (escaped here), ``numeric`` the
    indexes of right-aligned columns."""
    out = [f'<table id="{e(table_id)}"><thead><tr>']
    out += [f'<th{" class=n" if i in numeric else ""}>{e(h)}</th>'
            for i, h in enumerate(headers)]
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>" + "".join(f'<td{" class=n" if i in numeric else ""}>{e(v)}</td>'
                                    for i, v in enumerate(row)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _num(n):
    return f"{n:,}" if isinstance(n, int) else ("" if n is None else str(n))


def _when(text):
    return text[:19].replace("T", " ") if text else ""


def render(r):
    """The page (a str) of a report from :func:`collect`."""
    tiles = r["tiles"]
    pend = tiles["pending"]
    failed = tiles["failed"]
    head = (f"{tiles['loaded']} tile(s) loaded, {len(failed)} failed, "
            + (f"{len(pend)} pending" if pend is not None else "pending unknown"))
    p = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
         f"<title>specprod-db: {e(r['schema'])}</title>",
         f"<style>{CSS}</style></head><body>",
         f"<h1>specprod-db: schema {e(r['schema'])}</h1>",
         f'<p id="summary" class="{"ok" if r["ok"] else "bad"}">{e(head)}</p>',
         f'<p class="note">made {e(_when(r["checked_at"]))} UTC by specprod-db report; '
         f"schema size {e(status._size(r['size_bytes']))}</p>"]

    last = r["last_run"]
    p.append("<h2>Sky</h2>")
    p.append(f'<img id="sky" src="{SKY_PNG}" alt="sky map of the loaded tiles" '
             f'width="1000" height="560">')
    p.append("<h2>Tiles changed in the last run"
             + (f" (run {e(last)})" if last is not None else "") + "</h2>")
    if last is None:
        p.append('<p class="note">no load run yet</p>')
    elif not r["changed"]:
        p.append('<p class="note">the last run changed no tile</p>')
    else:
        p.append(_table("changed", ["tileid", "action", "outcome", "reason", "error"],
                        [[c["tileid"], c["action"], c["outcome"], c["reason"],
                          c["error"] if c["error"] != c["reason"] else "(the reason)"]
                         for c in r["changed"]]))
        gone = sorted({c["tileid"] for c in r["changed"]} - {t["tileid"] for t in r["sky"]})
        if gone:
            p.append(f'<p class="note">not on the map (not in the tile table): '
                     f'{e(", ".join(map(str, gone)))}</p>')

    p.append("<h2>Failed tiles</h2>")
    if failed:
        p.append(_table("failed", ["tileid", "status", "since", "run", "older load kept",
                                   "error"],
                        [[f["tileid"], f["status"], _when(f["since"]), f["run_id"],
                          "yes" if f["holds_rows"] else "no", f["error"]] for f in failed]))
    else:
        p.append('<p id="failed-none" class="ok">none</p>')

    p.append("<h2>Pending tiles (what the next load would do)</h2>")
    if pend is None:
        p.append(f'<p id="pending-unknown" class="bad">unknown: '
                 f"{e(tiles['pending_error'])}</p>")
    elif pend:
        p.append(_table("pending", ["tileid", "action", "reason"],
                        [[x["tileid"], x["action"], x["reason"]] for x in pend]))
    else:
        p.append('<p id="pending-none" class="ok">none: the database is in step with '
                 "the tiles file</p>")

    p.append("<h2>Tiles per night</h2>")
    p.append(f'<img id="nights" src="{NIGHTS_PNG}" alt="loaded tiles per night" '
             f'width="1000" height="360">')
    p.append(_table("programs", ["survey", "program", "tiles"],
                    [[x["survey"], x["program"], _num(x["tiles"])]
                     for x in tiles["by_survey_program"]], numeric=(2,)))

    p.append("<h2>Rows per table</h2>")
    p.append(_table("tables", ["table", "rows", "size", "last analysed"],
                    [[t["table"], ("" if t["exact"] else "~") + _num(t["rows"]),
                      status._size(t["bytes"]), _when(t["last_analyzed"]) or "never"]
                     for t in r["tables"]], numeric=(1, 2)))
    p.append('<p class="note">~: the planner\'s estimate (pg_class.reltuples) for tables '
             f"over {status.EXACT_COUNT_LIMIT:,} rows</p>")

    p.append("<h2>Last runs</h2>")
    stages = stage_order(r["timers"])
    p.append(_table("runs", ["run", "started", "seconds", "outcome", "rows written",
                             "failed", *stages],
                    [[run["id"], _when(run["started"]),
                      "" if run["seconds"] is None else f"{run['seconds']:.1f}",
                      run["outcome"], _num(run["rows_written"]), run["failed"],
                      *(f"{r['timers'].get(run['id'], {})[s]:.2f}"
                        if s in r["timers"].get(run["id"], {}) else "" for s in stages)]
                     for run in r["runs"]], numeric=(0, 2, 4, 5, *range(6, 6 + len(stages)))))
    height = int(round(100 * timings_height(r["runs"])))
    p.append(f'<img id="timings" src="{TIMINGS_PNG}" alt="per-stage time of the last runs" '
             f'width="1000" height="{height}">')

    p.append("<h2>q3c indexes</h2>")
    p.append(f"<p>{e(', '.join(i['table'] for i in r['q3c_indexes']) or 'none')}</p>")
    if r["q3c_missing"]:
        p.append(f'<p class="bad">missing: {e(", ".join(r["q3c_missing"]))}</p>')
    p.append("</body></html>")
    return "\n".join(p) + "\n"


def write(conn, schema_name, outdir, plan_options=None, plan_error=None):
    """Make ``outdir/index.html`` and its PNGs (the page last, by rename, so it never
    names an image not yet written); returns the report from :func:`collect`."""
    r = collect(conn, schema_name, plan_options, plan_error)
    os.makedirs(outdir, exist_ok=True)
    plot_sky(r["sky"], {c["tileid"] for c in r["changed"]}, os.path.join(outdir, SKY_PNG))
    plot_nights(r["sky"], os.path.join(outdir, NIGHTS_PNG))
    plot_timings(r["runs"], r["timers"], os.path.join(outdir, TIMINGS_PNG))
    index = os.path.join(outdir, INDEX)
    with open(index + ".tmp", "w", encoding="utf-8") as f:
        f.write(render(r))
    os.replace(index + ".tmp", index)
    r["written_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return r
