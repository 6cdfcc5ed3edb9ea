"""Rank 0 of ``specprod-db vac load``: convert over MPI, check, build, swap (:func:`load`).

The files are converted on the worker ranks (:mod:`~specprod_db.vac.convert`) into the
load's stage directory, checked (:mod:`~specprod_db.vac.check`), then :func:`build` creates
and fills ``S.vac_NAME__new`` in one committed transaction: every stage file COPYed by the
binary encoder of :mod:`specprod_db.db.pgcopy`, its primary key, its q3c index, its foreign
keys (checked first: an unmatched key is named with its file), its description and
ANALYZE; finally :func:`~specprod_db.vac.catalog.swap` puts it in place.  The stage files
are removed whatever happens.
"""
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import psycopg2
from psycopg2 import sql

from specprod_db import __version__, mpi, stage
from specprod_db.db.connect import connect, ensure_q3c, server_stop
from specprod_db.db.lock import database_identity
from specprod_db.db.pgcopy import HEADER, TRAILER, Encoder, StreamReader, prefetch
from specprod_db.db.sql import qualified, reading, transaction
from specprod_db.errors import InputError, RunRefused
from specprod_db.log import get_logger
from specprod_db.vac.catalog import (BUILDING, MARKER, REFERENCES, check_name,
                                     check_privileges, check_schema, column_names,
                                     lock_vac, object_names, permission_refused,
                                     read_description, schema_tables, swap, table_name)
from specprod_db.vac.check import Keys, choose_key, merge_columns
from specprod_db.vac.columns import VacTable
from specprod_db.vac.convert import ConvertTask, read_stage, source_label, stage_rows

#: (ra, dec) column pairs, in order of preference, for the q3c index.
Q3C_PAIRS = (("ra", "dec"), ("target_ra", "target_dec"),
             ("mean_fiber_ra", "mean_fiber_dec"), ("tilera", "tiledec"))

#: Rows read from a stage file and handed to the encoder at a time.
READ_ROWS = 200_000


@dataclass
class Options:
    schema: str
    name: str
    sources: list            # [(path, hdu)]
    dsn: str = None
    key: list = None         # None: targetid if present
    fk: bool = True
    stage_dir: str = None
    lock_timeout: float = 300.0
    allow_empty: bool = False  # replace a loaded VAC by files without a row


def foreign_keys(cur, schema_name, key):
    """[(referenced table, columns)] the key columns reference, present in the schema."""
    present = schema_tables(cur, schema_name)
    chosen = []
    for ref, cols in REFERENCES:
        if not set(cols) <= set(key) or ref not in present:
            continue
        if any(set(cols) <= set(c) for _, c in chosen):
            continue
        if set(cols) <= column_names(cur, schema_name, ref):
            chosen.append((ref, cols))
    return chosen


def _q3c_pair(columns):
    kinds = {c.name: c for c in columns}
    for ra, dec in Q3C_PAIRS:
        if all(n in kinds and kinds[n].scalar
               and kinds[n].pgtype in ("real", "double precision") for n in (ra, dec)):
            return ra, dec
    return None


def _copy_blocks(encoder, results):
    """PGCOPY blocks of every stage file's rows, read a slice at a time."""
    yield HEADER
    for r in results:
        n = stage_rows(r["stage"])
        for start in range(0, n, READ_ROWS):
            rows = read_stage(r["stage"], start=start, stop=start + READ_ROWS)
            yield from encoder.iter_bytes(rows, header=False, trailer=False)
    yield TRAILER


def build(conn, opts, table, key, results, keys):
    """Create and fill ``S.vac_NAME__new`` in one committed transaction; returns the
    description stored in its comment."""
    log = get_logger()
    schema_name = opts.schema
    final = table_name(opts.name)
    new = final + BUILDING
    names = object_names(new)
    target = qualified(schema_name, new)
    with transaction(conn, original_error=True) as cur:
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(target))  # a crashed load's
        cur.execute(sql.SQL("CREATE TABLE {} ({})").format(target, sql.SQL(", ").join(
            sql.SQL("{} {} NOT NULL").format(sql.Identifier(c.name), sql.SQL(c.ddl_type))
            for c in table.columns)))
        statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
            target, sql.SQL(", ").join(map(sql.Identifier, table.names)))
        t = time.time()
        cur.copy_expert(statement.as_string(conn),
                        StreamReader(prefetch(_copy_blocks(Encoder(table), results))),
                        size=1 << 20)
        rows = sum(r["rows"] for r in results)
        log.info("vac %s: %d rows copied in %.1f s", opts.name, rows, time.time() - t)
        if key:
            cur.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY ({})").format(
                target, sql.Identifier(names["pkey"]),
                sql.SQL(", ").join(map(sql.Identifier, key))))
        pair = _q3c_pair(table.columns)
        if pair:
            ensure_q3c(conn)
            cur.execute(sql.SQL("CREATE INDEX {} ON {} (q3c_ang2ipix({}, {}))").format(
                sql.Identifier(names["q3c"]), target, *map(sql.Identifier, pair)))
        fks = foreign_keys(cur, schema_name, key) if key and opts.fk else []
        for ref, cols in fks:
            _check_references(cur, opts, target, ref, cols, keys)
            cur.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) "
                                "REFERENCES {} ({})").format(
                target, sql.Identifier(names[f"fk_{ref}"]),
                sql.SQL(", ").join(map(sql.Identifier, cols)), qualified(schema_name, ref),
                sql.SQL(", ").join(map(sql.Identifier, cols))))
        info = {MARKER: 1, "name": opts.name, "rows": rows, "key": key,
                "foreign_keys": {ref: list(cols) for ref, cols in fks},
                "q3c": list(pair) if pair else None,
                "sources": [r["source"] for r in results],
                "columns": {c.name: c.pgtype for c in table.columns},
                "loaded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "loaded_by": f"specprod-db {__version__}"}
        cur.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(
            target, sql.Literal(json.dumps(info, sort_keys=True))))
        cur.execute(sql.SQL("ANALYZE {}").format(target))
    return info


def _check_references(cur, opts, target, ref, cols, keys):
    """:class:`InputError` naming a key with no row in ``ref`` (and its file)."""
    match = sql.SQL(" AND ").join(sql.SQL("r.{0} = v.{0}").format(sql.Identifier(c))
                                  for c in cols)
    select = sql.SQL(", ").join(sql.SQL("v.{}").format(sql.Identifier(c)) for c in cols)
    missing = sql.SQL("FROM {} v WHERE NOT EXISTS (SELECT 1 FROM {} r WHERE {})").format(
        target, qualified(opts.schema, ref), match)
    cur.execute(sql.SQL("SELECT {} {} LIMIT 1").format(select, missing))
    row = cur.fetchone()
    if row is None:
        return
    cur.execute(sql.SQL("SELECT count(*) {}").format(missing))
    n = cur.fetchone()[0]
    value = dict(zip(cols, row))
    where = keys.where(value) if keys is not None else None
    shown = ", ".join(f"{c.upper()} {value[c]!r}" for c in cols)
    raise InputError(
        f"{where[0] + ': ' if where else ''}column{'s' if len(cols) > 1 else ''} "
        f"{', '.join(c.upper() for c in cols)}: {shown}"
        f"{f' (row {where[1]})' if where else ''} has no row in {opts.schema}.{ref} "
        f"({n} key{'s' if n != 1 else ''} of the VAC without one); nothing loaded. Load "
        f"with --no-fk to keep such rows without the foreign key")


def _stage_directory(conn, opts):
    identity = database_identity(conn)
    base = opts.stage_dir or stage.default_directory(identity, opts.schema)
    stage.check_directory(base)
    stage.claim(base, identity, opts.schema)
    # a subdirectory: the daily load's clean-ups never see a VAC's files
    directory = os.path.join(base, "vac", opts.name)
    stage.check_directory(directory)
    stage.cleanup_temporaries(directory)
    return directory


def load(dispatcher, opts):
    """Rank 0 of ``specprod-db vac load``: convert (over ``dispatcher``), check, build,
    swap.  Returns the VAC's description."""
    log = get_logger()
    check_name(opts.name)
    if not opts.sources:
        raise RunRefused("no FITS file given")
    conn = connect(opts.dsn, application_name="specprod-db vac")
    staged = []
    try:
        check_schema(conn, opts.schema)
        lock_vac(conn, opts.schema, opts.name)
        with reading(conn) as cur:
            info = read_description(cur, opts.schema, table_name(opts.name))
            exists = table_name(opts.name) in schema_tables(cur, opts.schema)
        if exists and info is None:
            raise RunRefused(f"{opts.schema}.{table_name(opts.name)} exists and is not a "
                             f"VAC loaded by specprod-db; not replacing it")
        check_privileges(conn, opts.schema, opts.name)
        directory = _stage_directory(conn, opts)
        tasks = [ConvertTask(path, hdu, k, os.path.join(directory, f"{k:05d}.h5"))
                 for k, (path, hdu) in enumerate(opts.sources)]
        staged = [t.stage for t in tasks]
        t = time.time()
        done = dispatcher.map("vac", tasks, size=lambda task: _size(task.path))
        failures = [r for _, r in done if isinstance(r, mpi.TaskFailure)]
        if failures:
            for f in failures[1:]:
                log.error("%s", f.message)
            message = failures[0].message + (
                f" (and {len(failures) - 1} other file(s) failed)"
                if len(failures) > 1 else "") + "; nothing loaded"
            if failures[0].internal:  # a bug (logged with its traceback): exit 4
                raise RuntimeError(message)
            raise InputError(message)
        results = sorted((r for _, r in done), key=lambda r: r["index"])
        log.info("vac %s: %d file(s) converted in %.1f s", opts.name, len(results),
                 time.time() - t)
        rows = sum(r["rows"] for r in results)
        if rows == 0 and exists and not opts.allow_empty:
            files = ", ".join(source_label(r["source"]["file"], r["source"]["hdu"])
                              for r in results)
            raise RunRefused(f"{files}: no row; {opts.schema}.{table_name(opts.name)} holds "
                             f"{info.get('rows', '?')} rows and is not replaced by an empty "
                             f"table (--allow-empty to do so)")
        table = VacTable(table_name(opts.name), tuple(merge_columns(results)))
        key = choose_key(table.columns, opts.key)
        keys = Keys(key, results) if key else None
        dup = keys.duplicate() if keys is not None else None
        if dup:
            value, (first, second) = dup
            same = first[0] == second[0]
            raise InputError(
                f"{first[0]}: duplicate key {keys.describe(value)} (column"
                f"{'s' if len(key) > 1 else ''} {', '.join(k.upper() for k in key)}) in rows "
                f"{first[1]} and {second[1]}" + ("" if same else f" of {second[0]}")
                + "; nothing loaded")
        try:
            info = build(conn, opts, table, key, results, keys)
        except psycopg2.Error as err:  # rolled back
            stop = server_stop(err, conn, f"loading VAC {opts.name}")  # exit 3
            if stop is not None:
                raise stop from None
            if isinstance(err, psycopg2.errors.InsufficientPrivilege):  # exit 2
                raise permission_refused(err, conn, f"building {opts.schema}."
                                         f"{table_name(opts.name)}{BUILDING}") from None
            raise InputError(f"VAC {opts.name}: the database refused the rows: "
                             f"{' '.join(str(err).split())}; nothing loaded") from None
        swap(conn, opts.schema, opts.name, opts.lock_timeout)
        log.info("vac %s: %s.%s holds %d rows from %d file(s)", opts.name, opts.schema,
                 table_name(opts.name), info["rows"], len(results))
        return info
    finally:
        for path in staged:
            stage.StageFile(path).remove()
        conn.close()


def _size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
