"""(e) The end of an initial load on K build sessions: ``bench/run.py`` helper.

After each ``--initial`` load of (e) (its builds done on the default
``--build-connections``), for every K of ``--build-ks``: the builds the bulk path drops
(:func:`specprod_db.db.builds.bulk_builds`) are dropped again and rebuilt, timed, on K
sessions (:func:`specprod_db.db.builds.build_missing`, the load's own call; each build's
seconds kept).  The rest of the end of the load (primary flags of every row, CLUSTER,
ANALYZE) does not depend on K: it is the load's own ``finalize`` timer minus its
``builds`` timer, as the load measured it.  So

    end of the load (K) = builds wall on K sessions + (finalize - builds) of the load.

The rebuilt schema is the one the load left (catalog-equal to ``init``; nothing else
changes but the builds' order on disk).
"""
import time


def measure(dsn, load, ks, log=print):
    """``{"tiles", "rows", "rest_s", "load_builds_s", "k": {K: {...}}}`` for one
    (e) load result of ``run.run_load``."""
    import psycopg2

    from specprod_db.db import builds
    schema = load["schema"]
    t = load["timers"]
    out = {"tiles": load["tiles"], "rows": load["rows"],
           "load_builds_s": t.get("builds", 0.0),
           "rest_s": t.get("finalize", 0.0) - t.get("builds", 0.0), "k": {}}
    for k in ks:
        conn = psycopg2.connect(dsn)
        try:
            builds.drop(conn, schema, builds.bulk_builds())
        finally:
            conn.close()
        steps = {}
        t0 = time.perf_counter()
        builds.build_missing(dsn, schema, None, connections=k,
                             progress=steps.__setitem__)
        wall = time.perf_counter() - t0
        top = sorted(steps.items(), key=lambda kv: -kv[1])[:3]
        out["k"][str(k)] = {"builds_s": wall, "steps_sum_s": sum(steps.values()),
                            "end_s": wall + out["rest_s"], "steps": steps}
        log(f"  end of the load, {load['tiles']} tiles, K={k}: builds {wall:.1f} s wall "
            f"(sum of steps {sum(steps.values()):.1f} s; longest "
            + ", ".join(f"{n} {s:.1f}" for n, s in top)
            + f") + flags/CLUSTER/ANALYZE {out['rest_s']:.1f} s")
    return out


def growth(end_of_load, k):
    """(sizes, seconds, seconds per tile of the slope) of the end of the load at K."""
    sizes = sorted(end_of_load, key=int)
    secs = [end_of_load[s]["k"][str(k)]["end_s"] for s in sizes]
    if len(sizes) < 2:
        return sizes, secs, None
    slope = (secs[-1] - secs[0]) / (int(sizes[-1]) - int(sizes[0]))
    return sizes, secs, slope
