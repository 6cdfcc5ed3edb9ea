"""PGCOPY encoder: byte-for-byte against the server's own binary COPY, and round trips."""
import numpy as np
import psycopg2
import pytest
from psycopg2 import sql

from specprod_db import db, ids, pgcopy, schema


def _sample(table, n, rng):
    rows = table.empty(n)
    for col in table.columns:
        dt = col.dtype
        if dt.kind == "S":
            width = dt.itemsize
            lengths = rng.integers(0, width + 1, n)
            alphabet = np.frombuffer(b"abcXYZ019 -", dtype=np.uint8)
            rows[col.name] = [rng.choice(alphabet, k).astype(np.uint8).tobytes().rstrip(b" ")
                              for k in lengths]
        elif col.pgtype == "numeric(39)":
            rows[col.name] = ids.composite(rng.integers(0, 2**32, n), rng.integers(0, 2**32, n),
                                           rng.integers(0, 2**63, n))
        elif dt.kind == "b":
            rows[col.name] = rng.integers(0, 2, n).astype(bool)
        elif dt.kind == "i":
            info = np.iinfo(dt)
            rows[col.name] = rng.integers(info.min, info.max, n, dtype=dt, endpoint=True)
        elif dt.kind == "f":
            rows[col.name] = rng.normal(0, 1e3, n).astype(dt)
    if "date_obs" in table.names:
        rows["date_obs"] = rng.integers(0, 10**15, n)
    return rows


@pytest.mark.parametrize("name", ["ztile", "exposure", "photometry", "potential"])
def test_copy_matches_server_bytes(pg_dsn, schema_name, name):
    table = schema.table(name)
    rows = _sample(table, 257, np.random.default_rng(7))
    data = pgcopy.Encoder(table).encode(rows)
    conn = psycopg2.connect(pg_dsn)
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema_name)))
        cols = [sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.ddl_type))
                for c in table.columns]
        cur.execute(sql.SQL("CREATE TABLE {} ({})").format(
            db.qualified(schema_name, name), sql.SQL(", ").join(cols)))
        cur.copy_expert(sql.SQL("COPY {} FROM STDIN (FORMAT binary)").format(
            db.qualified(schema_name, name)).as_string(conn),
            pgcopy.StreamReader(pgcopy.Encoder(table).iter_bytes(rows)))
        import io
        out = io.BytesIO()
        cur.copy_expert(sql.SQL("COPY {} TO STDOUT (FORMAT binary)").format(
            db.qualified(schema_name, name)).as_string(conn), out)
    conn.commit()
    conn.close()
    # numeric: the server strips leading zero digits, so compare decoded values there
    if any(c.pgtype == "numeric(39)" for c in table.columns):
        conn = psycopg2.connect(pg_dsn)
        with conn.cursor() as cur:
            for c in table.columns:
                if c.pgtype == "numeric(39)":
                    cur.execute(sql.SQL("SELECT {}::text FROM {}").format(
                        sql.Identifier(c.name), db.qualified(schema_name, name)))
                    got = [int(r[0]) for r in cur.fetchall()]
                    assert got == ids.to_int(rows[c.name])
        conn.close()
    else:
        assert out.getvalue() == data


def test_strings_and_chunks_round_trip(pg_dsn, schema_name):
    table = schema.table("tile")
    rows = _sample(table, 1001, np.random.default_rng(3))
    rows["survey"][:3] = [b"", b"main", b"x" * 20]
    blocks = list(pgcopy.Encoder(table).iter_bytes(rows, chunk_rows=100))
    assert len(blocks) == 1 + 11 + 1
    conn = psycopg2.connect(pg_dsn)
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema_name)))
        cur.execute(db.create_table_sql(table, schema_name))
        cur.copy_expert(sql.SQL("COPY {} FROM STDIN (FORMAT binary)").format(
            db.qualified(schema_name, "tile")).as_string(conn), pgcopy.StreamReader(blocks))
        cur.execute(sql.SQL("SELECT tileid, survey, tilera FROM {} ORDER BY tileid").format(
            db.qualified(schema_name, "tile")))
        got = cur.fetchall()
    conn.rollback()
    conn.close()
    order = np.argsort(rows["tileid"], kind="stable")
    assert [g[0] for g in got] == rows["tileid"][order].tolist()
    assert [g[1] for g in got] == [s.decode() for s in rows["survey"][order]]
    assert [g[2] for g in got] == rows["tilera"][order].tolist()


def test_numeric_digits_offline():
    values = [0, 1, 9999, 10000, 2**64 - 1, 2**64, 2**128 - 1]
    digits = pgcopy._numeric_digits(ids.from_int(values))
    for v, d in zip(values, digits):
        assert sum(int(x) * 10000 ** (9 - i) for i, x in enumerate(d)) == v


def test_prefetch_keeps_order_and_raises_producer_errors():
    assert list(pgcopy.prefetch(iter([b"a", b"b", b"c"]), depth=1)) == [b"a", b"b", b"c"]

    def broken():
        yield b"x"
        raise ValueError("encoder failed")
    out = pgcopy.prefetch(broken())
    assert next(out) == b"x"
    with pytest.raises(ValueError, match="encoder failed"):
        next(out)
    # a consumer that stops early stops the producer thread
    import threading
    gen = pgcopy.prefetch(iter([b"1"] * 100), depth=2)
    next(gen)
    gen.close()
    assert not any(t.name == "pgcopy-encoder" and t.is_alive() for t in threading.enumerate())
