"""The keys, foreign keys and indexes of a schema as separate *builds*.

A bulk (initial) load puts rows into tables without their per-row key and foreign-key
checks, then builds each primary key, unique constraint, unique index, foreign key,
index and q3c index once, at the end: one validating pass each instead of one check per
row.  This module owns that list and its catalog state:

* :func:`schema_builds`: every build of the tables of :mod:`specprod_db.schema`, named as
  ``init`` (:func:`specprod_db.db.ddl.create_schema`) and PostgreSQL name them
  (``ztile_pkey``, ``version_package_key``, ``ix_ztile_unique``, ``ztile_tileid_fkey``,
  ``ix_ztile_z``, ``ix_tile_q3c_ang2ipix``), each with its DROP and its ADD / CREATE
  statements (:class:`Build`, its transactions and their table locks :class:`Step`) and
  the builds it depends on (a foreign key needs the referenced key);
* :func:`bulk_builds`: those a bulk load drops (the data tables' but :data:`BULK_KEEP`);
  :func:`finishing`: the rest of the end of a bulk load (flags, CLUSTER, ANALYZE) as
  builds of their own;
* :func:`present` / :func:`missing`: what the catalog of a schema holds;
  :func:`unfinished` / :func:`unfinished_message`: the names a schema lacks, and the
  line ``status``, ``verify`` and ``combine`` print for such an *unfinished initial
  load*, with the command that finishes it (:func:`finish_command`);
* :func:`drop`: drop a set of them (one transaction).

The rows a key or a foreign key would refuse are named by
:mod:`specprod_db.db.violations`; :mod:`specprod_db.db.build_scheduler` builds what is
missing, in dependency order, on several connections at once.

Foreign keys are built in two steps by default (:data:`FK_NOT_VALID`): ``ADD CONSTRAINT
... NOT VALID`` (catalog only, a moment of SHARE ROW EXCLUSIVE on both tables), then
``VALIDATE CONSTRAINT`` (the scan, holding only SHARE UPDATE EXCLUSIVE on the
referencing table and ROW SHARE on the referenced one), so that the validations of the
five foreign keys referencing ``photometry`` run at the same time as each other and as
index builds on ``photometry``; a direct ``ADD CONSTRAINT ... FOREIGN KEY``
(:data:`FK_DIRECT`) holds SHARE ROW EXCLUSIVE on both tables for its whole scan, which
serialises them.  ``bench/bulk_mechanism.py`` measured both (40 mock tiles, 1.7 M rows, a
busy 2-core machine): the foreign keys alone on 3 sessions took 2.9-3.0 s NOT VALID
against 3.5-3.8 s direct.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from psycopg2 import sql

from specprod_db.db.sql import qualified
from specprod_db.schema import DATA_TABLES, TABLES, Table
from specprod_db.schema import table as schema_table

# --- kinds, lock modes --------------------------------------------------------------

PRIMARY_KEY = "primary key"
UNIQUE = "unique"                # a UNIQUE constraint ({table}_{column}_key)
UNIQUE_INDEX = "unique index"    # ix_{table}_unique
FOREIGN_KEY = "foreign key"
INDEX = "index"
Q3C = "q3c index"

#: Every kind, in the scheduler's order of preference (keys first: foreign keys wait
#: for them).
KINDS = (PRIMARY_KEY, UNIQUE, UNIQUE_INDEX, FOREIGN_KEY, INDEX, Q3C)

#: The end of a bulk load's work on a table that is not in the catalog
#: (:func:`finishing`): CLUSTER on its q3c index, ANALYZE.
CLUSTER = "cluster"
ANALYZE = "analyze"
#: Work of the caller's run as a step of the end of the load, before the table's builds
#: (:func:`finishing`'s ``first``: the primary flags of every row, in parts).
FIRST = "first"
CONSTRAINT_KINDS = (PRIMARY_KEY, UNIQUE, FOREIGN_KEY)
KEY_KINDS = (PRIMARY_KEY, UNIQUE, UNIQUE_INDEX)

#: Foreign-key mechanisms of
#: :func:`~specprod_db.db.build_scheduler.build_missing`.
FK_NOT_VALID = "not valid"
FK_DIRECT = "direct"

ROW_SHARE = "ROW SHARE"
ROW_EXCLUSIVE = "ROW EXCLUSIVE"
SHARE_UPDATE_EXCLUSIVE = "SHARE UPDATE EXCLUSIVE"
SHARE = "SHARE"
SHARE_ROW_EXCLUSIVE = "SHARE ROW EXCLUSIVE"
ACCESS_EXCLUSIVE = "ACCESS EXCLUSIVE"

#: Table-level lock conflicts (PostgreSQL documentation, "Table-Level Lock Modes"),
#: restricted to the modes a build takes.
_CONFLICTS = {
    ROW_SHARE: {ACCESS_EXCLUSIVE},
    ROW_EXCLUSIVE: {SHARE, SHARE_ROW_EXCLUSIVE, ACCESS_EXCLUSIVE},
    SHARE_UPDATE_EXCLUSIVE: {SHARE_UPDATE_EXCLUSIVE, SHARE, SHARE_ROW_EXCLUSIVE,
                             ACCESS_EXCLUSIVE},
    SHARE: {ROW_EXCLUSIVE, SHARE_UPDATE_EXCLUSIVE, SHARE_ROW_EXCLUSIVE, ACCESS_EXCLUSIVE},
    SHARE_ROW_EXCLUSIVE: {ROW_EXCLUSIVE, SHARE_UPDATE_EXCLUSIVE, SHARE, SHARE_ROW_EXCLUSIVE,
                          ACCESS_EXCLUSIVE},
    ACCESS_EXCLUSIVE: {ROW_SHARE, ROW_EXCLUSIVE, SHARE_UPDATE_EXCLUSIVE, SHARE,
                       SHARE_ROW_EXCLUSIVE, ACCESS_EXCLUSIVE},
}

#: Builds a bulk load keeps during its bulk phase: the writer's ``INSERT ... ON
#: CONFLICT`` on ``tile`` (DO UPDATE) and ``photometry`` (DO NOTHING: the first tile
#: holding a target gives its photometry) needs their primary keys, and so do the
#: questions "which of these TARGETIDs has photometry" a load asks the database.
BULK_KEEP = frozenset({"tile_pkey", "photometry_pkey"})

#: Those it keeps when the root writes alone and knows photometry's TARGETIDs
#: (:mod:`specprod_db.load.photometry_ids`): no statement of the bulk phase reads
#: ``photometry`` then, and its key cost the COPY of its wide rows 1.9x (doc/initial.rst).
BULK_KEEP_ALONE = frozenset({"tile_pkey"})

#: Catalog states (:func:`present`).
DONE = "done"
NOT_VALIDATED = "not validated"   # a foreign key added NOT VALID, not yet validated


# --- the builds ---------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    """One transaction of a build: its statement and the table locks it takes."""
    build: Build
    label: str
    statement: sql.Composable
    locks: tuple[tuple[str, str], ...]

    @property
    def name(self) -> str:
        return f"{self.build.name}: {self.label}"

    def conflicts(self, other: Step) -> bool:
        """True when this step would wait for ``other``'s locks (or the reverse)."""
        return any(t == u and m2 in _CONFLICTS[m1]
                   for t, m1 in self.locks for u, m2 in other.locks)


@dataclass(frozen=True)
class Build:
    """A key, foreign key or index of one table, built apart from the table's rows.

    ``columns`` are the key's or index's columns (for a q3c index: ``(ra, dec)``);
    ``references`` is ``(table, column)`` for a foreign key; ``depends`` names the
    builds that must exist first (a foreign key: the referenced table's key).
    """
    name: str
    table: str
    kind: str
    columns: tuple[str, ...]
    references: tuple[str, str] | None = None
    depends: tuple[str, ...] = field(default=())
    #: the statements of a :data:`FIRST` build, run in one transaction
    statements: tuple[sql.Composable, ...] = field(default=(), compare=False)

    @property
    def is_constraint(self) -> bool:
        return self.kind in CONSTRAINT_KINDS

    def drop_sql(self, schema_name: str) -> sql.Composable:
        """``ALTER TABLE ... DROP CONSTRAINT IF EXISTS`` or ``DROP INDEX IF EXISTS``."""
        if self.is_constraint:
            return sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(
                qualified(schema_name, self.table), sql.Identifier(self.name))
        return sql.SQL("DROP INDEX IF EXISTS {}").format(
            qualified(schema_name, self.name))

    def create_sql(self, schema_name: str, not_valid: bool = False) -> sql.Composable:
        """The ``ALTER TABLE ... ADD CONSTRAINT`` or ``CREATE [UNIQUE] INDEX`` making this
        build as ``init`` does (``not_valid``: a foreign key added ``NOT VALID``)."""
        target = qualified(schema_name, self.table)
        name = sql.Identifier(self.name)
        cols = sql.SQL(", ").join(map(sql.Identifier, self.columns))
        if self.kind == PRIMARY_KEY:
            return sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY ({})").format(
                target, name, cols)
        if self.kind == UNIQUE:
            return sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} UNIQUE ({})").format(
                target, name, cols)
        if self.kind == FOREIGN_KEY:
            assert self.references is not None
            rtable, rcol = self.references
            return sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) "
                           "REFERENCES {} ({}){}").format(
                target, name, cols, qualified(schema_name, rtable), sql.Identifier(rcol),
                sql.SQL(" NOT VALID" if not_valid else ""))
        if self.kind == UNIQUE_INDEX:
            return sql.SQL("CREATE UNIQUE INDEX {} ON {} ({})").format(name, target, cols)
        if self.kind == INDEX:
            return sql.SQL("CREATE INDEX {} ON {} ({})").format(name, target, cols)
        if self.kind == CLUSTER:
            return sql.SQL("CLUSTER {} USING {}").format(
                target, sql.Identifier(f"ix_{self.table}_q3c_ang2ipix"))
        if self.kind == ANALYZE:
            return sql.SQL("ANALYZE {}").format(target)
        if self.kind == FIRST:
            return sql.SQL("; ").join(self.statements)
        ra, dec = self.columns
        return sql.SQL("CREATE INDEX {} ON {} (q3c_ang2ipix({}, {}))").format(
            name, target, sql.Identifier(ra), sql.Identifier(dec))

    def validate_sql(self, schema_name: str) -> sql.Composable:
        """``ALTER TABLE ... VALIDATE CONSTRAINT`` of a foreign key added NOT VALID."""
        return sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(
            qualified(schema_name, self.table), sql.Identifier(self.name))

    def steps(self, schema_name: str, fk: str = FK_NOT_VALID,
              state: str | None = None) -> list[Step]:
        """The transactions making this build from catalog ``state`` (None: absent;
        :data:`NOT_VALIDATED`: only the validation is left)."""
        if self.kind == FOREIGN_KEY:
            assert self.references is not None
            parent = self.references[0]
            if state == NOT_VALIDATED:
                return [self._validate(schema_name, parent)]
            if fk == FK_DIRECT:
                return [Step(self, "add", self.create_sql(schema_name),
                             ((self.table, SHARE_ROW_EXCLUSIVE),
                              (parent, SHARE_ROW_EXCLUSIVE)))]
            if fk != FK_NOT_VALID:
                raise ValueError(f"foreign-key mechanism {fk!r}: {FK_NOT_VALID!r} or "
                                 f"{FK_DIRECT!r}")
            return [Step(self, "add not valid", self.create_sql(schema_name, True),
                         ((self.table, SHARE_ROW_EXCLUSIVE), (parent, SHARE_ROW_EXCLUSIVE))),
                    self._validate(schema_name, parent)]
        if self.kind in (CLUSTER, ANALYZE, FIRST):
            mode = {CLUSTER: ACCESS_EXCLUSIVE, ANALYZE: SHARE_UPDATE_EXCLUSIVE,
                    FIRST: ROW_EXCLUSIVE}[self.kind]
            return [Step(self, self.kind, self.create_sql(schema_name),
                         ((self.table, mode),))]
        mode = ACCESS_EXCLUSIVE if self.is_constraint else SHARE
        return [Step(self, "add" if self.is_constraint else "create",
                     self.create_sql(schema_name), ((self.table, mode),))]

    def _validate(self, schema_name: str, parent: str) -> Step:
        return Step(self, "validate", self.validate_sql(schema_name),
                    ((self.table, SHARE_UPDATE_EXCLUSIVE), (parent, ROW_SHARE)))


def _key_of(t: Table, column: str) -> str:
    """The build name of ``t``'s key on ``column`` alone (what a foreign key needs)."""
    if tuple(t.primary_key) == (column,):
        return f"{t.name}_pkey"
    if column in t.unique_columns:
        return f"{t.name}_{column}_key"
    raise ValueError(f"{t.name}.{column} is referenced by a foreign key but is neither "
                     f"{t.name}'s primary key nor a unique column")


def table_builds(t: Table) -> tuple[Build, ...]:
    """The builds of table ``t``: primary key, unique constraints, unique index, foreign
    keys, indexes, q3c index (the order ``init`` creates them in)."""
    out = [Build(f"{t.name}_pkey", t.name, PRIMARY_KEY, tuple(t.primary_key))]
    out += [Build(f"{t.name}_{c}_key", t.name, UNIQUE, (c,)) for c in t.unique_columns]
    if t.unique:
        out.append(Build(f"ix_{t.name}_unique", t.name, UNIQUE_INDEX, tuple(t.unique)))
    for col, ref in t.foreign_keys.items():
        rtable, rcol = ref.split(".")
        out.append(Build(f"{t.name}_{col}_fkey", t.name, FOREIGN_KEY, (col,),
                         references=(rtable, rcol),
                         depends=(_key_of(schema_table(rtable), rcol),)))
    out += [Build(f"ix_{t.name}_{c}", t.name, INDEX, (c,)) for c in t.indexes]
    if t.q3c:
        out.append(Build(f"ix_{t.name}_q3c_ang2ipix", t.name, Q3C, tuple(t.q3c)))
    return tuple(out)


def schema_builds(tables: Iterable[Table] = TABLES) -> tuple[Build, ...]:
    """Every build of ``tables`` (default: all of them), table by table."""
    return tuple(b for t in tables for b in table_builds(t))


def bulk_builds(keep: Iterable[str] = BULK_KEEP) -> tuple[Build, ...]:
    """The builds a bulk load drops before its bulk phase and builds after it: those of
    the data tables (not ``version``, which the load does not write, nor the bookkeeping
    tables) but the names in ``keep``."""
    kept = set(keep)
    return tuple(b for b in schema_builds(t for t in DATA_TABLES if t.name != "version")
                 if b.name not in kept)


def finishing(todo: Sequence[Build], tables: Iterable[Table] = TABLES,
              first: Mapping[str, Sequence[Sequence[sql.Composable]]] | None = None
              ) -> list[Build]:
    """``todo`` (the builds a bulk load lacks) with the rest of the end of that load, as
    builds the scheduler runs with them on its sessions:

    * ``first``: ``{table: [statements of part 1, of part 2, ...]}``, work on a table
      before its builds (the primary flags of every row: on the bare table an UPDATE
      writes no index entry), each part a step of its own (``first_TABLE_K``, ROW
      EXCLUSIVE: the parts run at once, on rows disjoint by TARGETID);
    * each table with a q3c index CLUSTERed on it (as the old tool did after loading) as
      soon as that index exists and before the table's other missing builds — CLUSTER
      rewrites the table and rebuilds every index it has, so an index built before it
      would be built twice;
    * then every table ANALYZEd once its builds are done (the q3c expression index has
      statistics of its own).

    They are not in the catalog: each run of the end does them again."""
    out: list[Build] = []
    names = {b.name for b in todo}
    first = first or {}
    for t in tables:
        mine = [b for b in todo if b.table == t.name]
        before = [Build(f"first_{t.name}_{k}", t.name, FIRST, (), statements=tuple(part))
                  for k, part in enumerate(first.get(t.name, ()))]
        ahead = tuple(b.name for b in before)
        mine = [replace(b, depends=b.depends + ahead) for b in mine]
        if t.q3c:
            q3c = f"ix_{t.name}_q3c_ang2ipix"
            cluster = Build(f"cluster_{t.name}", t.name, CLUSTER, (),
                            depends=((q3c,) if q3c in names else ()) + ahead)
            mine = [b if b.kind == Q3C else replace(b, depends=b.depends + (cluster.name,))
                    for b in mine]
            mine.append(cluster)
        mine = before + mine
        out += mine
        out.append(Build(f"analyze_{t.name}", t.name, ANALYZE, (),
                         depends=tuple(b.name for b in mine)))
    return out


def by_name(name: str) -> Build:
    """The build of the schema called ``name``."""
    for b in schema_builds():
        if b.name == name:
            return b
    raise KeyError(f"no build {name!r}")


# --- the catalog --------------------------------------------------------------------

def present(conn: Any, schema_name: str) -> dict[str, str]:
    """``{name: state}`` of the constraints and indexes of ``schema_name`` in the catalog
    (``DONE``, or ``NOT_VALIDATED`` for a constraint added NOT VALID); invalid indexes
    are left out (a failed CREATE INDEX CONCURRENTLY: not ours)."""
    with conn.cursor() as cur:
        out = present_in(cur, schema_name)
    conn.rollback()
    return out


def present_in(cur: Any, schema_name: str) -> dict[str, str]:
    """:func:`present` read with cursor ``cur``, inside the caller's transaction (left
    open)."""
    cur.execute("""SELECT c.conname, c.convalidated FROM pg_constraint c
                   JOIN pg_namespace n ON n.oid = c.connamespace
                   WHERE n.nspname = %s AND c.contype IN ('p', 'u', 'f')""",
                (schema_name,))
    out = {name: DONE if valid else NOT_VALIDATED for name, valid in cur.fetchall()}
    cur.execute("""SELECT i.relname FROM pg_index x
                   JOIN pg_class i ON i.oid = x.indexrelid
                   JOIN pg_namespace n ON n.oid = i.relnamespace
                   WHERE n.nspname = %s AND x.indisvalid""", (schema_name,))
    for (name,) in cur.fetchall():
        out.setdefault(name, DONE)
    return out


def catalog_state(b: Build, catalog: Mapping[str, str]) -> str | None:
    """``b``'s state in ``catalog`` (:func:`present`); a key's index without its
    constraint (not something we make) counts as absent."""
    return catalog.get(b.name)


def missing(conn: Any, schema_name: str,
            builds: Iterable[Build] | None = None) -> list[Build]:
    """The builds of ``builds`` (default: :func:`schema_builds`) that ``schema_name``
    lacks or holds only partly (a foreign key not validated)."""
    catalog = present(conn, schema_name)
    return [b for b in (schema_builds() if builds is None else builds)
            if catalog_state(b, catalog) != DONE]


# --- an unfinished initial load -----------------------------------------------------

#: What ``status``, ``verify``, ``combine`` and ``load`` call a schema lacking builds.
UNFINISHED = "unfinished initial load"


def finish_command(schema_name: str) -> str:
    """The command that finishes an unfinished initial load of ``schema_name``."""
    return f"specprod-db load --initial --schema {schema_name}"


def unfinished(cur: Any, schema_name: str) -> list[str]:
    """Names of the builds ``schema_name`` lacks or holds only partly (a foreign key
    added NOT VALID), read with cursor ``cur`` inside the caller's transaction; [] for a
    finished schema.  Non-empty after an initial load that stopped before the end of
    its builds (or whose keys refused rows)."""
    catalog = present_in(cur, schema_name)
    return [b.name for b in schema_builds() if catalog_state(b, catalog) != DONE]


def unfinished_message(schema_name: str, names: Sequence[str]) -> str:
    """One line: the schema is an unfinished initial load, what it lacks, how to finish."""
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return (f"{UNFINISHED}: {schema_name} lacks {len(names)} key(s)/index(es) ({shown}); "
            f"finish it with `{finish_command(schema_name)}`")


def drop(conn: Any, schema_name: str, builds: Iterable[Build]) -> list[str]:
    """Drop ``builds`` from ``schema_name`` in one transaction (foreign keys first, keys
    last); returns the names that were there.  A key still referenced by a foreign key
    that is not dropped too is refused (ValueError) before anything is dropped."""
    chosen = list(builds)
    names = {b.name for b in chosen}
    catalog = present(conn, schema_name)
    for other in schema_builds():
        if other.name in catalog and other.name not in names:
            needed = names & set(other.depends)
            if needed:
                raise ValueError(f"cannot drop {', '.join(sorted(needed))}: "
                                 f"{other.name} needs it and is not dropped")
    order = sorted(chosen, key=lambda b: (b.kind != FOREIGN_KEY, b.kind in KEY_KINDS))
    dropped = []
    try:
        with conn.cursor() as cur:
            for b in order:
                if b.name in catalog:
                    cur.execute(b.drop_sql(schema_name))
                    dropped.append(b.name)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return dropped
