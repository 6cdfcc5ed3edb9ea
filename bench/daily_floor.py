"""(f) The floor of the daily write: the server's own COPY of a morning's rows into the
fully constrained tables, against the writer's time for the same tiles.

The daily path keeps every key, unique index and foreign key in place during its
per-tile transactions (issue 18: "the daily path is unchanged in what it guarantees"),
so each row it COPYs is checked row by row by the server.  What that costs the server
alone, with no client, no encoding and nothing else of a tile's transaction, bounds
what any writer can reach.  For each tile the morning wrote (its ``tile_history`` rows
of the run, outcome ``loaded``):

* its rows of every per-tile table (:func:`specprod_db.schema.tile_tables`), as the
  morning left them, are fetched with ``COPY (SELECT ...) TO STDOUT (FORMAT binary)``
  into files in /tmp (mode 644, readable by the server's ``postgres`` user);
* a tile the morning INSERTed: its rows are deleted and committed, the tables VACUUMed
  (no dead index entries left), then, one transaction per tile, each table's file is
  COPYed back by the server (``COPY t FROM '/tmp/...' (FORMAT binary)``, parents first)
  and committed: the tables end as the morning left them;
* a tile the morning UPDATEd: in one transaction its rows are deleted and the files
  COPYed back by the server, as the writer replaces them, then rolled back.

The floor leaves out what a tile's transaction does besides those COPYs: new photometry
rows (shared between tiles, not dumpable per tile), the orphan DELETE, the primary flags,
``tile_state`` and ``tile_history``.  So ``write / floor`` overstates the writer's own
overhead: it is an upper bound of it.
"""
import os
import time

import psycopg2
from psycopg2 import sql

from specprod_db import schema
from specprod_db.load import tile_writer


def _written(cur, schema_name):
    """``[(tileid, action)]`` the schema's last run loaded (INSERT or UPDATE)."""
    cur.execute(sql.SQL("SELECT tileid, action FROM {} WHERE outcome = 'loaded' AND run_id = "
                        "(SELECT max(id) FROM {}) ORDER BY tileid").format(
        sql.Identifier(schema_name, "tile_history"), sql.Identifier(schema_name, "load_run")))
    return [(int(t), a) for t, a in cur.fetchall()]


def _dump(cur, schema_name, tileid, tmpdir):
    """``{table: (path, rows)}`` of the tile's rows of every per-tile table."""
    out = {}
    for table in schema.tile_tables():
        path = os.path.join(tmpdir, f"specprod-floor-{os.getpid()}-{tileid}-{table.name}.pgcopy")
        cols = sql.SQL(", ").join(map(sql.Identifier, table.names))
        with open(path, "wb") as f:
            cur.copy_expert(sql.SQL("COPY (SELECT {} FROM {} WHERE tileid = {}) TO STDOUT "
                                    "(FORMAT binary)").format(
                cols, sql.Identifier(schema_name, table.name), sql.Literal(tileid))
                .as_string(cur.connection), f)
        os.chmod(path, 0o644)
        cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE tileid = %s").format(
            sql.Identifier(schema_name, table.name)), (tileid,))
        out[table.name] = (path, cur.fetchone()[0])
    return out


def _server_copy(cur, schema_name, files):
    """Seconds of each table's server-side COPY of ``files``, parents first."""
    seconds = {}
    for table in schema.tile_tables():
        path, n = files[table.name]
        if not n:
            continue
        cols = sql.SQL(", ").join(map(sql.Identifier, table.names))
        t = time.perf_counter()
        cur.execute(sql.SQL("COPY {} ({}) FROM {} (FORMAT binary)").format(
            sql.Identifier(schema_name, table.name), cols, sql.Literal(path)))
        seconds[table.name] = time.perf_counter() - t
    return seconds


def run(dsn, schema_name, tmpdir="/tmp", log=print):
    """The floor of the schema's last run (a daily morning): ``{"tiles": [{tileid,
    action, rows, seconds, tables}], "floor_s", "rows"}``."""
    conn = psycopg2.connect(dsn)
    dumps = {}
    try:
        with conn.cursor() as cur:
            written = _written(cur, schema_name)
            for tileid, _ in written:
                dumps[tileid] = _dump(cur, schema_name, tileid, tmpdir)
        conn.commit()
        inserted = [t for t, a in written if a == "INSERT"]
        with conn.cursor() as cur:
            for tileid in inserted:
                tile_writer.delete_tile_rows(cur, schema_name, tileid, full=True,
                                             tile_row=True)
        conn.commit()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql.SQL("VACUUM {}").format(sql.SQL(", ").join(
                sql.Identifier(schema_name, t.name) for t in schema.tile_tables())))
        conn.autocommit = False
        tiles = []
        for tileid, action in written:
            with conn.cursor() as cur:
                if action != "INSERT":
                    tile_writer.delete_tile_rows(cur, schema_name, tileid, full=True,
                                                 tile_row=True)
                seconds = _server_copy(cur, schema_name, dumps[tileid])
            if action == "INSERT":
                conn.commit()
            else:
                conn.rollback()
            rows = sum(n for _, n in dumps[tileid].values())
            tiles.append({"tileid": tileid, "action": action, "rows": rows,
                          "seconds": sum(seconds.values()), "tables": seconds})
    finally:
        conn.close()
        for files in dumps.values():
            for path, _ in files.values():
                try:
                    os.remove(path)
                except OSError:
                    pass
    res = {"tiles": tiles, "floor_s": sum(t["seconds"] for t in tiles),
           "rows": sum(t["rows"] for t in tiles)}
    by_table = {}
    for t in tiles:
        for name, s in t["tables"].items():
            by_table[name] = by_table.get(name, 0.0) + s
    res["tables"] = by_table
    log(f"  floor: the server's own COPY of the {len(tiles)} written tiles' rows into the "
        f"constrained tables: {res['floor_s']:.1f} s ({res['floor_s'] / max(1, len(tiles)):.2f}"
        f" s per tile; " + ", ".join(f"{k} {v:.1f}" for k, v in by_table.items()) + ")")
    return res
