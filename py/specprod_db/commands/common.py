"""Options and error handling shared by the sub-commands."""
import functools
import sys

from ..conninfo import mask
from ..db import DSN_ENV
from ..errors import SpecprodDBError


def add_schema_argument(parser, required=True, default=None):
    parser.add_argument("--schema", required=required, default=default,
                        help="database schema of the production (e.g. daily)")


def add_db_arguments(parser):
    parser.add_argument("--db", default=None, metavar="CONNINFO",
                        help=f"libpq conninfo or URI; default ${DSN_ENV}, "
                             "else the PG* variables and ~/.pgpass")
    add_log_arguments(parser)


def add_log_arguments(parser):
    """``-v`` (debug logging) or ``-q`` (warnings and errors only); see
    :func:`report_errors`, which applies them."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    g.add_argument("-q", "--quiet", action="store_true",
                   help="log warnings and errors only (DESI_LOGLEVEL=WARNING); a "
                        "command's own result (plan, load report, status ...) is still "
                        "printed")


def add_grant_arguments(parser):
    """``--grant ROLE`` (repeatable), ``--public``, ``--no-grant``; see :func:`grant_roles`."""
    parser.add_argument("--grant", action="append", default=None, metavar="ROLE",
                        help="grant read access to ROLE (repeatable; default: desi)")
    parser.add_argument("--public", action="store_true",
                        help="also grant read access to desi_public (public productions)")
    parser.add_argument("--no-grant", action="store_true", help="grant nothing")


def grant_roles(args):
    """The read roles :func:`add_grant_arguments` asked for."""
    roles = [] if args.no_grant else (args.grant or ["desi"])
    return roles + (["desi_public"] if args.public else [])


def plan_options(args, command):
    """``(Options for a read-only plan, None)``, or ``(None, why)`` when the input
    locations are unknown: what ``status`` and ``report`` show as pending tiles."""
    from ..errors import InputError, one_line
    from ..paths import paths_from_args
    from ..pipeline import Options  # not for --help (the pipeline's imports are heavy)
    try:
        return Options(schema=args.schema, paths=paths_from_args(args), dsn=args.db,
                       dry_run=True, command=command), None
    except InputError as err:
        return None, f"input locations unknown: {one_line(err)}"


def connect_to_schema(args):
    """A connection to ``--db``, after checking that ``--schema`` exists
    (:class:`~specprod_db.errors.RunRefused` otherwise)."""
    from .. import db
    from ..errors import RunRefused
    conn = db.connect(args.db)
    if not db.schema_exists(conn, args.schema):
        conn.close()
        raise RunRefused(f"schema {args.schema} does not exist")
    return conn


def tile_list(text):
    """``--tiles 1000,1001`` (argparse type): a list of TILEIDs."""
    import argparse
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of TILEIDs: {text!r}") from None


def report_errors(run):
    """Turn operator-facing failures (:class:`~specprod_db.errors.SpecprodDBError` and
    its subclasses) into one line on stderr and their ``exit_code``."""
    @functools.wraps(run)
    def wrapper(args):
        import os
        before = os.environ.get("DESI_LOGLEVEL")
        if getattr(args, "verbose", False):
            os.environ["DESI_LOGLEVEL"] = "DEBUG"
        elif getattr(args, "quiet", False):
            os.environ["DESI_LOGLEVEL"] = "WARNING"
        try:
            return run(args)
        except SpecprodDBError as err:
            # one line; masked in case the message quotes a conninfo
            print(f"specprod-db: {mask(' '.join(str(err).split()))}", file=sys.stderr)
            return err.exit_code
        finally:  # a command called in-process (tests, the demo) leaves no level behind
            if before is None:
                os.environ.pop("DESI_LOGLEVEL", None)
            else:
                os.environ["DESI_LOGLEVEL"] = before
    return wrapper
