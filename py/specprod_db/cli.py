"""The ``specprod-db`` command: one entry point, one sub-command per job.

Each sub-command lives in the module that owns it and exposes ``add_arguments(parser)``
and ``run(args) -> int``; this module only wires them together, so ``--help`` is always
the truth about what exists.

A sub-command's module is imported only when that sub-command is parsed (it runs, or its
own ``--help`` is asked): ``specprod-db --help`` lists every command from
:data:`COMMANDS` alone, and no command pays for importing the others (the mock's, for
one, is heavy).
"""
import argparse
import importlib
import sys

#: sub-command name -> (module, one-line help)
COMMANDS = {
    "init": ("specprod_db.commands.init", "create the schema, tables and indexes of a production"),
    "plan": ("specprod_db.commands.plan", "print what a load would insert, update and delete"),
    "load": ("specprod_db.commands.load", "load tiles into the database (MPI-aware)"),
    "combine": ("specprod_db.commands.combine", "create a schema of views combining loaded productions"),
    "demo": ("specprod_db.commands.demo", "run the main job end to end on a mock production"),
    "mock": ("specprod_db.mock.cli", "write or advance a mock DESI daily production"),
    "cluster": ("specprod_db.devdb.pgcluster", "start, stop or show a private throwaway PostgreSQL cluster"),
    "status": ("specprod_db.commands.status", "tiles loaded, failed and pending, last runs, table sizes"),
    "verify": ("specprod_db.commands.verify", "check that the database holds what was loaded; touch nothing"),
    "history": ("specprod_db.commands.history", "what each load did to each tile, and why"),
    "maintain": ("specprod_db.commands.maintain", "VACUUM ANALYZE, and CLUSTER on q3c where it pays"),
    "migrate": ("specprod_db.commands.migrate", "bring a schema to the current layout version"),
    "report": ("specprod_db.commands.report", "a static HTML page of a schema: sky map, nights, runs, tables"),
    "vac": ("specprod_db.commands.vac", "load, list or drop value-added catalogs (FITS tables) as S.vac_NAME"),
}


class _LazyCommand(argparse.ArgumentParser):
    """The parser of one sub-command: imports the sub-command's module and adds its
    options (``add_arguments``, ``run``) the first time it parses, i.e. only once
    argparse has chosen this sub-command."""

    def __init__(self, *args, module, **kwargs):
        super().__init__(*args, **kwargs)
        self._module = module

    def load(self):
        if self._module is not None:
            mod = importlib.import_module(self._module)
            self._module = None
            mod.add_arguments(self)
            self.set_defaults(_run=mod.run)
        return self

    def parse_known_args(self, args=None, namespace=None):
        self.load()
        return super().parse_known_args(args, namespace)


def parser():
    """The ``specprod-db`` parser; a sub-command's options are added when it parses
    (``.load()`` on its sub-parser adds them without parsing)."""
    from specprod_db import __version__
    top = argparse.ArgumentParser(
        prog="specprod-db",
        description="Load DESI spectroscopic productions into PostgreSQL.")
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True,
                             parser_class=_LazyCommand)
    for name, (modname, helptext) in COMMANDS.items():
        sub.add_parser(name, help=helptext, description=helptext, module=modname)
    return top


def parse(options=None):
    return parser().parse_args(options)


def main(options=None):
    args = parse(options)
    return args._run(args)


if __name__ == "__main__":
    sys.exit(main())
