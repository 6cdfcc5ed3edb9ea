"""``specprod-db status``: what a schema holds, what failed, what the next load would do.

Reads only.  :func:`collect` returns the report (its keys are documented in
``doc/status.md``), :func:`format_text` renders it for an 80-column terminal.  The
pending tiles are the plan of the next load, made by the loader's own planner
(:func:`specprod_db.load.prepare.plan_run`, as ``specprod-db plan`` does): every action but
UNCHANGED and the SKIP of a tile that is not loaded.
"""
import json
from datetime import datetime, timezone

from psycopg2 import sql

from specprod_db import schema
from specprod_db.db import builds
from specprod_db.db.sql import qualified
from specprod_db.errors import SpecprodDBError, one_line
from specprod_db.db.lock import LOCK_NAMESPACE, lock_key

#: Tables with more rows than this (``pg_class.reltuples``) are not counted exactly.
EXACT_COUNT_LIMIT = 1_000_000

#: Load runs shown.
RUNS = 5

FAILED_STATUSES = ("failed", "internal_error")


def _fetch(conn, statement, args=None):
    with conn.cursor() as cur:
        cur.execute(statement, args)
        return cur.fetchall()


def _iso(value):
    return value.isoformat() if value is not None else None


def pending(opts):
    """``(actions, None)``: the pending actions of the next load planned with ``opts``
    (a :class:`specprod_db.load.prepare.Options`), as dicts; or ``(None, why)`` when they
    cannot be known (tiles file unreachable, a load running ...)."""
    from specprod_db.load import prepare
    from specprod_db.load.plan import SKIP, UNCHANGED, holds_rows
    from specprod_db.load.tally import Tally
    session = None
    try:
        session = prepare.open_session(opts)
        plan = prepare.plan_run(session.conn, opts, Tally())
    except SpecprodDBError as err:
        return None, one_line(err)
    finally:
        if session is not None:
            session.close()
    out = []
    for a in plan.actions:
        held = holds_rows(plan.state.get(a.tileid))
        if a.action == UNCHANGED or (a.action == SKIP and not held):
            continue
        out.append({"tileid": a.tileid, "action": a.action, "reason": a.reason})
    return out, None


def collect(conn, schema_name, plan_options=None, plan_error=None):
    """The status report of ``schema_name`` (a dict).  ``plan_options``: how to plan the
    next load (None with ``plan_error`` saying why it cannot be planned)."""
    q = lambda name: qualified(schema_name, name)  # noqa: E731
    report = {"schema": schema_name,
              "checked_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    by_sp = _fetch(conn, sql.SQL("SELECT survey, program, count(*) FROM {} GROUP BY 1, 2 "
                                 "ORDER BY 1, 2").format(q("tile")))
    failed = _fetch(conn, sql.SQL("""
        SELECT s.tileid, s.status, s.error, s.run_id, s.loaded_at, t.tileid IS NOT NULL,
               (SELECT min(h.at) FROM {h} h WHERE h.tileid = s.tileid
                  AND h.outcome IN ('failed', 'internal_error')
                  AND h.id > COALESCE((SELECT max(g.id) FROM {h} g WHERE g.tileid = s.tileid
                      AND g.outcome NOT IN ('failed', 'internal_error')), 0))
        FROM {s} s LEFT JOIN {t} t ON t.tileid = s.tileid
        WHERE s.status IN ('failed', 'internal_error') ORDER BY s.tileid""").format(
        h=q("tile_history"), s=q("tile_state"), t=q("tile")))
    conn.rollback()
    if plan_options is not None:
        actions, plan_error = pending(plan_options)
    else:
        actions = None
    report["tiles"] = {
        "loaded": sum(n for _, _, n in by_sp),
        "by_survey_program": [{"survey": s, "program": p, "tiles": n} for s, p, n in by_sp],
        "failed": [{"tileid": t, "status": st, "error": e, "run_id": r,
                    "since": _iso(first or last), "holds_rows": holds}
                   for t, st, e, r, last, holds, first in failed],
        "pending": actions,
        "pending_error": plan_error,
    }
    report["runs"] = _runs(conn, schema_name)
    report["tables"], report["size_bytes"] = _tables(conn, schema_name)
    present = {r[0]: r[1] for r in _fetch(
        conn, "SELECT indexname, tablename FROM pg_indexes WHERE schemaname = %s AND "
              "indexdef ILIKE %s ORDER BY tablename, indexname", (schema_name, "%q3c%"))}
    report["q3c_indexes"] = [{"table": t, "index": i} for i, t in present.items()]
    report["q3c_missing"] = [f"ix_{t.name}_q3c_ang2ipix" for t in schema.TABLES
                             if t.q3c and f"ix_{t.name}_q3c_ang2ipix" not in present]
    conn.rollback()
    with conn.cursor() as cur:  # an initial load that stopped before its builds ended
        lacking = builds.unfinished(cur, schema_name)
    conn.rollback()
    report["unfinished_initial_load"] = None if not lacking else {
        "missing": lacking, "finish": builds.finish_command(schema_name),
        "message": builds.unfinished_message(schema_name, lacking)}
    report["ok"] = not report["tiles"]["failed"] and actions == [] and not lacking
    return report


def _runs(conn, schema_name):
    running = _fetch(conn, "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = "
                           "'advisory' AND classid = %s AND objid = %s AND granted)",
                     (LOCK_NAMESPACE, lock_key(schema_name)))[0][0]
    rows = _fetch(conn, sql.SQL("SELECT id, started, finished, outcome, command, counts FROM "
                                "{} ORDER BY id DESC LIMIT %s").format(
        qualified(schema_name, "load_run")), (RUNS,))
    out = []
    for i, (rid, started, finished, outcome, command, counts) in enumerate(rows):
        try:
            counts = json.loads(counts) if counts else {}
        except ValueError:
            counts = {}
        tables = counts.get("tables") or {}
        if outcome is None:
            outcome = "running" if running and i == 0 else "unfinished"
        out.append({"id": rid, "started": _iso(started), "finished": _iso(finished),
                    "seconds": round((finished - started).total_seconds(), 1)
                    if finished else None,
                    "outcome": outcome, "command": command,
                    "rows_written": sum(v for v in tables.values()
                                        if isinstance(v, int)) if counts else None,
                    "tables": tables,
                    "failed": len(counts.get("failed") or {})
                    + len(counts.get("internal_errors") or {})})
    return out


def _tables(conn, schema_name):
    rows = _fetch(conn, """
        SELECT c.relname, c.reltuples::bigint, pg_total_relation_size(c.oid),
               greatest(s.last_analyze, s.last_autoanalyze)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
        WHERE n.nspname = %s AND c.relkind IN ('r', 'p') ORDER BY c.relname""",
                  (schema_name,))
    out, total = [], 0
    for name, estimate, size, analysed in rows:
        exact = estimate < EXACT_COUNT_LIMIT  # -1: never analysed
        if exact:
            n = _fetch(conn, sql.SQL("SELECT count(*) FROM {}").format(
                qualified(schema_name, name)))[0][0]
        else:
            n = estimate
        total += size
        out.append({"table": name, "rows": n, "exact": exact, "bytes": size,
                    "last_analyzed": _iso(analysed)})
    conn.rollback()
    return out, total


# --- text ------------------------------------------------------------------------------

WIDTH = 80


def _fit(line, width=WIDTH):
    return line if len(line) <= width else line[:width - 3] + "..."


def _size(n):
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _when(text):
    return text[:16].replace("T", " ") if text else "never"


def format_text(r):
    """The report in lines of at most 80 characters."""
    tiles = r["tiles"]
    pend = tiles["pending"]
    head = (f"schema {r['schema']}: {tiles['loaded']} tile(s) loaded, "
            f"{len(tiles['failed'])} failed, "
            + (f"{len(pend)} pending" if pend is not None else "pending unknown"))
    lines = [head, f"checked {_when(r['checked_at'])} UTC", ""]
    if r.get("unfinished_initial_load"):
        u = r["unfinished_initial_load"]
        lines += [f"UNFINISHED INITIAL LOAD: {len(u['missing'])} key(s)/index(es) missing;",
                  _fit(f"  finish it with `{u['finish']}`"), ""]
    lines.append("tiles loaded by survey and program:")
    lines += [f"  {x['survey']:<12} {x['program']:<10} {x['tiles']:>8}"
              for x in tiles["by_survey_program"]] or ["  none"]
    if tiles["failed"]:
        lines += ["", f"FAILED tiles ({len(tiles['failed'])}):"]
        for f in tiles["failed"]:
            lines.append(f"  {f['tileid']:>7} {f['status']:<15} since {_when(f['since'])}"
                         f"  run {f['run_id']}"
                         + ("  (older load kept)" if f["holds_rows"] else ""))
            lines.append(_fit(f"          {f['error'] or ''}"))
    lines.append("")
    if pend is None:
        lines.append(_fit(f"PENDING tiles unknown: {tiles['pending_error']}"))
    elif pend:
        lines.append(f"PENDING tiles ({len(pend)}), what the next load would do:")
        lines += [_fit(f"  {p['tileid']:>7} {p['action']:<8} {p['reason']}") for p in pend]
    else:
        lines.append("pending tiles: none (the database is in step with the tiles file)")
    lines += ["", "last load runs:",
              f"  {'id':>6}  {'started':<16}  {'time':>8}  {'outcome':<14} {'rows':>12}"]
    for run in r["runs"]:
        t = f"{run['seconds']:.1f} s" if run["seconds"] is not None else "-"
        rows = f"{run['rows_written']:,}" if run["rows_written"] is not None else "-"
        lines.append(_fit(f"  {run['id']:>6}  {_when(run['started']):<16}  {t:>8}  "
                          f"{run['outcome']:<14} {rows:>12}"))
    if not r["runs"]:
        lines.append("  none")
    lines += ["", f"  {'table':<14} {'rows':>15}  {'size':>10}  last analysed",
              ]
    for t in r["tables"]:
        n = f"{t['rows']:,}" if t["exact"] else f"~{t['rows']:,}"
        lines.append(_fit(f"  {t['table']:<14} {n:>15}  {_size(t['bytes']):>10}  "
                          f"{_when(t['last_analyzed'])}"))
    lines.append(f"  schema size {_size(r['size_bytes'])} (tables, indexes, TOAST); "
                 f"~ = estimate")
    lines.append("")
    lines.append(_fit("q3c indexes: " + (", ".join(i["table"] for i in r["q3c_indexes"])
                                         or "none")))
    if r["q3c_missing"]:
        lines.append(_fit("q3c indexes MISSING: " + ", ".join(r["q3c_missing"])))
    return "\n".join(lines)
