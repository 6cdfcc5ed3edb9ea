"""(e) The end of an initial load on K build sessions: ``bench/run.py`` helper.

After each ``--initial`` load of (e) (its builds done on the default
``--build-connections``), for every K of ``--build-ks``: the builds the bulk path drops
(:func:`specprod_db.db.builds.bulk_builds`) are dropped again and rebuilt, timed, on K
sessions (:func:`specprod_db.db.builds.build_missing`, the load's own call; each build's
seconds kept).  The rest of the end of the load (primary flags of every row, CLUSTER,
ANALYZE) does not depend on K: it is timed once, part by part, in the load's order
(flags with the builds dropped, CLUSTER and ANALYZE after the first K's builds).  So

    end of the load (K) = builds wall on K sessions + flags + CLUSTER + ANALYZE

and the load's own ``finalize - builds`` is kept next to it for comparison.

The rebuilt schema is the one the load left (catalog-equal to ``init``; nothing else
changes but the builds' order on disk).
"""
import time


def measure(dsn, load, ks, log=print):
    """``{"tiles", "rows", "rest_s", "load_rest_s", "rest_parts", "k": {K: {...}}}`` for
    one (e) load result of ``run.run_load``.  In the load's own order: the builds
    dropped, the flags reset (untimed) and recomputed (timed), the builds on the first K
    (timed), CLUSTER and ANALYZE (timed); then the builds dropped and rebuilt on each
    other K.  ``rest_s`` = flags + CLUSTER + ANALYZE as timed here; ``load_rest_s`` = the
    load's own finalize - builds, for comparison."""
    import inspect

    import psycopg2

    from specprod_db.db import builds
    finish = "finish" in inspect.signature(builds.build_missing).parameters
    schema = load["schema"]
    t = load["timers"]
    out = {"tiles": load["tiles"], "rows": load["rows"],
           "load_builds_s": t.get("builds", 0.0),
           "load_rest_s": t.get("finalize", 0.0) - t.get("builds", 0.0), "k": {}}
    for i, k in enumerate(ks):
        conn = psycopg2.connect(dsn)
        try:
            builds.drop(conn, schema, builds.bulk_builds())
        finally:
            conn.close()
        if i == 0:
            parts = flags_timed(dsn, schema)
        steps = {}
        t0 = time.perf_counter()
        # CLUSTER and ANALYZE scheduled with the builds, as the load does, where the
        # scheduler has them (builds.finishing); else timed after the builds
        builds.build_missing(dsn, schema, None, connections=k,
                             progress=steps.__setitem__,
                             **({"finish": True} if finish else {}))
        wall = time.perf_counter() - t0
        if i == 0:
            if finish:
                for part in ("cluster", "analyze"):
                    parts[f"{part}_s"] = 0.0  # in the builds' wall (steps below)
                    parts[f"{part}_steps_s"] = sum(
                        v for n, v in steps.items() if n.startswith(part + "_"))
            else:
                parts.update(cluster_analyze_timed(dsn, schema))
            out["rest_parts"] = parts
            out["rest_s"] = parts["flags_s"] + parts["cluster_s"] + parts["analyze_s"]
            log(f"  end of the load, {load['tiles']} tiles: flags {parts['flags_s']:.1f} s "
                f"(before the builds, as the load), CLUSTER {parts['cluster_s']:.1f} s, "
                f"ANALYZE {parts['analyze_s']:.1f} s (0: on the build sessions, steps "
                f"{parts.get('cluster_steps_s', 0):.1f} + {parts.get('analyze_steps_s', 0):.1f}"
                f" s) (the load's own finalize - builds: "
                f"{out['load_rest_s']:.1f} s)")
        top = sorted(steps.items(), key=lambda kv: -kv[1])[:3]
        out["k"][str(k)] = {"builds_s": wall, "steps_sum_s": sum(steps.values()),
                            "end_s": wall + out["rest_s"], "steps": steps}
        log(f"  end of the load, {load['tiles']} tiles, K={k}: builds {wall:.1f} s wall "
            f"(sum of steps {sum(steps.values()):.1f} s; longest "
            + ", ".join(f"{n} {s:.1f}" for n, s in top)
            + f") + flags/CLUSTER/ANALYZE {out['rest_s']:.1f} s")
    return out


def flags_timed(dsn, schema):
    """The primary flags of every ztile and zpix row, timed, after resetting them to
    what the bulk COPY writes (0 and false; untimed), so that every row is rewritten as
    in the load; the builds are dropped at that point, as in the load."""
    import psycopg2
    from psycopg2 import sql

    from specprod_db.load import finalize
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            for z in ("ztile", "zpix"):
                cur.execute(sql.SQL("UPDATE {} SET ({}) = ({})").format(
                    sql.Identifier(schema, z),
                    sql.SQL(", ").join(map(sql.Identifier, finalize.FLAG_COLUMNS)),
                    sql.SQL(", ").join(sql.SQL("0" if c.endswith("nspec") else "false")
                                       for c in finalize.FLAG_COLUMNS)))
        conn.commit()
        conn.autocommit = True
        with conn.cursor() as cur:  # the reset's dead rows, not the load's
            cur.execute(sql.SQL("VACUUM {}").format(sql.Identifier(schema, "ztile")))
        conn.autocommit = False
        t = time.perf_counter()
        finalize.update_primary(conn, schema)
        finalize.update_primary(conn, schema, redshifts="zpix")
        conn.commit()
        return {"flags_s": time.perf_counter() - t}
    finally:
        conn.close()


def cluster_analyze_timed(dsn, schema):
    """CLUSTER on the q3c indexes (``ddl.cluster_q3c``) and ANALYZE of every table,
    each timed, as the load does them after the builds."""
    import psycopg2

    from specprod_db import schema as tables
    from specprod_db.db import ddl
    from specprod_db.load import finalize
    conn = psycopg2.connect(dsn)
    try:
        t = time.perf_counter()
        ddl.cluster_q3c(conn, schema)
        conn.commit()
        out = {"cluster_s": time.perf_counter() - t}
        t = time.perf_counter()
        finalize.analyze(conn, schema, [x.name for x in tables.TABLES])
        conn.commit()
        out["analyze_s"] = time.perf_counter() - t
        return out
    finally:
        conn.close()


def growth(end_of_load, k):
    """(sizes, seconds, seconds per tile of the slope) of the end of the load at K."""
    sizes = sorted(end_of_load, key=int)
    secs = [end_of_load[s]["k"][str(k)]["end_s"] for s in sizes]
    if len(sizes) < 2:
        return sizes, secs, None
    slope = (secs[-1] - secs[0]) / (int(sizes[-1]) - int(sizes[0]))
    return sizes, secs, slope
