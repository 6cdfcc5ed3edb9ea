"""(a) Our writer's COPY against the server-side binary COPY ceiling, table by table.

For every table, on the same rows (all staged rows of the mock tiles, concatenated):

* ``ours``: ``tile_writer.copy_rows`` — ``pgcopy.Encoder`` from numpy + ``copy_expert`` from
  STDIN, exactly what the writer does per tile — then COMMIT;
* ``ceiling``: the same PGCOPY bytes written once to a file in /tmp (mode 644, readable by
  the server's ``postgres`` user) and ``COPY table FROM '/tmp/...' (FORMAT binary)``, run
  by the server itself (no client, no network, no encoding), then COMMIT;
* (:func:`written`) the same-rows ceiling of (b)'s write stage: the rows the load
  wrote, dumped from its tables and copied back by the server into bare tables;
* for the breakdown, ``encode`` (``Encoder.encode`` alone, in memory, no database) and
  ``stdin`` (``copy_expert`` of the pre-encoded bytes from a ``BytesIO``: transport +
  server parse, no encoding).

The destination is an index-free copy of the real table (``CREATE TABLE ... (LIKE ...)``,
NOT NULL kept, no keys, no indexes), TRUNCATEd before every attempt: index maintenance
costs the same in both paths, so it would only hide the difference being measured.
Each variant is run ``repeats`` times, interleaved, and the fastest attempt is kept (the
machine is shared; the minimum is the least disturbed measurement).  Also recorded, as
medians over the attempts: the CPU seconds of the server backend (``/proc/PID/stat`` of
``pg_backend_pid()``, when the server runs on this machine) and of this process
(``time.process_time``, the encoding thread included): on a busy 2-core machine *ours*
loses to the ceiling about what its client CPU takes from the server's share.
"""
import io
import os
import time

import numpy as np
from psycopg2 import sql

from specprod_db.db import pgcopy
from specprod_db.load import tile_writer
from specprod_db.schema import table as schema_table

#: The tables a tile load COPYs, as the writer does, parents first.
TABLES = ("tile", "exposure", "frame", "photometry", "target", "fiberassign", "potential",
          "ztile")


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _backend_cpu(conn):
    """A function giving the CPU seconds used so far by ``conn``'s server backend
    (user + system), or None when its /proc entry cannot be read (remote server)."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
    conn.commit()
    tick = os.sysconf("SC_CLK_TCK")

    def cpu():
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick
    try:
        cpu()
    except (OSError, IndexError, ValueError):
        return None
    return cpu


def run(conn, schema_name, rows_by_table, tmpdir="/tmp", repeats=3, log=print):
    """Return ``{table: {...}}`` with rows, bytes and seconds of each variant."""
    results = {}
    backend_cpu = _backend_cpu(conn)
    for name in TABLES:
        rows = rows_by_table.get(name)
        if rows is None or len(rows) == 0:
            continue
        table = schema_table(name)
        dest = sql.Identifier(schema_name, f"bench_{name}")
        cols = sql.SQL(", ").join(map(sql.Identifier, table.names))
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(dest))
            cur.execute(sql.SQL("CREATE TABLE {} (LIKE {})").format(
                dest, sql.Identifier(schema_name, name)))
        conn.commit()

        encoder = pgcopy.Encoder(table)
        t = time.perf_counter()
        data = encoder.encode(rows)
        encode_s = [time.perf_counter() - t]
        path = os.path.join(tmpdir, f"specprod-bench-{os.getpid()}-{name}.pgcopy")
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, 0o644)

        def truncate():
            with conn.cursor() as cur:
                cur.execute(sql.SQL("TRUNCATE {}").format(dest))
            conn.commit()

        def ours():
            with conn.cursor() as cur:
                tile_writer.copy_rows(cur, schema_name, name, rows, target=dest)
            conn.commit()

        def ceiling():
            with conn.cursor() as cur:
                cur.execute(sql.SQL("COPY {} ({}) FROM {} (FORMAT binary)").format(
                    dest, cols, sql.Literal(path)))
            conn.commit()

        def stdin():
            with conn.cursor() as cur:
                cur.copy_expert(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
                    dest, cols).as_string(conn), io.BytesIO(data), size=tile_writer.COPY_READ_SIZE)
            conn.commit()

        times = {"ours": [], "ceiling": [], "stdin": []}
        cpu = {variant: [] for variant in times}
        try:
            for _ in range(repeats):
                for variant, fn in (("ceiling", ceiling), ("ours", ours), ("stdin", stdin)):
                    truncate()
                    s0 = backend_cpu() if backend_cpu else float("nan")
                    c0 = time.process_time()
                    times[variant].append(_timed(fn))
                    cpu[variant].append(
                        ((backend_cpu() if backend_cpu else float("nan")) - s0,
                         time.process_time() - c0))
                encode_s.append(_timed(lambda: encoder.encode(rows)))
            with conn.cursor() as cur:
                cur.execute(sql.SQL("SELECT count(*) FROM {}").format(dest))
                assert cur.fetchone()[0] == len(rows)
        finally:
            os.remove(path)
            with conn.cursor() as cur:
                cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(dest))
            conn.commit()
        r = {"rows": len(rows), "columns": len(table.names), "bytes": len(data),
             "ours_s": min(times["ours"]), "ceiling_s": min(times["ceiling"]),
             "stdin_s": min(times["stdin"]), "encode_s": min(encode_s),
             "all": times,
             "cpu": {v: {"server_s": float(np.median([a for a, _ in c])),
                         "client_s": float(np.median([b for _, b in c]))}
                     for v, c in cpu.items()}}
        r["ratio"] = r["ceiling_s"] / r["ours_s"]
        results[name] = r
        log(f"  {name:<12} {r['rows']:>9} rows  ours {r['ours_s']:7.3f} s  "
            f"ceiling {r['ceiling_s']:7.3f} s  ratio {r['ratio']:.2f}  "
            f"(encode {r['encode_s']:.3f} s, stdin {r['stdin_s']:.3f} s; CPU server/client "
            f"ceiling {r['cpu']['ceiling']['server_s']:.2f}/{r['cpu']['ceiling']['client_s']:.2f}"
            f" ours {r['cpu']['ours']['server_s']:.2f}/{r['cpu']['ours']['client_s']:.2f} s)")
    return results


def concat_stage(paths):
    """``{table: rows}``: every table of the stage files ``paths``, concatenated."""
    from specprod_db import stage
    pieces = {}
    for p in paths:
        for name, rows in stage.StageFile(p).tables().items():
            if name != "aux":
                pieces.setdefault(name, []).append(rows)
    return {k: np.concatenate(v) for k, v in pieces.items()}


def written(conn, schema_name, tmpdir="/tmp", repeats=3, log=print):
    """The issue's own measure of the write stage's ceiling: the rows a load *wrote*
    (every data table of ``schema_name``, as the load left it), dumped by ``COPY ... TO
    STDOUT (FORMAT binary)`` into a file, then ``COPY ... FROM file`` by the server into a
    bare copy of the table (``LIKE``: no keys, no indexes), best of ``repeats``, each
    committed.  Unlike :func:`run`'s rows/s of the *staged* rows, this is exactly the
    rows written: the photometry rows no tile inserted (a TARGETID's later rows) are not
    in it, and the ``ztile_*`` tables are.  Returns ``{table: {rows, bytes, ceiling_s}}``.
    """
    from specprod_db.schema import DATA_TABLES
    out = {}
    for t in DATA_TABLES:
        if t.name == "version":  # written by init, not by the load
            continue
        src = sql.Identifier(schema_name, t.name)
        dest = sql.Identifier(schema_name, f"bench_w_{t.name}")
        path = os.path.join(tmpdir, f"specprod-bench-{os.getpid()}-w-{t.name}.pgcopy")
        cols = sql.SQL(", ").join(map(sql.Identifier, t.names))
        try:
            with conn.cursor() as cur, open(path, "wb") as f:
                cur.copy_expert(sql.SQL("COPY {} ({}) TO STDOUT (FORMAT binary)").format(
                    src, cols).as_string(conn), f, size=tile_writer.COPY_READ_SIZE)
                rows = cur.rowcount
            os.chmod(path, 0o644)
            if rows <= 0:
                continue
            with conn.cursor() as cur:
                cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(dest))
                cur.execute(sql.SQL("CREATE TABLE {} (LIKE {})").format(dest, src))
            conn.commit()
            best = None
            for _ in range(repeats):
                with conn.cursor() as cur:
                    cur.execute(sql.SQL("TRUNCATE {}").format(dest))
                conn.commit()
                t0 = time.perf_counter()
                with conn.cursor() as cur:
                    cur.execute(sql.SQL("COPY {} ({}) FROM {} (FORMAT binary)").format(
                        dest, cols, sql.Literal(path)))
                conn.commit()
                dt = time.perf_counter() - t0
                best = dt if best is None else min(best, dt)
            out[t.name] = {"rows": rows, "bytes": os.path.getsize(path), "ceiling_s": best}
            log(f"  {t.name:<15} {rows:>9} rows written  server-side COPY {best:7.3f} s")
        finally:
            if os.path.exists(path):
                os.remove(path)
            with conn.cursor() as cur:
                cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(dest))
            conn.commit()
    return out
