"""A load run's record: its ``load_run`` row, the counts kept there, its report.

``start`` inserts the row (and marks an unfinished earlier one ``interrupted``: the
caller holds the schema's lock, so an unfinished run is one that crashed), with the
run's options as JSON, among them ``tiles_file``: the tiles file read, as given and
resolved (it may be a symbolic link), its size and SHA-256; ``finish``
fills in the outcome and the counts (:func:`summary_counts`); :func:`report_lines` is
what the load prints at the end.  Command lines and options are stored with any
password masked (:mod:`specprod_db.conninfo`).
"""
import json
import os
import sys
import time
from typing import TYPE_CHECKING

from psycopg2 import sql
from psycopg2.extensions import connection

from specprod_db import conninfo
from specprod_db.db.sql import fetch_one, qualified, transaction
from specprod_db.load.plan import DELETE, INSERT, REFRESH, UNCHANGED, UPDATE, summary

if TYPE_CHECKING:  # annotations only: prepare imports this module
    from specprod_db.load.prepare import Plan
    from specprod_db.load.tally import Tally


def start(conn: connection, schema_name: str, ranks: int, command: str,
          options: dict) -> int:
    """Insert the run's ``load_run`` row; returns its id."""
    table = qualified(schema_name, "load_run")
    with transaction(conn) as cur:
        cur.execute(sql.SQL("UPDATE {} SET outcome = 'interrupted' WHERE finished IS NULL "
                            "AND outcome IS NULL").format(table))
        cur.execute(sql.SQL("INSERT INTO {} (started, ranks, command, options) VALUES "
                            "(now(), %s, %s, %s) RETURNING id").format(table),
                    (ranks, " ".join(conninfo.mask_argv(sys.argv)) or command,
                     conninfo.mask(json.dumps(options))))
        return fetch_one(cur)[0]


def finish(conn: connection, schema_name: str, run_id: int, outcome: str,
           counts: dict) -> None:
    """Record the run's end, ``outcome`` and ``counts``."""
    with transaction(conn, fresh=True) as cur:
        cur.execute(sql.SQL("UPDATE {} SET finished = now(), outcome = %s, counts = %s "
                            "WHERE id = %s").format(qualified(schema_name, "load_run")),
                    (outcome, json.dumps(counts, default=str), run_id))


def summary_counts(plan: "Plan", tally: "Tally") -> dict:
    """``load_tally.counts`` of a run: plan, tables, warnings, timers, failures (bad input
    and internal errors apart; HEALPix files' under ``healpix``), bad lines, ranks."""
    counts = dict(tally.counts, plan=summary(plan.actions), timers=tally.timers,
                  failed={str(t): f.message for t, f in tally.failures.items()
                          if not f.internal},
                  internal_errors={str(t): f.message for t, f in tally.failures.items()
                                   if f.internal},
                  bad_lines=plan.bad_lines)
    if "healpix" in counts:
        counts["healpix"] = dict(counts["healpix"], failed={
            n: f.message for n, f in tally.healpix_failures.items()})
    return counts


def tiles_file_line(info: dict) -> str:
    """The report's line of the tiles file read (``load_run.options → tiles_file``):
    path as given, resolved path when it differs, size, SHA-256."""
    where = info["path"]
    if info.get("resolved") and info["resolved"] != os.path.abspath(info["path"]):
        where += f" -> {info['resolved']}"
    return f"  tiles file: {where} ({info['size']} bytes, sha256 {info['sha256']})"


def report_lines(run_id: int, plan: "Plan", tally: "Tally") -> list[str]:
    """The run's report: plan, rows, timings, ranks, warnings, failures."""
    plan_counts = summary(plan.actions)
    lines = [f"load run {run_id} finished in {time.time() - tally.t0:.1f} s",
             "  plan: " + ", ".join(f"{k} {v}" for k, v in sorted(plan_counts.items())),
             "  rows written:"]
    lines += [f"    {k:<28} {v:>10}" for k, v in sorted(tally.counts["tables"].items())]
    lines += ["  timing:"] + [f"    {k:<28} {v:>9.2f} s" for k, v in tally.timers.items()]
    tf = plan.tiles_file
    if tf:
        lines.append(tiles_file_line(tf))
    ranks = tally.counts.get("ranks")
    if ranks:
        busy = ranks["busy_seconds"]
        lines.append("  ranks busy (s): " + ", ".join(f"{r}: {t:.1f}" for r, t in
                                                      busy.items())
                     + f"; balance max/mean {ranks['balance_max_over_mean']:.2f}")
        if ranks["write_seconds"]:
            lines.append(f"  write time with workers extracting: "
                         f"{ranks['write_seconds_with_workers_busy']:.1f} of "
                         f"{ranks['write_seconds']:.1f} s")
    if tally.counts["warnings"]:
        lines.append("  warnings: " + ", ".join(
            f"{k} {v}" for k, v in sorted(tally.counts["warnings"].items())))
    cat = tally.counts.get("catalogs")
    if cat:
        lines.append(f"  targeting catalogs: {cat['files_opened']} files opened for "
                     f"{cat['tile_reads']} reads tile by tile ({cat['reads_saved']} saved)")
    healpix = tally.counts.get("healpix")
    if healpix:
        lines.append(f"  HEALPix files: {healpix['files']}, {healpix['already_loaded']} "
                     f"loaded before, {healpix['written']} written, "
                     f"{len(tally.healpix_failures)} failed")
    if not any(plan_counts.get(k) for k in (INSERT, UPDATE, DELETE, REFRESH)) \
            and not tally.failures and not (healpix and healpix["written"]):
        lines.append(f"  nothing to do: {plan_counts.get(UNCHANGED, 0)} tile(s) "
                     f"unchanged, the database is not changed")
    if plan.bad_lines:
        lines.append(f"  tiles file damaged: {plan.bad_lines} bad line(s); deletes "
                     f"suspended")
    for internal, title in ((False, "FAILED tiles (bad input)"),
                            (True, "INTERNAL ERRORS (a bug: see the traceback logged "
                                   "by the rank that raised)")):
        failed = sorted((t, f) for t, f in tally.failures.items()
                        if f.internal == internal)
        if failed:
            lines.append(f"  {title} ({len(failed)}):")
            lines += [f"    {t}: {f.message}" for t, f in failed]
    if tally.healpix_failures:
        lines.append(f"  FAILED HEALPix files ({len(tally.healpix_failures)}):")
        lines += [f"    {n}: {f.message}" for n, f in sorted(tally.healpix_failures.items())]
    return lines
