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
    return wrapper
