"""PGCOPY encoder: byte-for-byte against the server's own binary COPY, and round trips."""
import datetime
import io
import struct

import numpy as np
import psycopg2
import pytest
from psycopg2 import sql

from specprod_db import ids, schema

from specprod_db.db import ddl

from specprod_db.db.sql import qualified
from specprod_db.db import pgcopy

_EPOCH = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)


def _specials(col, n):
    """Values of ``col``'s type that an encoder gets wrong first (extremes, signs, NaN,
    empty and multi-byte strings, numerics with zero digit groups), for its first rows."""
    dt = col.dtype
    if dt.kind == "S":
        w = dt.itemsize
        vals = [b"", b"x" * w, b" lead", b"trail ", "caf\u00e9 \u00b5".encode(), b"Z"]
        return [v for v in vals if len(v) <= w]
    if col.pgtype == "numeric(39)":
        return [0, 1, 9999, 10000, 10**8, 2**64 - 1, 2**64, 10**20, 10**38, 2**128 - 1,
                ids.to_int(ids.ztile_id("cumulative", 20220613, 1234, 2**62))[0]]
    if col.pgtype == "timestamp with time zone":        # microseconds since 2000 UTC
        return [0, -1, 1, -3155760000000000, 252455615999999999, 86400 * 10**6 + 7]
    if dt.kind == "b":
        return [True, False]
    if dt.kind == "i":
        info = np.iinfo(dt)
        return [info.min, info.max, 0, -1, 1, info.min + 1, info.max - 1]
    if dt.kind == "f":
        info = np.finfo(dt)
        return [np.nan, np.inf, -np.inf, -0.0, 0.0, info.max, info.min, info.tiny,
                -info.smallest_subnormal, info.eps, 1 / 3, -1e-30]
    raise AssertionError(f"no values for {col.pgtype}")


def _sample(table, n, rng, special=True):
    """``n`` rows of ``table``: every column filled with random values of its type,
    its first rows with :func:`_specials` (unless ``special`` is False)."""
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
        elif col.pgtype == "timestamp with time zone":
            rows[col.name] = rng.integers(-10**16, 10**16, n)
        elif dt.kind == "b":
            rows[col.name] = rng.integers(0, 2, n).astype(bool)
        elif dt.kind == "i":
            info = np.iinfo(dt)
            rows[col.name] = rng.integers(info.min, info.max, n, dtype=dt, endpoint=True)
        elif dt.kind == "f":
            scale = 10.0 ** rng.integers(-20, 20, n)
            rows[col.name] = (rng.normal(0, 1, n) * scale).astype(dt)
        else:
            raise AssertionError(f"no values for {col.pgtype}")
        if special:
            vals = _specials(col, n)
            if col.pgtype == "numeric(39)":
                rows[col.name][:len(vals)] = ids.from_int(vals)
            else:
                rows[col.name][:len(vals)] = vals
    return rows


def _text(col, values):
    """``values`` of ``col`` in PostgreSQL's text input format: the reference rows reach
    the server without our encoder."""
    if col.pgtype == "numeric(39)":
        return [str(v) for v in ids.to_int(values)]
    if col.pgtype == "timestamp with time zone":
        return [(_EPOCH + datetime.timedelta(microseconds=int(v))).isoformat()
                for v in values]
    if col.dtype.kind == "S":
        return [v.decode() for v in values.tolist()]
    if col.dtype.kind == "b":
        return ["t" if v else "f" for v in values.tolist()]
    if col.dtype.kind == "f":
        return ["NaN" if v != v else "Infinity" if v == np.inf else "-Infinity"
                if v == -np.inf else repr(v) for v in values.tolist()]
    return [str(v) for v in values.tolist()]


def _fields(stream):
    """A PGCOPY stream -> its rows, each a list of field bytes (``None`` for NULL)."""
    assert stream[:11] == b"PGCOPY\n\xff\r\n\x00"
    pos = 19 + int.from_bytes(stream[15:19], "big")
    rows = []
    while True:
        nfields = int.from_bytes(stream[pos:pos + 2], "big", signed=True)
        pos += 2
        if nfields == -1:
            break
        row = []
        for _ in range(nfields):
            size = int.from_bytes(stream[pos:pos + 4], "big", signed=True)
            pos += 4
            row.append(None if size < 0 else stream[pos:pos + size])
            pos += max(size, 0)
        rows.append(row)
    assert pos == len(stream), "bytes after the trailer"
    return rows


def _numeric(field):
    """A binary numeric field -> (value, sign, dscale); digits checked to be base 10000."""
    ndigits, weight, sign, dscale = struct.unpack(">hhHh", field[:8])
    digits = struct.unpack(f">{ndigits}h", field[8:])
    assert len(field) == 8 + 2 * ndigits and all(0 <= d < 10000 for d in digits)
    return sum(d * 10000 ** (weight - i) for i, d in enumerate(digits)), sign, dscale


def _server_copy(cur, conn, target, names):
    out = io.BytesIO()
    cur.copy_expert(sql.SQL("COPY (SELECT {} FROM {} ORDER BY _ord) TO STDOUT "
                            "(FORMAT binary)").format(
        sql.SQL(", ").join(map(sql.Identifier, names)), target).as_string(conn), out)
    return out.getvalue()


@pytest.mark.parametrize("name", [t.name for t in schema.DATA_TABLES])
def test_copy_matches_server_bytes(pg_dsn, schema_name, name):
    """Every column of the table, special values included: the rows reach the server as
    text (``COPY ... FROM`` text format), and the server's binary COPY of them must be
    our encoder's bytes, field by field (numerics by value: the server strips leading
    zero digits, we send a fixed 10 digits).  Our bytes, loaded, give the same rows."""
    table = schema.table(name)
    rows = _sample(table, 257, np.random.default_rng(7))
    data = pgcopy.Encoder(table).encode(rows)
    names = list(table.names)
    text = [_text(c, rows[c.name]) for c in table.columns]
    conn = psycopg2.connect(pg_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'America/Phoenix'")   # must not matter
            cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema_name)))
            cols = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c.name),
                                                               sql.SQL(c.ddl_type))
                                      for c in table.columns)
            copied = {}
            for which in ("text", "ours"):
                target = sql.Identifier(schema_name, f"{name}_{which}")
                cur.execute(sql.SQL("CREATE TABLE {} ({}, _ord bigserial)").format(
                    target, cols))
                into = sql.SQL("COPY {} ({}) FROM STDIN").format(
                    target, sql.SQL(", ").join(map(sql.Identifier, names)))
                if which == "text":
                    lines = "".join("\t".join(v) + "\n" for v in zip(*text))
                    cur.copy_expert(into.as_string(conn), io.StringIO(lines))
                else:
                    binary = sql.SQL("{} (FORMAT binary)").format(into)
                    cur.copy_expert(binary.as_string(conn), pgcopy.StreamReader(
                        pgcopy.Encoder(table).iter_bytes(rows, chunk_rows=100)))
                copied[which] = _server_copy(cur, conn, target, names)
    finally:
        conn.rollback()
        conn.close()
    # loading our bytes gives exactly the rows the server parsed from text
    assert copied["ours"] == copied["text"]
    ref, got = _fields(copied["text"]), _fields(data)
    assert data[:19] == copied["text"][:19] and data[-2:] == copied["text"][-2:]
    assert len(ref) == len(got) == len(rows)
    numeric = [c.pgtype == "numeric(39)" for c in table.columns]
    for i, (r, g) in enumerate(zip(ref, got)):
        assert len(r) == len(g) == len(names), i
        for k, (a, b) in enumerate(zip(r, g)):
            if numeric[k]:
                value = ids.to_int(rows[names[k]][i])[0]
                assert _numeric(a) == _numeric(b) == (value, 0, 0), (i, names[k])
            else:
                assert a == b, (i, names[k], a, b)
    if not any(numeric):
        assert data == copied["text"]


def test_strings_and_chunks_round_trip(pg_dsn, schema_name):
    table = schema.table("tile")
    rows = _sample(table, 1001, np.random.default_rng(3), special=False)
    rows["survey"][:3] = [b"", b"main", b"x" * 20]
    blocks = list(pgcopy.Encoder(table).iter_bytes(rows, chunk_rows=100))
    assert len(blocks) == 1 + 11 + 1
    conn = psycopg2.connect(pg_dsn)
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema_name)))
        cur.execute(ddl.create_table_sql(table, schema_name))
        cur.copy_expert(sql.SQL("COPY {} FROM STDIN (FORMAT binary)").format(
            qualified(schema_name, "tile")).as_string(conn), pgcopy.StreamReader(blocks))
        cur.execute(sql.SQL("SELECT tileid, survey, tilera FROM {} ORDER BY tileid").format(
            qualified(schema_name, "tile")))
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


def test_row_layouts_and_blocks_give_the_same_bytes():
    """Runs of same-type columns are cast in one pass when they are adjacent in the rows
    (``Encoder._plan``): rows of another layout (reversed field order, big-endian, wider
    source types) give the same bytes; so do blocks of any size, the growing blocks of
    ``first_rows`` and the bytes ``iter_bytes`` yields."""
    for name in ("photometry", "ztile", "fiberassign"):
        table = schema.table(name)
        rows = _sample(table, 1234, np.random.default_rng(11))
        enc = pgcopy.Encoder(table)
        ref = enc.encode(rows)
        assert any(count > 1 for _, _, _, count in enc._plan(rows.dtype))
        fields = [(n, rows.dtype[n]) for n in reversed(rows.dtype.names)]
        other = np.empty(len(rows), dtype=[
            (n, dt.newbyteorder(">") if dt.kind in "if" and not dt.shape else dt)
            for n, dt in fields])
        wide = np.empty(len(rows), dtype=[
            (n, np.dtype("f8") if dt == np.dtype("f4") else dt) for n, dt in fields])
        for layout in (other, wide):
            for n in rows.dtype.names:
                layout[n] = rows[n]
            assert all(count == 1 or layout is wide
                       for _, _, _, count in enc._plan(layout.dtype))
            assert enc.encode(layout) == ref, name
        for kwargs in ({"chunk_rows": 1}, {"chunk_rows": 100, "first_rows": 3},
                       {"first_rows": 1}):
            blocks = list(enc.iter_blocks(rows, **kwargs))
            assert b"".join(blocks) == ref
            assert b"".join(enc.iter_bytes(rows, **kwargs)) == ref
        sizes = [len(b) for b in enc.iter_blocks(rows, header=False, trailer=False,
                                                  chunk_rows=100, first_rows=3)]
        assert len(sizes) == 6 + 11  # 3, 6, ..., 96, then 10 x 100 and 45


def test_string_lengths_without_numpy_strings(monkeypatch):
    """The lengths of ``S`` values (up to the last non-NUL byte) with numpy's string
    functions and without them (numpy < 2) agree, NULs inside included."""
    rng = np.random.default_rng(5)
    block = rng.choice(np.array([0, 0, 65, 66], dtype=np.uint8), (500, 7))
    block[:3] = [[0] * 7, [65] * 7, [0, 0, 0, 0, 0, 0, 1]]
    with_strings = pgcopy._used_lengths(block)
    monkeypatch.setattr(pgcopy, "_str_len", None)
    assert pgcopy._used_lengths(block).tolist() == with_strings.tolist()
    assert with_strings[:3].tolist() == [0, 7, 7]
    assert with_strings.tolist() == [len(v) for v in block.view("S7")[:, 0].tolist()]


def test_stream_reader_over_arrays_and_bytes():
    """``read`` returns ``bytes`` (psycopg2 accepts nothing else) of at most ``size``,
    across blocks that are bytes or uint8 arrays, empty ones included."""
    data = bytes(range(256)) * 40
    blocks = [data[:5], np.frombuffer(data[5:4000], np.uint8), b"",
              np.frombuffer(data[4000:4000], np.uint8), data[4000:9000],
              np.frombuffer(data[9000:], np.uint8)]
    for size in (1, 7, 4096, 1 << 20):
        reader, out = pgcopy.StreamReader(iter(blocks)), []
        while True:
            piece = reader.read(size)
            assert type(piece) is bytes and len(piece) <= size
            if not piece:
                break
            out.append(piece)
        assert b"".join(out) == data
    reader = pgcopy.StreamReader(iter(blocks))
    assert reader.read(3) == data[:3] and reader.read() == data[3:]
    whole = b"x" * 10
    assert pgcopy.StreamReader(iter([whole])).read(100) is whole


@pytest.mark.parametrize("name", ["photometry", "ztile"])
def test_writer_copy_rows_loads_what_the_reference_path_loads(pg_dsn, schema_name, name):
    """``tile_writer.copy_rows`` (growing blocks encoded in a thread, array blocks read in
    1 MiB pieces) loads exactly the rows of a plain ``iter_bytes`` stream."""
    from specprod_db.load import tile_writer
    table = schema.table(name)
    rows = _sample(table, 12345, np.random.default_rng(2))
    conn = psycopg2.connect(pg_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema_name)))
            cols = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c.name),
                                                               sql.SQL(c.ddl_type))
                                      for c in table.columns)
            dumps = []
            for which in ("ref", "writer"):
                target = sql.Identifier(schema_name, f"{name}_{which}")
                cur.execute(sql.SQL("CREATE TABLE {} ({}, _ord bigserial)").format(
                    target, cols))
                if which == "ref":
                    cur.copy_expert(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
                        target, sql.SQL(", ").join(map(sql.Identifier, table.names))
                    ).as_string(conn), pgcopy.StreamReader(
                        pgcopy.Encoder(table).iter_bytes(rows, chunk_rows=1000)))
                else:
                    assert tile_writer.copy_rows(cur, schema_name, name, rows,
                                            target=target) == len(rows)
                dumps.append(_server_copy(cur, conn, target, list(table.names)))
    finally:
        conn.rollback()
        conn.close()
    assert len(_fields(dumps[0])) == len(rows)
    assert dumps[0] == dumps[1]
