"""(e) The end of an initial load on K build sessions: ``bench/run.py`` helper.

After each ``--initial`` load of (e) (its end done on the default
``--build-connections``), for every K of ``--build-ks``: the builds the bulk path drops
(:func:`specprod_db.db.builds.bulk_builds`) are dropped again, the primary flags reset
to what the bulk COPY writes (each row flagged as its TARGETID's only one; untimed, then
VACUUM), and the whole end of the load redone, timed, on K sessions as the load does it
(:func:`specprod_db.db.build_scheduler.build_missing` with ``finish`` and the load's flag parts,
:func:`specprod_db.load.finish.flag_parts`: ztile's flags in K parts, each table's
before its builds; CLUSTER and ANALYZE), each step's seconds kept.  So

    end of the load (K) = the scheduler's wall on K sessions

and the load's own ``finalize`` is kept next to it for comparison.  Where the scheduler
has no flag steps (an older version), the flags are timed alone first, as that version
ran them, and added.

The rebuilt schema is the one the load left (catalog-equal to ``init``; nothing else
changes but the builds' order on disk).
"""
import time


def measure(dsn, load, ks, log=print):
    """``{"tiles", "rows", "rest_s", "load_rest_s", "rest_parts", "k": {K: {...}}}`` for
    one (e) load result of ``run.run_load``.  ``rest_s``: what ran outside the
    scheduler (0 when the flags are its steps); ``rest_parts``: flags, CLUSTER and
    ANALYZE seconds (sums of their steps at the first K); ``load_rest_s`` = the load's
    own finalize - builds, for comparison."""
    import inspect

    import psycopg2

    from specprod_db.db import build_scheduler, builds
    params = inspect.signature(build_scheduler.build_missing).parameters
    finish, in_steps = "finish" in params, "first" in params
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
        reset_flags(dsn, schema)
        extra = {}
        if in_steps:
            from specprod_db.load.finish import flag_parts
            extra = {"finish": True, "first": flag_parts(schema, k)}
            parts = {"flags_s": 0.0}
        else:
            parts = flags_timed(dsn, schema)
            if finish:
                extra = {"finish": True}
        steps = {}
        t0 = time.perf_counter()
        build_scheduler.build_missing(dsn, schema, None, connections=k, progress=steps.__setitem__,
                                      **extra)
        wall = time.perf_counter() - t0
        if not finish:
            parts.update(cluster_analyze_timed(dsn, schema))
            wall += parts["cluster_s"] + parts["analyze_s"]
        for part, prefix in (("flags", "first_"), ("cluster", "cluster_"),
                             ("analyze", "analyze_")):
            parts[f"{part}_steps_s"] = sum(v for n, v in steps.items()
                                           if n.startswith(prefix))
            parts.setdefault(f"{part}_s", 0.0)
        parts["flags_in_steps"] = in_steps
        rest = 0.0 if in_steps else parts["flags_s"]
        if i == 0:
            out["rest_parts"] = parts
            out["rest_s"] = rest
            log(f"  end of the load, {load['tiles']} tiles: steps of flags "
                f"{parts['flags_steps_s']:.1f} s, CLUSTER {parts['cluster_steps_s']:.1f} s, "
                f"ANALYZE {parts['analyze_steps_s']:.1f} s"
                + ("" if in_steps else f"; flags alone before {parts['flags_s']:.1f} s")
                + f" (the load's own finalize - builds: {out['load_rest_s']:.1f} s)")
        top = sorted(steps.items(), key=lambda kv: -kv[1])[:3]
        out["k"][str(k)] = {"builds_s": wall, "steps_sum_s": sum(steps.values()),
                            "end_s": wall + rest, "steps": steps}
        log(f"  end of the load, {load['tiles']} tiles, K={k}: {wall:.1f} s wall "
            f"(sum of steps {sum(steps.values()):.1f} s; longest "
            + ", ".join(f"{n} {s:.1f}" for n, s in top) + ")"
            + ("" if in_steps else f" + flags {rest:.1f} s"))
    return out


def reset_flags(dsn, schema):
    """The primary flags of every ztile and zpix row set to what the bulk COPY writes
    (:func:`specprod_db.schema.single_spectrum_flags`: each row staged as if its
    TARGETID's only one), then VACUUM (the reset's dead rows are not the load's);
    untimed."""
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
                    sql.SQL(", ").join(finalize.single_flags_sql()[c]
                                       for c in finalize.FLAG_COLUMNS)))
        conn.commit()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql.SQL("VACUUM {}, {}").format(sql.Identifier(schema, "ztile"),
                                                         sql.Identifier(schema, "zpix")))
    finally:
        conn.close()


def flags_timed(dsn, schema):
    """The primary flags of every ztile and zpix row, timed, alone (a scheduler without
    flag steps: the load ran them before its builds)."""
    import psycopg2

    from specprod_db.load import finalize
    conn = psycopg2.connect(dsn)
    try:
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
