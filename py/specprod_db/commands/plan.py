"""``specprod-db plan``: print INSERT/UPDATE/DELETE per tile with the reason; touch nothing.

The same as ``specprod-db load --dry-run`` (one rank, no MPI needed).
"""
from specprod_db import mpi
from specprod_db.commands import load as load_command
from specprod_db.commands.common import report_errors


def add_arguments(parser):
    load_command.add_arguments(parser, dry_run_flag=False)


@report_errors
def run(args):
    from specprod_db.load.pipeline import load
    return load(mpi.SerialComm(), load_command.options_from_args(args, dry_run=True))
