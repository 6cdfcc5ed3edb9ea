"""``specprod-db load``: bring a schema in step with the production's tiles file.

Runs alone or under ``mpiexec -n N`` / ``srun``: rank 0 plans, hands out tile and brick
tasks, and writes; the other ranks extract.  The result is the same for every N >= 1.
"""
import argparse

from specprod_db import mpi
from specprod_db.errors import UsageError, one_line
from specprod_db.paths import InputError, add_path_arguments, paths_from_args
from specprod_db.commands.common import add_db_arguments, add_schema_argument, report_errors


def add_arguments(parser, dry_run_flag=True):
    add_schema_argument(parser, required=False, default="daily")
    add_db_arguments(parser)
    add_path_arguments(parser)
    parser.add_argument("--tiles", default=None, metavar="ID,ID,..",
                        help="restrict the run to these TILEIDs")
    parser.add_argument("--stage-dir", default=None, metavar="DIR",
                        help="HDF5 stage directory of this database and schema (default: "
                             "BASE/DATABASE/SCHEMA, BASE being $SPECPROD_DB_STAGE_DIR, else "
                             "$SCRATCH/specprod-db-stage, else ./specprod-db-stage, and "
                             "DATABASE the server's system identifier and the database "
                             "name, as path segments: characters other than letters, "
                             "digits, _ and - written %%XX). A directory used for one "
                             "database and schema is refused for another, as is one "
                             "holding files specprod-db did not write")
    parser.add_argument("--stage-min-free", type=float, default=0, metavar="MIB",
                        help="refuse to start unless the stage directory has this many MiB "
                             "free (default 0: only check that it is writable)")
    if dry_run_flag:
        parser.add_argument("--dry-run", action="store_true",
                            help="print the plan (tile, action, reason) and change nothing")
    parser.add_argument("--no-delete", action="store_true",
                        help="refuse deletes: the tiles that would be deleted are SKIP "
                             "(with or without this flag, a tiles file with a line that "
                             "cannot be parsed deletes nothing and the run exits 1)")
    parser.add_argument("--allow-mass-delete", action="store_true",
                        help="allow a mass delete (see --max-delete-fraction)")
    parser.add_argument("--max-delete-fraction", type=_fraction, default=0.1, metavar="F",
                        help="a run whose deletes are more than --max-delete-count AND at "
                             "least F x the loaded tiles (deletes > N and deletes >= F x "
                             "loaded) is refused (exit 2, nothing written) unless "
                             "--allow-mass-delete is given (default 0.1: 100 deletes of "
                             "1000 loaded tiles are refused, 99 are not)")
    parser.add_argument("--max-delete-count", type=_count, default=3, metavar="N",
                        help="a run that deletes N tiles or fewer is never refused as a "
                             "mass delete, whatever the fraction (default 3: one withdrawn "
                             "tile of a small production loads without a flag)")
    parser.add_argument("--initial", action="store_true",
                        help="initial (monolithic) load of a whole production: keys, "
                             "foreign keys and indexes dropped during the COPY and built "
                             "at the end, "
                             "primary flags computed once; rerun the same command after "
                             "an interruption")
    parser.add_argument("--wave-tiles", type=_count, default=64, metavar="N",
                        help="tiles extracted, matched to the Legacy Surveys and written "
                             "together (default 64): rank 0 holds one wave's brick inputs "
                             "and Legacy Surveys rows (about 10 MB per full-size tile), "
                             "and the next wave is extracted while this one is written")
    parser.add_argument("--healpix", action=argparse.BooleanOptionalAction, default=None,
                        help="load the HEALPix coadd redshifts (zpix) of a static "
                             "production, after its tiles (default: when --specprod / "
                             "$SPECPROD is not 'daily' and --tiles is not given)")
    parser.add_argument("--writers", type=_count, default=1, metavar="K",
                        help="ranks writing to the database (default 1: rank 0 writes; "
                             "K > 1: ranks 1..K write tiles concurrently, each on its own "
                             "connection, and the job needs at least K + 2 ranks)")
    parser.add_argument("--build-connections", type=_count, default=3, metavar="K",
                        help="sessions building the keys, foreign keys and indexes at the "
                             "end of an initial load, at once (default 3)")
    parser.add_argument("--show-unchanged", action="store_true",
                        help="list unchanged tiles in the plan too")


def _fraction(text):
    import argparse
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"not a fraction between 0 and 1: {text!r}")
    return value


def _count(text):
    import argparse
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a number of tiles (integer >= 0): {text!r}")
    return value


def options_from_args(args, dry_run=None):
    from specprod_db.load.prepare import Options
    try:
        paths = paths_from_args(args)
    except InputError as err:  # DESI_ROOT unset ...: the run cannot start (exit 2)
        raise UsageError(one_line(err)) from None
    tiles = None
    if args.tiles:
        try:
            tiles = [int(t) for t in args.tiles.replace(" ", "").split(",") if t]
        except ValueError:
            raise UsageError(f"--tiles must be a comma-separated list of integers, not "
                             f"{args.tiles!r}") from None
    return Options(schema=args.schema, paths=paths, dsn=args.db,
                   stage_dir=args.stage_dir, tiles=tiles,
                   dry_run=args.dry_run if dry_run is None else dry_run,
                   no_delete=args.no_delete, allow_mass_delete=args.allow_mass_delete,
                   max_delete_fraction=args.max_delete_fraction,
                   max_delete_count=args.max_delete_count,
                   show_unchanged=args.show_unchanged, initial=args.initial,
                   wave_tiles=max(1, args.wave_tiles), writers=max(1, args.writers),
                   build_connections=max(1, args.build_connections),
                   stage_min_free=int(args.stage_min_free * 2**20),
                   healpix=args.healpix)


@report_errors
def run(args):
    from specprod_db.load.pipeline import load
    comm = mpi.world()
    try:
        opts = options_from_args(args)
    except UsageError as err:  # every rank finds it; rank 0 alone says it
        if comm.rank != 0:
            return err.exit_code
        raise
    return load(comm, opts)
