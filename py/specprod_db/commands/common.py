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
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def report_errors(run):
    """Turn operator-facing failures (:class:`~specprod_db.errors.SpecprodDBError` and
    its subclasses) into one line on stderr and their ``exit_code``."""
    @functools.wraps(run)
    def wrapper(args):
        if getattr(args, "verbose", False):
            import os
            os.environ["DESI_LOGLEVEL"] = "DEBUG"
        try:
            return run(args)
        except SpecprodDBError as err:
            # one line; masked in case the message quotes a conninfo
            print(f"specprod-db: {mask(' '.join(str(err).split()))}", file=sys.stderr)
            return err.exit_code
    return wrapper
