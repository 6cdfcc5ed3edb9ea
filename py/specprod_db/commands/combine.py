"""``specprod-db combine``: a schema of views over two or more loaded production schemas.

``specprod-db combine --schema fujilupe fuji guadalupe`` creates ``fujilupe`` with, per
data table, ``{table}_all`` (UNION ALL of the sources, ``specprod`` column added) and
``{table}`` (each tile and object once, from the last source listed that holds it;
primary flags of ``ztile`` and ``zpix`` recomputed over the combination).  Nothing is
copied.  Rules and costs: :mod:`specprod_db.ops.combine`, doc/combine.md.
"""
from specprod_db.commands.common import (add_db_arguments, add_grant_arguments, grant_roles,
                                         report_errors, schema_name)
from specprod_db.db import ddl
from specprod_db.db.connect import connect
from specprod_db.log import get_logger
from specprod_db.ops import combine


def add_arguments(parser):
    parser.add_argument("--schema", required=True, type=schema_name,
                        help="the combined schema to create (views only)")
    parser.add_argument("sources", nargs="+", metavar="SOURCE", type=schema_name,
                        help="loaded production schemas, oldest first: where they overlap "
                             "(a tile, a TARGETID), the last one listed wins")
    add_db_arguments(parser)
    parser.add_argument("--replace", action="store_true",
                        help="drop and recreate --schema if it is a combination made by "
                             "this command (never a production schema)")
    add_grant_arguments(parser)


@report_errors
def run(args):
    log = get_logger()
    conn = connect(args.db)
    try:
        sources = combine.create(conn, args.schema, args.sources, replace=args.replace)
        granted = ddl.grant_read(conn, args.schema, grant_roles(args))
    finally:
        conn.close()
    for s in sources:
        log.info("source %d: schema %s, specprod %r (from the %s)%s", s.rank, s.schema,
                 s.specprod, s.specprod_from,
                 ", preferred where sources overlap" if s.rank == len(sources) else "")
    log.info("schema %s: %d views (sources, {table}_all, {table}); read access: %s",
             args.schema, len(combine.views()), ", ".join(granted) or "none")
    return 0
