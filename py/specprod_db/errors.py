"""The errors specprod-db raises on purpose, and the exit status each one means.

Only these are *expected*: bad input, a run that may not start (a bad option or
environment, a lock held ...), a database that went away or stopped the work.  Any
other exception is a bug.  Inside a task it fails that tile (or brick) like bad input
does, but it is logged with its full traceback, recorded in ``tile_state`` with status
``internal_error`` (not ``failed``) and counted apart in the run report; outside a task
it ends the whole job (:data:`EXIT_INTERNAL`).

=====  =====================================================================
exit   meaning (doc/daily.md, "Exit status")
=====  =====================================================================
0      every planned tile loaded
1      some tile failed (recorded in ``tile_state``, retried by the next run), or the
       tiles file is damaged (deletes suspended)
2      the run did not start (:class:`RunRefused`, :class:`UsageError`): nothing was
       written
3      the database stopped the work (:class:`DatabaseLost`: connection lost, server
       restarted, a statement cancelled by ``statement_timeout`` or
       ``pg_cancel_backend``, a session ended by ``idle_in_transaction_session_timeout``
       ...): committed tiles are whole, rerun
4      an unexpected error (a bug) outside any task ended the job: rerun after fixing it
=====  =====================================================================
"""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REFUSED = 2
EXIT_INTERRUPTED = 3
EXIT_INTERNAL = 4


class SpecprodDBError(Exception):
    """Base of the errors specprod-db raises on purpose; ``exit_code`` is the status."""

    exit_code: int = EXIT_FAILED


class InputError(SpecprodDBError):
    """An input file or directory is missing or unusable; the message names the file (and
    the tile or brick).  Inside a task it fails that task's tiles alone."""


class RunRefused(SpecprodDBError):
    """The run cannot start (lock held, schema missing, bad tiles file, no permission
    ...); nothing was written."""

    exit_code = EXIT_REFUSED


class UsageError(RunRefused):
    """A configuration or argument error found after parsing (``DESI_ROOT`` unset, a bad
    ``--tiles``, a schema name PostgreSQL cannot hold ...): nothing started; exit 2 like
    argparse's own refusals."""


class MassDeleteRefused(RunRefused):
    """Too many deletes in one run without ``--allow-mass-delete``."""


class StageError(RunRefused):
    """The stage directory cannot be used (missing, unwritable, full) when the run
    starts: nothing written."""


class StageWriteFailed(InputError):
    """A stage file could not be written once the run has started (disk full, quota,
    I/O error): an environment failure of the task's tiles, which fail with this one
    line (recorded, retried by the next run), never an internal error."""


class ConnectionFailed(RunRefused):
    """The database cannot be reached; the message is one line for the operator."""


class ExtensionMissing(RunRefused):
    """q3c is neither installed in the database nor installable by this user."""


class DatabaseLost(SpecprodDBError):
    """The database stopped the work: the connection broke (server restarted, session
    terminated or timed out) or the server cancelled a statement (``statement_timeout``,
    ``lock_timeout``, ``pg_cancel_backend``).  The run stops; what was committed is whole.
    :func:`specprod_db.db.connect.server_stop` tells a psycopg2 error of this kind from a
    refusal of the data."""

    exit_code = EXIT_INTERRUPTED


def one_line(err: BaseException) -> str:
    """``err`` as one line: its message with whitespace runs folded, prefixed by the
    exception's class name unless it is one of ours (whose messages say what failed)."""
    message = " ".join(str(err).split())
    if isinstance(err, SpecprodDBError):
        return message
    return f"{type(err).__name__}: {message}" if message else type(err).__name__
