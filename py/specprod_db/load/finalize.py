"""After a load: primary-spectrum flags of ``ztile`` and ``zpix``, ANALYZE.

ANALYZE after a daily run goes only to the tables whose statistics went stale
(:func:`stale_tables`): ANALYZE samples a table, so its cost grows with the table
while a morning's change does not; analysing every table on every run made the time
per new tile grow with the database (``make bench`` section (d)).

The flags follow desispec's ``find_primary_spectra`` (datamodel.md §10.1) with
``TSNR2_LRG`` as the sort column (design decision 7), computed in SQL with window
functions over the rows of the TARGETIDs a run touched (their flags depend only on
their own rows):

* among a target's rows, ``zwarn = 0`` first; then ascending ``INV = 1/S``, where ``S`` is
  ``tsnr2_lrg`` and ``S = 0`` gives ``INV = 1e99`` (desispec adds ``1e-99`` to a zero
  denominator).  So the largest positive S wins, zero loses to any positive value,
  **negative** values (e.g. -9999 from finitize) win over positive ones (an artefact of
  the inverse, reproduced on purpose), NaN sorts last (PostgreSQL, like numpy, orders
  NaN above every number).  ``1/S`` is computed in double precision from the stored
  ``real``, exactly as numpy promotes the float32 column;
* exact ties (same TARGETID, zwarn class and INV), which desispec breaks in an
  unspecified order, are broken by ``tileid`` then ``id`` ascending;
* ``zcat_*`` over all rows, ``sv_*`` over rows with survey sv1/sv2/sv3, ``main_*`` over
  rows with survey main; a row outside a subset has ``nspec = 0`` and ``primary = false``.

``zpix`` (HEALPix coadds of a static production) gets the same flags over its own rows
(decision 13): desispec flags a HEALPix catalog with ``EFFTIME_SPEC = 12.15 *
TSNR2_LRG``, a monotonic function of ``TSNR2_LRG``, so the order is this module's; zpix
has no ``tileid`` and its ties are broken by ``id`` (:data:`TIE_BREAKS`).

Functions take an open psycopg2 connection (not in autocommit mode: the temporary
TARGETID tables live until the transaction ends) and do not commit: the caller owns the
transaction.
"""
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
from numpy.typing import ArrayLike
from psycopg2 import sql
from psycopg2.extensions import connection

from specprod_db.db import tempids
from specprod_db.schema import PRIMARY_SUBSETS
from specprod_db.db.sql import index_probes, qualified

#: ``primary`` flag pairs: column prefix -> SQL condition selecting the subset (or None).
SUBSETS = {
    prefix: None if surveys is None else sql.SQL("survey IN ({})").format(
        sql.SQL(", ").join(map(sql.Literal, surveys)))
    for prefix, surveys in PRIMARY_SUBSETS.items()}

#: The sort column of desispec's rule (decision 7).
SORT_COLUMN = "tsnr2_lrg"

#: Columns breaking exact ties, ascending, after ``(zwarn <> 0)`` and ``inv`` (decision 7).
TIE_BREAK = ("tileid", "id")

#: The redshift tables carrying the flags, with their tie-break columns: ``zpix`` has no
#: ``tileid`` (its rows are unique per TARGETID, SURVEY, PROGRAM), so its ties go by ``id``
#: (decision 13).
TIE_BREAKS = {"ztile": TIE_BREAK, "zpix": ("id",)}

#: The flag columns, in table order of each pair.
FLAG_COLUMNS = tuple(f"{p}_{k}" for p in SUBSETS for k in ("nspec", "primary"))


def inv_sql(alias: Optional[str] = None) -> sql.Composable:
    """desispec's ``INV = 1/S`` of :data:`SORT_COLUMN` (``S = 0`` gives ``1e99``), in
    double precision, as an SQL expression; ``alias`` qualifies the column."""
    s = sql.Identifier(*((alias, SORT_COLUMN) if alias else (SORT_COLUMN,)))
    return sql.SQL("CASE WHEN {s} = 0 THEN 1e99::float8 "
                   "ELSE 1.0::float8 / {s}::float8 END").format(s=s)


def flag_expressions(tie_break: Sequence[str] = TIE_BREAK) -> dict[str, sql.Composed]:
    """``{flag column: SQL expression}`` of the six flags, as window functions over a
    relation with columns ``targetid``, ``survey``, ``zwarn``, ``inv`` (:func:`inv_sql`)
    and ``tie_break``: the rule of this module, used by :func:`update_primary` and by the
    de-duplicated redshift views of :mod:`specprod_db.ops.combine`."""
    order = sql.SQL("ORDER BY (zwarn <> 0), inv, {}").format(
        sql.SQL(", ").join(map(sql.Identifier, tie_break)))
    out = {}
    for prefix, cond in SUBSETS.items():
        member = sql.SQL("TRUE") if cond is None else cond
        window = sql.SQL("PARTITION BY targetid, ({member})").format(member=member)
        out[f"{prefix}_nspec"] = sql.SQL(
            "CASE WHEN {m} THEN count(*) OVER ({w}) ELSE 0 END::smallint").format(
                m=member, w=window)
        out[f"{prefix}_primary"] = sql.SQL(
            "CASE WHEN {m} THEN row_number() OVER ({w} {o}) = 1 ELSE FALSE END").format(
                m=member, w=window, o=order)
    return out


def _source_rows(relation: sql.Composable, join: sql.Composable,
                 redshifts: str, row: bool = False) -> sql.Composable:
    """SELECT of the columns the flags read (``id``, ``targetid``, ``survey``, ``zwarn``,
    the tie-breaks and ``inv``; with ``row``, the row's ``ctid`` as ``row``) from the
    rows of ``relation`` (alias ``z``) that ``join`` (SQL after ``FROM relation AS z``)
    selects."""
    columns = ["targetid", "survey", "zwarn"] + [c for c in TIE_BREAKS[redshifts]
                                                 if c != "id"]
    return sql.SQL("SELECT z.id, {columns}, {inv} AS inv{row} FROM {relation} AS z {join}"
                   ).format(columns=sql.SQL(", ").join(sql.Identifier("z", c) for c in columns),
                            inv=inv_sql("z"), relation=relation, join=join,
                            row=sql.SQL(", z.ctid AS row" if row else ""))


def _flags_select(rows: sql.Composable, redshifts: str, row: bool = False) -> sql.Composable:
    """``WITH src AS (rows), flags AS (SELECT id, six flags FROM src)``: the flags of
    the rows ``rows`` (:func:`_source_rows`, or a UNION ALL of them) gives (and their
    ``row``, with ``row``)."""
    selects = [sql.SQL("id")] + [sql.SQL("row")] * row + [
        sql.SQL("{} AS {}").format(expr, sql.Identifier(name))
        for name, expr in flag_expressions(TIE_BREAKS[redshifts]).items()]
    return sql.SQL("WITH src AS ({rows}), flags AS (SELECT {selects} FROM src)").format(
        rows=rows, selects=sql.SQL(", ").join(selects))


def _set_flags(target: sql.Composable, flags: sql.Composable,
               row: bool = False) -> sql.Composable:
    """UPDATE of ``target``'s six flag columns from the relation ``flags`` (``id`` and the
    flags) where they differ; the rows joined by ``id``, or with ``row`` by ``ctid``
    (``flags.row``: the rows as this statement read them)."""
    names = [sql.Identifier(n) for n in FLAG_COLUMNS]
    values = sql.SQL(", ").join(sql.SQL("f.{}").format(n) for n in names)
    return sql.SQL("UPDATE {target} AS t SET ({names}) = ({values}) FROM {flags} AS f "
                   "WHERE {on} AND ({names_t}) IS DISTINCT FROM ({values})").format(
        target=target, flags=flags, names=sql.SQL(", ").join(names), values=values,
        on=sql.SQL("t.ctid = f.row" if row else "t.id = f.id"),
        names_t=sql.SQL(", ").join(sql.SQL("t.{}").format(n) for n in names))


def _flags_sql(schema_name: str, source: sql.Composable,
               redshifts: str = "ztile", row: bool = False) -> sql.Composable:
    """UPDATE of the six flag columns for the rows of ``redshifts`` (``ztile`` or
    ``zpix``) selected by ``source``; with ``row`` the rows are found again by
    ``ctid`` (whole-table work: hashing ``ctid`` instead of the ``numeric(39)`` id)."""
    table = qualified(schema_name, redshifts)
    return _flags_select(_source_rows(table, source, redshifts, row), redshifts, row) + \
        sql.SQL(" ") + _set_flags(table, sql.SQL("flags"), row)


def update_primary(conn: connection, schema_name: str, targetids: Optional[ArrayLike] = None,
                   table: Optional[sql.Composable] = None, redshifts: str = "ztile") -> int:
    """Recompute the ``*_nspec``/``*_primary`` flags of ``ztile`` (or of ``zpix`` with
    ``redshifts='zpix'``: over the zpix rows alone, as desispec flags a HEALPix
    catalog); rows changed.

    Parameters
    ----------
    conn : psycopg2 connection
    schema_name : str
    targetids : array-like of int, optional
        Only the rows of these TARGETIDs (all their rows, on every tile) are recomputed
        (through a temporary table, :mod:`specprod_db.db.tempids`).
    table : psycopg2.sql.Identifier, optional
        Or: only the rows of the TARGETIDs in this temporary table.
        All rows when neither is given.
    """
    with conn.cursor() as cur:
        if targetids is None and table is None:
            return _update_all(cur, schema_name, redshifts)
        if table is None:
            targetids = np.asarray(targetids, dtype=np.int64)
            if len(targetids) == 0:
                return 0
            table = tempids.create(cur, targetids)
        # a tile's TARGETIDs: their rows by the targetid index, updated by the id index;
        # left to itself the planner scanned the whole table twice, on every tile
        with index_probes(cur):
            cur.execute(_flags_sql(schema_name, sql.SQL(
                "JOIN {} AS s ON s.targetid = z.targetid").format(table), redshifts))
            return cur.rowcount


def flag_staged(conn: connection, schema_name: str, touched: sql.Composable,
                staged: sql.Composable) -> int:
    """The flags of a daily tile's new ``ztile`` rows, set in ``staged`` (a temporary
    table of them, not yet inserted), and of the other ``ztile`` rows of the TARGETIDs
    in ``touched``, set in ``ztile``: the same rule as :func:`update_primary` over the
    table with the new rows in it; rows changed (in both).

    The new rows then go into ``ztile`` with their final flags.  Flagging them after the
    insert rewrote each one: a new row version in every one of ztile's fourteen indexes,
    and its three foreign keys checked again (PostgreSQL checks a row updated in the
    transaction that inserted it, whether or not its keys changed): a third of a
    full-size tile's write (issue 18 (f))."""
    with conn.cursor() as cur:
        table = qualified(schema_name, "ztile")
        flags = sql.Identifier("_tile_flags")
        rows = _source_rows(table, sql.SQL("JOIN {} AS s ON s.targetid = z.targetid").format(
            touched), "ztile") + sql.SQL(" UNION ALL ") + _source_rows(
                staged, sql.SQL(""), "ztile")
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(flags))
        with index_probes(cur):  # the touched TARGETIDs' rows by the targetid index
            cur.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS ").format(flags)
                        + _flags_select(rows, "ztile") + sql.SQL(" SELECT * FROM flags"))
            cur.execute(_set_flags(table, flags))  # by the id index
            changed = cur.rowcount
        cur.execute(_set_flags(staged, flags))  # two small tables: hashed
        changed += cur.rowcount
        cur.execute(sql.SQL("DROP TABLE {}").format(flags))
        return changed


def single_flags_sql() -> dict[str, sql.Composed]:
    """``{flag column: SQL expression}`` of the six flags of a TARGETID with one row:
    what :func:`flag_expressions` gives over a partition of that row alone (``nspec``
    1 and ``primary`` true in each subset the row is in, 0 and false elsewhere)."""
    out = {}
    for prefix, cond in SUBSETS.items():
        member = sql.SQL("TRUE") if cond is None else cond
        out[f"{prefix}_nspec"] = sql.SQL("(CASE WHEN {} THEN 1 ELSE 0 END)::smallint").format(
            member)
        out[f"{prefix}_primary"] = sql.SQL("(CASE WHEN {} THEN TRUE ELSE FALSE END)").format(
            member)
    return out


def _update_all(cur: Any, schema_name: str, redshifts: str) -> int:
    """Every row's flags (:func:`update_all_sql` in one part); rows changed."""
    changed = 0
    for statement in update_all_sql(schema_name, redshifts):
        cur.execute(statement)
        if (cur.statusmessage or "").startswith("UPDATE"):
            changed += cur.rowcount  # the two UPDATEs
    return changed


def update_all_sql(schema_name: str, redshifts: str = "ztile", part: int = 0,
                   parts: int = 1) -> list[sql.Composable]:
    """The statements flagging every row of ``redshifts`` whose TARGETID is ``part``
    modulo ``parts`` (one transaction; the end of an initial load runs the ``parts``
    parts at once on its build sessions, :func:`specprod_db.db.builds.finishing`: a
    TARGETID's flags depend on its own rows only, so the parts touch disjoint rows).

    The window functions run only over the TARGETIDs with more than one row; a
    TARGETID with one row gets :func:`single_flags_sql` without sorting anything.
    Sorting every row of the table three times (one window partition per subset) was
    the costliest step of the end of an initial load, and most TARGETIDs have one
    spectrum."""
    table = qualified(schema_name, redshifts)
    multi = sql.Identifier(f"_multi_{redshifts}")
    mine = sql.SQL("TRUE") if parts == 1 else sql.SQL("mod(targetid, {}) = {}").format(
        sql.Literal(int(parts)), sql.Literal(int(part)))
    single = single_flags_sql()
    names = [sql.Identifier(n) for n in FLAG_COLUMNS]
    values = sql.SQL(", ").join(single[n] for n in FLAG_COLUMNS)
    return [
        # whole-table work: hash joins, whatever the planner guesses of a table not
        # analysed yet (a freshly bulk-loaded ztile): it merge-joined the whole table
        # sorted on disk by its numeric id, 4-5 s a part instead of 1 s on 25
        # full-size tiles
        sql.SQL("SET LOCAL enable_nestloop = off; SET LOCAL enable_mergejoin = off"),
        sql.SQL("DROP TABLE IF EXISTS {}").format(multi),
        sql.SQL("CREATE TEMPORARY TABLE {} ON COMMIT DROP AS SELECT targetid FROM {} "
                "WHERE {} GROUP BY targetid HAVING count(*) > 1").format(multi, table, mine),
        sql.SQL("ANALYZE {}").format(multi),
        _flags_sql(schema_name, sql.SQL("JOIN {} AS s ON s.targetid = z.targetid")
                   .format(multi), redshifts, row=True),
        sql.SQL("""
        UPDATE {table} AS t SET ({names}) = ({values})
        WHERE {mine} AND NOT EXISTS (SELECT 1 FROM {multi} m WHERE m.targetid = t.targetid)
          AND ({names_t}) IS DISTINCT FROM ({values})""").format(
            table=table, names=sql.SQL(", ").join(names), values=values, multi=multi,
            mine=mine,
            names_t=sql.SQL(", ").join(sql.SQL("t.{}").format(n) for n in names)),
        sql.SQL("DROP TABLE {}").format(multi),
        sql.SQL("RESET enable_nestloop; RESET enable_mergejoin")]


def analyze(conn: connection, schema_name: str, tables: Iterable[str]) -> None:
    """``ANALYZE`` each of ``tables`` in ``schema_name`` (refresh planner statistics)."""
    with conn.cursor() as cur:
        for name in tables:
            cur.execute(sql.SQL("ANALYZE {}.{}").format(sql.Identifier(schema_name),
                                                        sql.Identifier(name)))


def stale_tables(conn: connection, schema_name: str, tables: Sequence[str],
                 changed: Optional[Mapping[str, int]] = None) -> list[str]:
    """Those of ``tables`` whose planner statistics a run should refresh, in order.

    PostgreSQL's own autovacuum rule, with the server's settings: a table is stale when
    it was never analysed, or when the rows changed since its last ANALYZE reach
    ``autovacuum_analyze_threshold + autovacuum_analyze_scale_factor * reltuples``
    (50 + 10 % by default).  The rows changed are the server's
    ``n_mod_since_analyze`` plus ``changed`` (``{table: rows}``, this run's own counts:
    the server's counters are flushed asynchronously and may not yet hold the run's
    last writes).  So a morning adding 10 tiles to 1,000 analyses nothing, and the
    statistics are refreshed once changes add up, whoever (run or autovacuum) gets
    there first.
    """
    changed = changed or {}
    with conn.cursor() as cur:
        cur.execute("""
            SELECT c.relname, c.reltuples,
                   coalesce(s.n_mod_since_analyze, 0),
                   s.last_analyze IS NULL AND s.last_autoanalyze IS NULL,
                   current_setting('autovacuum_analyze_threshold')::float8,
                   current_setting('autovacuum_analyze_scale_factor')::float8
            FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
            WHERE n.nspname = %s AND c.relname = ANY(%s)
        """, (schema_name, list(tables)))
        found = {row[0]: row[1:] for row in cur.fetchall()}
    out: list[str] = []
    for name in tables:
        if name not in found:
            continue
        reltuples, modified, never, threshold, scale = found[name]
        modified += changed.get(name, 0)
        if never or reltuples < 0 or modified >= threshold + scale * max(reltuples, 0):
            out.append(name)
    return out


def changed_rows(counts: Mapping[str, Any]) -> dict[str, int]:
    """``{table: rows}`` a run changed, from its ``counts['tables']`` (rows copied under
    the table's name, rows deleted under ``{table}_deleted``, primary flags of ztile
    rows under ``primary``)."""
    out: dict[str, int] = {}
    for key, n in counts.items():
        name = "ztile" if key == "primary" else key.removesuffix("_deleted")
        out[name] = out.get(name, 0) + int(n or 0)
    return out
