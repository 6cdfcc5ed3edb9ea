"""The ``specprod-db`` command: one entry point, one sub-command per job.

Each sub-command lives in the module that owns it and exposes ``add_arguments(parser)``
and ``run(args) -> int``; this module only wires them together, so ``--help`` is always
the truth about what exists.
"""
import argparse
import importlib
import sys

#: sub-command name -> (module, one-line help)
COMMANDS = {
    "init": ("specprod_db.commands.init", "create the schema, tables and indexes of a production"),
    "plan": ("specprod_db.commands.plan", "print what a load would insert, update and delete"),
    "load": ("specprod_db.commands.load", "load tiles into the database (MPI-aware)"),
    "demo": ("specprod_db.commands.demo", "run the main job end to end on a mock production"),
    "mock": ("specprod_db.mock.cli", "write or advance a mock DESI daily production"),
    "cluster": ("specprod_db.pgcluster", "start, stop or show a private throwaway PostgreSQL cluster"),
}


def parse(options=None):
    parser = argparse.ArgumentParser(
        prog="specprod-db",
        description="Load DESI spectroscopic productions into PostgreSQL.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (modname, helptext) in COMMANDS.items():
        p = sub.add_parser(name, help=helptext, description=helptext)
        mod = importlib.import_module(modname)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser.parse_args(options)


def main(options=None):
    args = parse(options)
    return args._run(args)


if __name__ == "__main__":
    sys.exit(main())
