"""``specprod-db maintain``: VACUUM ANALYZE every table, CLUSTER on q3c where it pays.

Per table of the schema, in order:

1. *measure* the dead rows left by the loads' deletes and updates
   (``pg_stat_user_tables``: ``n_dead_tup / (n_live_tup + n_dead_tup)``) and the pages;
2. ``VACUUM (ANALYZE)``: dead rows' space made reusable, statistics fresh, the
   visibility map set (index-only scans).  Lock: ``SHARE UPDATE EXCLUSIVE`` on the
   table for the whole VACUUM; readers (``SELECT``, ``ACCESS SHARE``) and the loader's
   writes (``ROW EXCLUSIVE``) go on beside it; only DDL, another VACUUM and CLUSTER wait;
3. for the tables with a q3c index (``tile``, ``exposure``, ``photometry``,
   ``fiberassign``): read the physical order of the rows along the index,
   ``pg_stats.correlation`` of the index expression (the ANALYZE just made), and decide;
4. ``CLUSTER ... USING ix_{table}_q3c_ang2ipix`` then ``ANALYZE``, when decided.  Lock:
   ``ACCESS EXCLUSIVE`` on the table for the whole rewrite (table and every index
   rebuilt): readers of that table wait until it ends, and a reader's long query makes
   the CLUSTER wait, and every reader arriving after it queue behind it; so CLUSTER
   waits at most ``lock_timeout`` (default 30 s) for its lock and skips the table
   (reported, exit 1) rather than queue readers behind it.

With ``--cluster never`` only step 2 takes locks: safe beside readers and loads.  With
``auto`` (the default) a table is clustered when it is not small
(``pages > MIN_PAGES``) and its rows are out of q3c order (``|correlation| <
MIN_CORRELATION``) or bloated (``dead fraction > MAX_DEAD_FRACTION``); ``always``
clusters every q3c table.  The figures behind the thresholds: doc/maintenance.md.

CLUSTER takes the schema's load lock (:mod:`specprod_db.db.lock`) so that no load writes
while a table is rewritten: with a load running, ``auto``/``always`` are refused (exit 2).
"""
import time

from psycopg2 import errors, sql

from specprod_db.db import ddl
from specprod_db.db.connect import schema_exists
from specprod_db.db.lock import acquire_lock
from specprod_db.db.sql import qualified, reading
from specprod_db.errors import RunRefused
from specprod_db.schema import TABLES

#: auto: a table of at most this many 8 kB pages is never clustered (a cone search then
#: reads the whole table in one or two reads whatever the order).
MIN_PAGES = 8
#: auto: cluster when ``|pg_stats.correlation|`` of the q3c index expression is below this.
MIN_CORRELATION = 0.9
#: auto: cluster when dead rows are more than this fraction of the rows (a rewrite
#: compacts the table; VACUUM alone leaves holes the next loads fill out of q3c order).
MAX_DEAD_FRACTION = 0.2
#: How long CLUSTER waits for its ACCESS EXCLUSIVE lock before skipping the table.
LOCK_TIMEOUT = 30

CLUSTER_MODES = ("auto", "always", "never")


def q3c_index(table):
    return f"ix_{table.name}_q3c_ang2ipix" if table.q3c else None


def _figures(cur, schema_name, name):
    """pages, live rows, dead rows of a table (pg_class, pg_stat_user_tables)."""
    cur.execute("""SELECT c.relpages, s.n_live_tup, s.n_dead_tup
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
                   WHERE n.nspname = %s AND c.relname = %s""", (schema_name, name))
    pages, live, dead = cur.fetchone()
    return pages, live or 0, dead or 0


def correlation(cur, schema_name, index_name):
    """pg_stats.correlation of a q3c expression index's column (from the last ANALYZE
    of its table), or None when not analysed yet."""
    cur.execute("SELECT correlation FROM pg_stats WHERE schemaname = %s AND tablename = %s",
                (schema_name, index_name))
    row = cur.fetchone()
    return None if row is None or row[0] is None else round(float(row[0]), 4)


def decide(mode, pages, corr, dead_fraction):
    """``(cluster, reason)`` for a table with a q3c index."""
    if mode == "never":
        return False, "--cluster never"
    if mode == "always":
        return True, "--cluster always"
    if pages <= MIN_PAGES:
        return False, f"small: {pages} pages <= {MIN_PAGES}"
    reasons = []
    if corr is None:
        reasons.append("no q3c order measured")
    elif abs(corr) < MIN_CORRELATION:
        reasons.append(f"out of q3c order: |correlation| {abs(corr):.2f} < "
                       f"{MIN_CORRELATION}")
    if dead_fraction > MAX_DEAD_FRACTION:
        reasons.append(f"bloated: dead rows {dead_fraction:.0%} > {MAX_DEAD_FRACTION:.0%}")
    if reasons:
        return True, "; ".join(reasons)
    return False, (f"in q3c order: |correlation| {abs(corr):.2f} >= {MIN_CORRELATION}, "
                   f"dead rows {dead_fraction:.0%} <= {MAX_DEAD_FRACTION:.0%}")


def maintain(conn, schema_name, cluster="auto", lock_timeout=LOCK_TIMEOUT, log=None):
    """Run the maintenance (module docstring); ``conn`` is switched to autocommit (VACUUM
    runs outside a transaction).  Returns the report: ``{"schema", "cluster", "thresholds",
    "tables": [...], "ok"}``, one entry per table: ``table``, ``dead_rows`` and
    ``dead_fraction`` (before VACUUM), ``vacuum_seconds``, ``pages`` and ``rows`` (after
    it), and for the q3c tables ``q3c_index``, ``correlation`` (after VACUUM ANALYZE), ``clustered`` (bool),
    ``reason``, ``cluster_seconds``, ``correlation_after``, ``pages_after``."""
    if cluster not in CLUSTER_MODES:
        raise ValueError(f"cluster must be one of {CLUSTER_MODES}")
    with reading(conn):
        exists = schema_exists(conn, schema_name)
    if not exists:
        raise RunRefused(f"schema {schema_name} does not exist")
    conn.autocommit = True
    if cluster != "never":
        acquire_lock(conn, schema_name)  # no load writes while a table is rewritten
    report = {"schema": schema_name, "cluster": cluster,
              "thresholds": {"min_pages": MIN_PAGES, "min_correlation": MIN_CORRELATION,
                             "max_dead_fraction": MAX_DEAD_FRACTION,
                             "lock_timeout_s": lock_timeout},
              "tables": [], "ok": True}
    with conn.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema_name,))
        present = {r[0] for r in cur.fetchall()}
        for table in TABLES:
            if table.name not in present:
                continue
            target = qualified(schema_name, table.name)
            _, live, dead = _figures(cur, schema_name, table.name)
            entry = {"table": table.name, "dead_rows": dead,
                     "dead_fraction": round(dead / (live + dead), 4) if live + dead else 0.0}
            t0 = time.monotonic()
            cur.execute(sql.SQL("VACUUM (ANALYZE) {}").format(target))
            entry["vacuum_seconds"] = round(time.monotonic() - t0, 3)
            entry["pages"], entry["rows"], _ = _figures(cur, schema_name, table.name)
            index = q3c_index(table)
            if index:
                entry["q3c_index"] = index
                entry["correlation"] = correlation(cur, schema_name, index)
                do, reason = decide(cluster, entry["pages"], entry["correlation"],
                                    entry["dead_fraction"])
                entry.update(clustered=False, reason=reason)
                if do:
                    _cluster(cur, conn, schema_name, table, entry, lock_timeout)
                    report["ok"] &= entry["clustered"]
            report["tables"].append(entry)
            if log:
                log(entry)
    return report


def _cluster(cur, conn, schema_name, table, entry, lock_timeout):
    cur.execute("SELECT set_config('lock_timeout', %s, false)", (f"{int(lock_timeout * 1000)}",))
    t0 = time.monotonic()
    try:
        ddl.cluster_q3c(conn, schema_name, tables=[table.name])
    except errors.LockNotAvailable:
        entry["reason"] += (f"; CLUSTER skipped: ACCESS EXCLUSIVE lock not obtained within "
                            f"{lock_timeout} s (a reader or writer holds the table)")
        return
    finally:
        cur.execute("SELECT set_config('lock_timeout', '0', false)")
    entry["cluster_seconds"] = round(time.monotonic() - t0, 3)
    cur.execute(sql.SQL("ANALYZE {}").format(qualified(schema_name, table.name)))
    entry["clustered"] = True
    entry["correlation_after"] = correlation(cur, schema_name, entry["q3c_index"])
    entry["pages_after"] = _figures(cur, schema_name, table.name)[0]


def format_text(report):
    """The report as a table, one line per table."""
    lines = [f"schema {report['schema']}: VACUUM ANALYZE of every table; CLUSTER on q3c: "
             f"{report['cluster']}",
             f"  {'table':<13} {'pages':>8} {'rows':>10} {'dead':>6} {'vacuum s':>9} "
             f"{'corr':>6}  cluster"]
    for e in report["tables"]:
        corr = "" if e.get("correlation") is None else f"{e['correlation']:.2f}"
        line = (f"  {e['table']:<13} {e['pages']:>8} {e['rows']:>10} "
                f"{e['dead_fraction']:>6.0%} {e['vacuum_seconds']:>9.2f} {corr:>6}  ")
        if "q3c_index" in e:
            if e["clustered"]:
                line += (f"CLUSTERED in {e['cluster_seconds']:.2f} s (correlation "
                         f"{e['correlation_after']}, {e['pages_after']} pages): {e['reason']}")
            else:
                line += f"no: {e['reason']}"
        lines.append(line)
    if not report["ok"]:
        lines.append("some CLUSTER was skipped: run again when readers are few")
    return "\n".join(lines)
