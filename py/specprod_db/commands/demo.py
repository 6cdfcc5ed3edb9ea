"""``specprod-db demo``: the main job end to end on an embedded default.

Writes a mock DESI daily production, creates a schema in the configured database (else in
a private throwaway PostgreSQL cluster), loads it with ``mpiexec -n 4``, advances the mock
production by one morning and loads again (the daily INSERT/UPDATE path), then prints
what the database holds and a q3c cone search.
"""
import os
import shutil
import subprocess
import sys

from psycopg2 import sql

from specprod_db.commands.common import report_errors, schema_name
from specprod_db.conninfo import mask, mask_argv
from specprod_db.db.connect import connect, resolve_dsn
from specprod_db.db.sql import qualified
from specprod_db.devdb import pgcluster
from specprod_db.log import get_logger


def add_arguments(parser):
    parser.add_argument("--db", default=None, metavar="CONNINFO",
                        help="database to use (default: the configured server, else a "
                             "private cluster)")
    parser.add_argument("--schema", default="demo", type=schema_name,
                        help="schema to (re)create (default demo)")
    parser.add_argument("--outdir", default=os.path.abspath("specprod-db-demo"),
                        help="where the mock production and stage files go")
    parser.add_argument("--tiles", type=int, default=8, help="tiles on the first day")
    parser.add_argument("--ranks", type=int, default=4, help="MPI ranks (default 4)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("-v", "--verbose", action="store_true")


def _mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else shutil.which("mpiexec")


def _command(ranks):
    exe = os.path.join(os.path.dirname(sys.executable), "specprod-db")
    base = [exe] if os.path.exists(exe) else [sys.executable, "-m", "specprod_db.cli"]
    mpiexec = _mpiexec()
    if ranks > 1 and mpiexec:
        return [mpiexec, "-n", str(ranks)] + base
    return base


def _run(argv, env):
    log = get_logger()
    log.info("$ %s", " ".join(mask_argv(argv)))
    return subprocess.run(argv, env=env).returncode


@report_errors
def run(args):
    from specprod_db.mock import advance_production, environment, make_production
    log = get_logger()
    dsn = args.db or resolve_dsn() or pgcluster.configured_dsn() or pgcluster.ensure_server()
    prod = os.path.join(args.outdir, "production")
    if os.path.exists(prod):
        shutil.rmtree(prod)
    log.info("database: %s", mask(dsn))
    log.info("writing a mock daily production (%d tiles) under %s", args.tiles, prod)
    first = make_production(prod, tiles=args.tiles, seed=args.seed)
    env = dict(os.environ, **environment(prod), SPECPROD_DB_DSN=dsn,
               SPECPROD_DB_STAGE_DIR=os.path.join(args.outdir, "stage"))
    cli = _command(1)
    load = _command(args.ranks) + ["load", "--schema", args.schema]
    steps = [cli + ["init", "--schema", args.schema, "--overwrite", "--yes", "--no-grant"],
             cli + ["plan", "--schema", args.schema], load]
    for argv in steps:
        code = _run(argv, env)
        if code not in (0, 1):
            return code
    first_code = code
    log.info("advancing the mock production by one morning")
    second = advance_production(prod)
    log.info("night %s: new tiles %s, re-observed %s", second["night"], second["new_tiles"],
             second["changed_tiles"])
    for argv in (cli + ["plan", "--schema", args.schema], load, load):
        code = _run(argv, env)
        if code not in (0, 1):
            return code
    _show(dsn, args.schema, first)
    return max(first_code, code)


def _show(dsn, schema_name, summary):
    conn = connect(dsn)

    def table(name):
        return qualified(schema_name, name)
    with conn.cursor() as cur:
        print(f"\nschema {schema_name}:")
        for t in ("tile", "exposure", "frame", "photometry", "target", "fiberassign",
                  "potential", "ztile"):
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(table(t)))
            print(f"  {t:<12} {cur.fetchone()[0]:>9} rows")
        cur.execute(sql.SQL("SELECT tileid, tilera, tiledec FROM {} "
                            "ORDER BY tileid LIMIT 1").format(table("tile")))
        row = cur.fetchone()
        if row:
            tileid, ra, dec = row
            cur.execute(sql.SQL("SELECT count(*), count(DISTINCT f.targetid) FROM {} f "
                                "WHERE q3c_radial_query(f.target_ra, f.target_dec, "
                                "%s, %s, 0.5)").format(table("fiberassign")), (ra, dec))
            n, nt = cur.fetchone()
            print(f"  q3c cone search, 0.5 deg around tile {tileid} ({ra:.3f}, {dec:.3f}): "
                  f"{n} fiberassign rows, {nt} targets")
            cur.execute(sql.SQL("SELECT z.targetid, z.desiname, z.z, z.spectype, "
                                "z.zcat_nspec, z.zcat_primary FROM {} z "
                                "WHERE z.zcat_nspec > 1 ORDER BY z.targetid, z.tileid "
                                "LIMIT 4").format(table("ztile")))
            rows = cur.fetchall()
            if rows:
                print("  targets observed on several tiles (primary flags):")
                for r in rows:
                    print(f"    {r[0]} {r[1]} z={r[2]:.4f} {r[3]:<6} nspec={r[4]} "
                          f"primary={r[5]}")
    conn.close()
