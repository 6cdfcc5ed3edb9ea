"""Combined productions: one schema of views over two or more loaded production schemas.

``specprod-db combine --schema fujilupe fuji guadalupe`` creates the schema ``fujilupe``
holding only views (nothing is copied; doc/combine.md says why and what it costs):

* ``{table}_all`` for every data table (``schema.DATA_TABLES``): the ``UNION ALL`` of the
  sources' tables, every row of every source, with a ``specprod`` column added last;
* ``{table}`` (the table's own name) for every data table but ``version``: the
  de-duplicated union, each tile and each object once, from the *preferred* source, with
  the same ``specprod`` column; in ``ztile`` and ``zpix`` the primary-spectrum flags are
  recomputed over the combination (:mod:`specprod_db.load.finalize`'s rule);
* ``sources``: the sources in argument order with their rank and production name.

**The rule** (:func:`dedup_rule`): sources are ranked by their position on the command
line and the **last one wins** (list them oldest first: ``fuji guadalupe``, ``loa
daily``).  A key held by several sources is taken from the highest-ranked source
holding it:

* the tables whose rows belong to a tile (``schema.tile_tables()``: tile, exposure,
  frame, fiberassign, potential, target, ztile): the key is the TILEID, looked up in each
  source's ``tile`` table, so all of a tile's rows come from one source (its exposures,
  frames and redshifts stay consistent; ``ztile.targetphotid`` finds its ``target`` row);
* ``photometry``: TARGETID; ``zpix``: (TARGETID, SURVEY, PROGRAM), its unique key.

Argument order, not a recorded date: the order is explicit, stable and the operator's
choice (a date such as the last ``load_run`` would make ``daily``, loaded every morning,
win every tile over a curated named production, and would change the combination under
its readers every day).

Each de-duplicated view is a ``UNION ALL`` of one branch per source, the rows of source
*k* having ``NOT EXISTS`` for the key in each higher-ranked source (an anti-join on that
source's primary key or unique index).  Unlike ``DISTINCT ON`` over the union, this
keeps every branch a plain scan of one table, so the planner pushes a predicate (a q3c
cone search, ``targetid = ...``) into each branch and uses each source's own index.

The production name in ``specprod`` is the ``specprod`` row of the source's ``version``
table (written by ``init``, :func:`specprod_db.db.migrate.record_versions`), else the schema
name; the ``sources`` view says which (``specprod_from``).  Two sources with the same
name are refused: the column would not tell their rows apart.
"""
from dataclasses import dataclass

import psycopg2
from psycopg2 import sql

from specprod_db.db import builds
from specprod_db.db.sql import transaction
from specprod_db.errors import RunRefused
from specprod_db.load import finalize
from specprod_db.schema import DATA_TABLES, tile_tables

#: First words of the comment on a combined schema; ``--replace`` drops only such schemas.
MARKER = "specprod-db combine"

#: Tables whose de-duplicated view recomputes the primary flags, with their tie-break
#: columns (zpix has no tileid: its rows are unique per TARGETID, SURVEY, PROGRAM).
REDSHIFT_TABLES = {"ztile": finalize.TIE_BREAK, "zpix": ("id",)}

#: Type of the added ``specprod`` column (that of ``version.version``).
SPECPROD_TYPE = "varchar(20)"


@dataclass(frozen=True)
class Source:
    """A source schema: ``rank`` 1 is the first argument; the highest rank is preferred."""
    rank: int
    schema: str
    specprod: str
    specprod_from: str  # 'version table' or 'schema name'


def dedup_rule(table):
    """``(key table, key columns)`` of a de-duplicated view, or None (``version``): a row
    of a source is in the view unless a higher-ranked source's ``key table`` holds the
    same key."""
    if table.name == "version":
        return None
    if table.name in {t.name for t in tile_tables()}:
        return "tile", ("tileid",)
    return table.name, (table.unique or table.primary_key)


# --- sources ------------------------------------------------------------------------------

def inspect_source(cur, schema_name, rank):
    """The :class:`Source` of ``schema_name``, or :class:`RunRefused` saying why it is
    not a loaded specprod-db production schema."""
    cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema_name,))
    if cur.fetchone() is None:
        raise RunRefused(f"source schema {schema_name} does not exist; nothing created")
    cur.execute("""
        SELECT c.relname, c.relkind, a.attname
        FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
        LEFT JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attnum > 0
                                    AND NOT a.attisdropped
        WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')""", (schema_name,))
    kinds, columns = {}, {}
    for relname, relkind, attname in cur.fetchall():
        kinds[relname] = relkind
        columns.setdefault(relname, set()).add(attname)
    problems = []
    for t in DATA_TABLES:
        if t.name not in kinds:
            problems.append(f"no table {t.name}")
        elif kinds[t.name] not in ("r", "p"):
            problems.append(f"{t.name} is not a table"
                            + (" (a combined schema? combine its sources instead)"
                               if kinds[t.name] == "v" else ""))
        else:
            missing = [c for c in t.names if c not in columns[t.name]]
            if missing:
                problems.append(f"{t.name} lacks column(s) {', '.join(missing)}")
    if problems:
        raise RunRefused(f"source schema {schema_name} is not a specprod-db production "
                         f"schema: {'; '.join(problems)}; nothing created")
    denied = []
    for t in DATA_TABLES:
        cur.execute("SELECT has_table_privilege(format('%%I.%%I', %s, %s), 'SELECT')",
                    (schema_name, t.name))
        if not cur.fetchone()[0]:
            denied.append(t.name)
    if denied:
        raise RunRefused(f"no SELECT privilege on {schema_name}.{{{', '.join(denied)}}}; "
                         "nothing created")
    lacking = builds.unfinished(cur, schema_name)
    if lacking:  # its keys unchecked, its views would lack the indexes they rely on
        raise RunRefused(f"source schema {schema_name} is an "
                         f"{builds.unfinished_message(schema_name, lacking)}; nothing "
                         f"created")
    cur.execute(sql.SQL("SELECT version FROM {}.version WHERE package = 'specprod'").format(
        sql.Identifier(schema_name)))
    row = cur.fetchone()
    if row and row[0] and row[0].strip():
        return Source(rank, schema_name, row[0].strip(), "version table")
    return Source(rank, schema_name, schema_name, "schema name")


def inspect_sources(cur, schema_names):
    """:class:`Source` of each name, in argument order (ranks 1, 2 ...), or RunRefused."""
    if len(schema_names) < 2:
        raise RunRefused("combine needs at least two source schemas")
    repeated = sorted({s for s in schema_names if schema_names.count(s) > 1})
    if repeated:
        raise RunRefused(f"source schema(s) given more than once: {', '.join(repeated)}")
    sources = [inspect_source(cur, name, rank) for rank, name in enumerate(schema_names, 1)]
    by_name = {}
    for s in sources:
        by_name.setdefault(s.specprod, []).append(s.schema)
    clashes = {k: v for k, v in by_name.items() if len(v) > 1}
    if clashes:
        raise RunRefused("sources with the same production name would not be told apart by "
                         "the specprod column: " + "; ".join(
                             f"{', '.join(v)} are all {k!r}" for k, v in clashes.items())
                         + " (the 'specprod' row of their version tables, else the schema "
                         "name); nothing created")
    return sources


# --- the views ----------------------------------------------------------------------------

def _specprod(source):
    return sql.SQL("{}::{} AS specprod").format(sql.Literal(source.specprod),
                                               sql.SQL(SPECPROD_TYPE))


def _columns(table, alias):
    return sql.SQL(", ").join(sql.Identifier(alias, c) for c in table.names)


def union_sql(table, sources):
    """SELECT of every row of ``table`` in every source, plus ``specprod``."""
    return sql.SQL("\nUNION ALL\n").join(
        sql.SQL("SELECT {cols}, {sp} FROM {t} AS x").format(
            cols=_columns(table, "x"), sp=_specprod(s),
            t=sql.Identifier(s.schema, table.name))
        for s in sources)


def dedup_sql(table, sources):
    """SELECT of the rows of ``table`` the rule keeps (:func:`dedup_rule`), plus
    ``specprod``; flags as stored in the sources."""
    key_table, key = dedup_rule(table)
    branches = []
    for s in sorted(sources, key=lambda s: -s.rank):
        higher = [h for h in sources if h.rank > s.rank]
        where = [sql.SQL("NOT EXISTS (SELECT 1 FROM {kt} AS h WHERE {match})").format(
            kt=sql.Identifier(h.schema, key_table),
            match=sql.SQL(" AND ").join(
                sql.SQL("{} = {}").format(sql.Identifier("h", c), sql.Identifier("x", c))
                for c in key))
            for h in sorted(higher, key=lambda h: -h.rank)]
        branches.append(sql.SQL("SELECT {cols}, {sp} FROM {t} AS x{where}").format(
            cols=_columns(table, "x"), sp=_specprod(s),
            t=sql.Identifier(s.schema, table.name),
            where=sql.SQL("\nWHERE ") + sql.SQL("\n  AND ").join(where) if where
            else sql.SQL("")))
    return sql.SQL("\nUNION ALL\n").join(branches)


def flagged_sql(table, rows):
    """SELECT of ``rows`` (a SELECT of ``table``'s columns and ``specprod``) with the six
    primary flags recomputed over all of them by :func:`finalize.flag_expressions`."""
    flags = finalize.flag_expressions(REDSHIFT_TABLES[table.name])
    cols = [sql.SQL("{} AS {}").format(flags[c], sql.Identifier(c)) if c in flags
            else sql.Identifier(c) for c in table.names]
    return sql.SQL("SELECT {cols}, specprod FROM (SELECT d.*, {inv} AS inv FROM (\n{rows}\n)"
                   " AS d) AS z").format(cols=sql.SQL(", ").join(cols),
                                         inv=finalize.inv_sql("d"), rows=rows)


def view_definitions(target, sources):
    """``[(view name, SELECT, comment)]`` of the combined schema, in creation order."""
    names = ", ".join(s.schema for s in sources)
    out = [("sources", sql.SQL("SELECT * FROM (VALUES {}) AS s (rank, schema_name, specprod, "
                               "specprod_from)").format(sql.SQL(", ").join(
                                   sql.SQL("({}, {}::text, {}::{}, {}::text)").format(
                                       sql.Literal(s.rank), sql.Literal(s.schema),
                                       sql.Literal(s.specprod), sql.SQL(SPECPROD_TYPE),
                                       sql.Literal(s.specprod_from)) for s in sources)),
            "sources of this combination; where they overlap, the highest rank wins")]
    for t in DATA_TABLES:
        out.append((f"{t.name}_all", union_sql(t, sources),
                    f"every {t.name} row of {names} (UNION ALL), specprod added"))
    for t in DATA_TABLES:
        rule = dedup_rule(t)
        if rule is None:
            continue
        key_table, key = rule
        rows = dedup_sql(t, sources)
        how = (f"each {'tile' if key_table == 'tile' else ', '.join(key)}"
               f" from the last of {names} holding it")
        if t.name in REDSHIFT_TABLES:
            rows = flagged_sql(t, rows)
            how += "; primary flags recomputed over the combination"
        out.append((t.name, rows, f"{t.name} of {names}: {how}"))
    return out


# --- creating and replacing ---------------------------------------------------------------

def _describe_target(cur, target):
    """(exists, comment, kinds of its relations other than views)."""
    cur.execute("SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace "
                "WHERE nspname = %s", (target,))
    row = cur.fetchone()
    if row is None:
        return False, None, []
    cur.execute("SELECT c.relname FROM pg_class AS c JOIN pg_namespace AS n "
                "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind <> 'v'",
                (target,))
    return True, row[0], [r[0] for r in cur.fetchall()]


def _drop(cur, target):
    """Drop the views of ``target`` and the schema itself, never anything outside it:
    objects elsewhere that depend on its views make it RunRefused."""
    cur.execute("SELECT c.relname FROM pg_class AS c JOIN pg_namespace AS n "
                "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'v'",
                (target,))
    views = [r[0] for r in cur.fetchall()]
    try:
        if views:
            cur.execute(sql.SQL("DROP VIEW {}").format(sql.SQL(", ").join(
                sql.Identifier(target, v) for v in views)))
        cur.execute(sql.SQL("DROP SCHEMA {}").format(sql.Identifier(target)))
    except psycopg2.errors.DependentObjectsStillExist as err:
        detail = " ".join((err.diag.message_detail or str(err)).split())
        raise RunRefused(f"--replace refused, {target} left as it is: other objects depend "
                         f"on it or its views ({detail})") from None


def create(conn, target, schema_names, replace=False):
    """Create the combined schema ``target`` over ``schema_names`` (later wins), in one
    transaction; with ``replace``, an existing combination ``target`` is dropped first.
    Returns the list of :class:`Source`.  :class:`RunRefused` (nothing changed) when a
    source is missing or not a production schema, or ``target`` exists (without
    ``replace``, or when it is not a combination made by this command)."""
    if target in schema_names:
        raise RunRefused(f"the combined schema {target} cannot be one of its sources")
    with transaction(conn) as cur:
        sources = inspect_sources(cur, list(schema_names))
        exists, comment, others = _describe_target(cur, target)
        if exists:
            if not replace:
                raise RunRefused(f"schema {target} already exists; --replace recreates "
                                 "a combination")
            if not (comment or "").startswith(MARKER) or others:
                raise RunRefused(
                    f"--replace refused: schema {target} is not a combination made by "
                    "specprod-db combine"
                    + (f" (it holds {', '.join(sorted(others)[:5])})" if others else "")
                    + "; it is left as it is")
            _drop(cur, target)
        try:
            cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(target)))
        except psycopg2.errors.DuplicateSchema:  # another combine got there first
            raise RunRefused(f"schema {target} was created meanwhile by someone else; "
                             "nothing created") from None
        cur.execute(sql.SQL("COMMENT ON SCHEMA {} IS {}").format(
            sql.Identifier(target), sql.Literal(
                f"{MARKER}: {', '.join(schema_names)} (where they overlap, the later "
                "wins)")))
        for name, select, comment in view_definitions(target, sources):
            view = sql.Identifier(target, name)
            cur.execute(sql.SQL("CREATE VIEW {} AS\n{}").format(view, select))
            cur.execute(sql.SQL("COMMENT ON VIEW {} IS {}").format(
                view, sql.Literal(comment)))
    return sources


def views():
    """Names of the views a combination holds, in creation order."""
    return (["sources"] + [f"{t.name}_all" for t in DATA_TABLES]
            + [t.name for t in DATA_TABLES if dedup_rule(t) is not None])

