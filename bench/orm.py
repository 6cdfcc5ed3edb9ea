"""(c) The old way: one SQLAlchemy ORM object per row, ``add_all`` + ``commit`` per chunk.

Declarative classes are built from ``specprod_db.schema`` (no column list is copied), into
a freshly ``init``-ed schema (same keys, indexes and foreign keys as our load's). The rows
are the staged rows of the same mock tiles, inserted parents first (tile, photometry —
de-duplicated by TARGETID, first writer wins as in the load —, exposure, frame, target,
fiberassign, potential, ztile), ``CHUNK`` rows per ``session.add_all`` + ``commit``.

Timed: building the ORM objects, ``add_all`` and ``commit`` (the flush) — the insert step.
Not timed: reading the stage files and turning numpy columns into Python values (data
preparation, which the old tool also did but which is not "inserting").
"""
import datetime
import time

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Session

from specprod_db import schema

CHUNK = 50_000
ORDER = ("tile", "photometry", "exposure", "frame", "target", "fiberassign", "potential",
         "ztile")
_EPOCH = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)


def _satype(pgtype):
    if pgtype.startswith("varchar"):
        return sa.String(int(pgtype[8:-1])) if "(" in pgtype else sa.String()
    return {
        "smallint": sa.SmallInteger(), "integer": sa.Integer(), "serial": sa.Integer(),
        "bigint": sa.BigInteger(), "real": sa.REAL(), "double precision": sa.Double(),
        "boolean": sa.Boolean(), "numeric(39)": sa.Numeric(39, 0),
        "timestamp with time zone": sa.DateTime(timezone=True),
        "text": sa.Text(), "jsonb": sa.Text(),
    }[pgtype]


def make_classes(schema_name):
    """``{table name: declarative class}`` for the data tables, from ``schema``."""
    class Base(DeclarativeBase):
        metadata = sa.MetaData(schema=schema_name)

    classes = {}
    for t in schema.DATA_TABLES:
        if t.name == "version":
            continue
        attrs = {"__tablename__": t.name}
        for c in t.columns:
            attrs[c.name] = sa.Column(c.name, _satype(c.pgtype),
                                      primary_key=c.name in t.primary_key,
                                      autoincrement=False, nullable=False)
        classes[t.name] = type(t.name.capitalize(), (Base,), attrs)
    return classes


def python_columns(table, rows):
    """numpy structured rows -> list of per-column Python value lists (data preparation)."""
    out = []
    for c in table.columns:
        v = rows[c.name]
        if c.pgtype == "numeric(39)":
            hi, lo = v[:, 0].tolist(), v[:, 1].tolist()
            out.append([(h << 64) | l for h, l in zip(hi, lo)])
        elif c.pgtype.startswith("varchar"):
            out.append([b.decode() for b in v.tolist()])
        elif c.pgtype == "timestamp with time zone":
            out.append([_EPOCH + datetime.timedelta(microseconds=x) for x in v.tolist()])
        else:
            out.append(v.tolist())
    return out


def dedupe_photometry(rows):
    _, first = np.unique(rows["targetid"], return_index=True)
    return rows[np.sort(first)]


def run(dsn, schema_name, rows_by_table, chunk=CHUNK, log=print):
    """Insert every table's rows the ORM way; returns ``{table: {rows, build_s, flush_s}}``."""
    import psycopg2
    engine = sa.create_engine("postgresql+psycopg2://", creator=lambda: psycopg2.connect(dsn))
    classes = make_classes(schema_name)
    results = {}
    try:
        for name in ORDER:
            rows = rows_by_table.get(name)
            if rows is None or len(rows) == 0:
                continue
            if name == "photometry":
                rows = dedupe_photometry(rows)
            table, cls = schema.table(name), classes[name]
            names = table.names
            build = flush = 0.0
            with Session(engine) as session:
                for start in range(0, len(rows), chunk):
                    cols = python_columns(table, rows[start: start + chunk])  # not timed
                    records = [dict(zip(names, vals)) for vals in zip(*cols)]  # not timed
                    t = time.perf_counter()
                    objs = [cls(**r) for r in records]
                    t1 = time.perf_counter()
                    session.add_all(objs)
                    session.commit()
                    t2 = time.perf_counter()
                    build += t1 - t
                    flush += t2 - t1
                    del objs, records, cols
                    session.expunge_all()
            results[name] = {"rows": len(rows), "build_s": build, "flush_s": flush,
                             "insert_s": build + flush}
            log(f"  {name:<12} {len(rows):>9} rows  ORM insert {build + flush:8.2f} s "
                f"(objects {build:.2f} s, add_all+commit {flush:.2f} s)  "
                f"{len(rows) / (build + flush):>8.0f} rows/s")
    finally:
        engine.dispose()
    return results
