"""The errors specprod-db raises on purpose, and the exit status each one means.

Only these are *expected*: bad input, a run that may not start, a database that went
away.  Any other exception is a bug.  Inside a task it fails that tile (or brick) like
bad input does, but it is logged with its full traceback, recorded in ``tile_state``
with status ``internal_error`` (not ``failed``) and counted apart in the run report;
outside a task it ends the whole job (:data:`EXIT_INTERNAL`).

=====  =====================================================================
exit   meaning (doc/daily.md, "Exit status")
=====  =====================================================================
0      every planned tile loaded
1      some tile failed (recorded in ``tile_state``, retried by the next run), or the
       tiles file is damaged (deletes suspended)
2      the run did not start (:class:`RunRefused`): nothing was written
3      the run was interrupted (:class:`DatabaseLost`): committed tiles are whole, rerun
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

    exit_code = EXIT_FAILED


class InputError(SpecprodDBError):
    """An input file or directory is missing or unusable; the message names the file (and
    the tile or brick).  Inside a task it fails that task's tiles alone."""


class RunRefused(SpecprodDBError):
    """The run cannot start (lock held, schema missing, bad tiles file, no permission
    ...); nothing was written."""

    exit_code = EXIT_REFUSED


class MassDeleteRefused(RunRefused):
    """Too many deletes in one run without ``--allow-mass-delete``."""


class StageError(RunRefused):
    """The stage directory cannot be used (missing, unwritable, full)."""


class ConnectionFailed(RunRefused):
    """The database cannot be reached; the message is one line for the operator."""


class ExtensionMissing(RunRefused):
    """q3c is neither installed in the database nor installable by this user."""


class DatabaseLost(SpecprodDBError):
    """The connection broke while writing (server restarted or killed): stop the run."""

    exit_code = EXIT_INTERRUPTED


def one_line(err):
    """``err`` as one line: its message with whitespace runs folded, prefixed by the
    exception's class name unless it is one of ours (whose messages say what failed)."""
    message = " ".join(str(err).split())
    if isinstance(err, SpecprodDBError):
        return message
    return f"{type(err).__name__}: {message}" if message else type(err).__name__
