"""Options and error handling shared by the sub-commands."""
import argparse
import functools
import sys
from contextlib import contextmanager

from specprod_db.conninfo import mask
from specprod_db.db.connect import DSN_ENV, server_stop
from specprod_db.db.sql import MAX_IDENTIFIER_BYTES, check_schema_name
from specprod_db.errors import EXIT_INTERNAL, SpecprodDBError, UsageError, one_line


def schema_name(text: str) -> str:
    """argparse type of every option or argument naming a schema: ``text`` if
    PostgreSQL can hold it unchanged (:func:`specprod_db.db.sql.check_schema_name`), else an
    argparse error (exit 2, the usage and the reason)."""
    try:
        return check_schema_name(text)
    except UsageError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_schema_argument(parser, required=True, default=None):
    parser.add_argument("--schema", required=required, default=default, type=schema_name,
                        help=f"database schema of the production (e.g. daily; at most "
                             f"{MAX_IDENTIFIER_BYTES} bytes)")


def add_db_arguments(parser):
    parser.add_argument("--db", default=None, metavar="CONNINFO",
                        help=f"libpq conninfo or URI; default ${DSN_ENV}, "
                             "else the PG* variables and ~/.pgpass")
    add_log_arguments(parser)


def add_log_arguments(parser):
    """``-v`` (debug logging) or ``-q`` (warnings and errors only); see
    :func:`report_errors` and :func:`log_level`, which apply them."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    g.add_argument("-q", "--quiet", action="store_true",
                   help="log warnings and errors only (DESI_LOGLEVEL=WARNING); the log "
                        "is on stderr, a command's own result (plan, load report, "
                        "status, --json ...) on stdout, with or without -q")


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
    from specprod_db.errors import InputError, one_line
    from specprod_db.paths import paths_from_args
    from specprod_db.load.prepare import Options
    try:
        return Options(schema=args.schema, paths=paths_from_args(args), dsn=args.db,
                       dry_run=True, command=command), None
    except InputError as err:
        return None, f"input locations unknown: {one_line(err)}"


def connect_to_schema(args):
    """A connection to ``--db``, after checking that ``--schema`` exists
    (:class:`~specprod_db.errors.RunRefused` otherwise)."""
    from specprod_db.db.connect import connect, schema_exists
    from specprod_db.errors import RunRefused
    conn = connect(args.db)
    if not schema_exists(conn, args.schema):
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


@contextmanager
def log_level(args):
    """``-v`` / ``-q`` of ``args`` applied (DEBUG / WARNING) while the block runs, in
    this process and the processes it starts; a command called in-process (tests, the
    demo) leaves no level behind."""
    from specprod_db.log import set_level
    level = "DEBUG" if getattr(args, "verbose", False) else \
        "WARNING" if getattr(args, "quiet", False) else None
    if level is None:
        yield
        return
    before = set_level(level)
    try:
        yield
    finally:
        set_level(before)


def expected_error(err: BaseException) -> "SpecprodDBError | None":
    """``err`` if it is one of ours, the :class:`~specprod_db.errors.DatabaseLost` a
    psycopg2 error means when it is the database stopping the work (a cancelled
    statement, a session ended, a lost connection: :func:`specprod_db.db.connect.server_stop`),
    else None (a bug)."""
    if isinstance(err, SpecprodDBError):
        return err
    return server_stop(err)


def print_error(err: SpecprodDBError) -> int:
    """``err`` as one line on stderr (masked in case it quotes a conninfo); its exit
    status."""
    print(f"specprod-db: {mask(' '.join(str(err).split()))}", file=sys.stderr, flush=True)
    return err.exit_code


def report_errors(run):
    """Turn operator-facing failures into one line on stderr and their exit status:
    :class:`~specprod_db.errors.SpecprodDBError` and its subclasses, and the database
    stopping the work (exit 3, :data:`~specprod_db.errors.EXIT_INTERRUPTED`); any other
    exception is a bug: its traceback and :data:`~specprod_db.errors.EXIT_INTERNAL`.
    Applies ``-v`` / ``-q`` (:func:`log_level`) while the command runs."""

    @functools.wraps(run)
    def wrapper(args):
        with log_level(args):
            try:
                return run(args)
            except Exception as err:
                expected = expected_error(err)
                if expected is not None:
                    return print_error(expected)
                import traceback
                print(f"specprod-db: internal error ({mask(one_line(err))})\n"
                      f"{traceback.format_exc()}", file=sys.stderr, flush=True)
                return EXIT_INTERNAL
    return wrapper
