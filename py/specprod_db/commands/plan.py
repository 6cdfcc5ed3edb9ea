"""``specprod-db plan``: print INSERT/UPDATE/DELETE per tile with the reason; touch nothing.

The same as ``specprod-db load --dry-run`` (one rank, no MPI needed).
"""
from .. import mpi
from . import load as load_command
from .common import report_errors


def add_arguments(parser):
    load_command.add_arguments(parser, dry_run_flag=False)


@report_errors
def run(args):
    from ..pipeline import load     # here: 'plan --help' needs no pipeline
    return load(mpi.SerialComm(), load_command.options_from_args(args, dry_run=True))
