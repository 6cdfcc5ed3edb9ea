"""``specprod-db vac load|list|drop``: value-added catalogs as tables ``S.vac_NAME``.

``vac load --schema S --name NAME FILE.fits[:HDU] ... [--key COLS] [--no-fk]
[--allow-empty]`` converts every file on the worker ranks (``mpiexec -n N``) and loads
them, in one transaction, into a new table that replaces the old version in one short
transaction (a loaded VAC is not replaced by files without a row unless
``--allow-empty``); ``vac list`` shows each VAC's rows, key, files and load time;
``vac drop`` removes one.  Types, keys, foreign keys, q3c and the swap:
:mod:`specprod_db.vac`, doc/vac.md.
"""
import json
import sys
import traceback

from specprod_db.commands.common import (add_db_arguments, add_schema_argument, log_level,
    report_errors)


def add_arguments(parser):
    import argparse
    sub = parser.add_subparsers(dest="vac_command", metavar="ACTION", required=True,
                                parser_class=argparse.ArgumentParser)
    p = sub.add_parser("load", help="load FITS tables as S.vac_NAME (MPI-aware)",
                       description="Load one or more FITS binary tables of one VAC as the "
                                   "table S.vac_NAME, replacing its previous version "
                                   "atomically. Under mpiexec the worker ranks convert the "
                                   "files; rank 0 writes.")
    add_schema_argument(p)
    p.add_argument("--name", required=True,
                   help="the VAC's name: lower-case letters, digits, single underscores; "
                        "the table is vac_NAME")
    p.add_argument("files", nargs="+", metavar="FILE.fits[:HDU]",
                   help="FITS files with the same columns; HDU a number or an EXTNAME "
                        "(default: the first binary table)")
    p.add_argument("--key", default=None, metavar="COL,COL",
                   help="key columns: a primary key (no duplicates) and foreign keys to "
                        "photometry/ztile/zpix/tile where they match (default: TARGETID "
                        "if present, else none)")
    p.add_argument("--no-key", action="store_true", help="no key, even with a TARGETID")
    p.add_argument("--no-fk", action="store_true",
                   help="no foreign key to the production's tables (and no check that "
                        "every key has a row there)")
    p.add_argument("--stage-dir", default=None, metavar="DIR",
                   help="stage directory (the load's default: BASE/DATABASE/SCHEMA); the "
                        "VAC's files go to DIR/vac/NAME and are removed afterwards")
    p.add_argument("--allow-empty", action="store_true",
                   help="replace a loaded VAC even when the files hold no row (else "
                        "refused, exit 2)")
    p.add_argument("--lock-timeout", type=float, default=300.0, metavar="S",
                   help="seconds to keep retrying the replacement while readers hold the "
                        "old table (default 300); then the new version is discarded")
    add_db_arguments(p)

    p = sub.add_parser("list", help="the VACs of a schema",
                       description="The VACs of a schema: name, rows, key, files, load time.")
    add_schema_argument(p)
    p.add_argument("--json", action="store_true", help="one JSON list")
    add_db_arguments(p)

    p = sub.add_parser("drop", help="drop a VAC", description="Drop the table S.vac_NAME "
                                                              "(only a VAC table).")
    add_schema_argument(p)
    p.add_argument("--name", required=True, help="the VAC's name")
    add_db_arguments(p)


def run(args):
    return {"load": _load, "list": _list, "drop": _drop}[args.vac_command](args)


def _load(args):
    with log_level(args):  # -q / -v on every rank
        return _load_ranks(args)


def _load_ranks(args):
    from specprod_db import mpi, vac
    from specprod_db.log import set_rank
    comm = mpi.world()
    set_rank(comm.rank, comm.size)
    return mpi.run_roles(comm, vac.HANDLERS, lambda: _load_root(comm, args))


def _load_root(comm, args):
    from specprod_db import mpi, vac
    from specprod_db.errors import EXIT_INTERNAL, one_line
    key = [] if args.no_key else (args.key.split(",") if args.key is not None else None)
    opts = vac.Options(schema=args.schema, name=args.name,
                       sources=[vac.parse_source(f) for f in args.files], dsn=args.db,
                       key=key, fk=not args.no_fk, stage_dir=args.stage_dir,
                       lock_timeout=args.lock_timeout, allow_empty=args.allow_empty)
    dispatcher = mpi.Dispatcher(comm, vac.HANDLERS)
    status = EXIT_INTERNAL
    try:
        status = report_errors(lambda _: _root(dispatcher, opts))(args)
    except Exception as err:  # a bug: say so, stop the workers
        print(f"specprod-db: internal error ({one_line(err)}); nothing replaced\n"
              f"{traceback.format_exc()}", file=sys.stderr, flush=True)
    finally:
        dispatcher.stop(status)
    return status


def _root(dispatcher, opts):
    from specprod_db import vac
    info = vac.load(dispatcher, opts)
    print(f"{opts.schema}.{vac.table_name(opts.name)}: {info['rows']} rows, key "
          f"{', '.join(info['key']) or 'none'}, foreign keys "
          f"{', '.join(info['foreign_keys']) or 'none'}, q3c "
          f"{'(' + ', '.join(info['q3c']) + ')' if info['q3c'] else 'none'}")
    return 0


@report_errors
def _list(args):
    from specprod_db import vac
    from specprod_db.db.connect import connect
    conn = connect(args.db, application_name="specprod-db vac")
    try:
        vac._check_schema(conn, args.schema)
        vacs = vac.describe_all(conn, args.schema)
    finally:
        conn.close()
    if args.json:
        print(json.dumps(vacs, indent=1, sort_keys=True))
        return 0
    rows = [("name", "table", "rows", "key", "files", "loaded at")]
    for v in vacs:
        files = ", ".join(s["file"] + (f"[{s['hdu']}]" if s.get("hdu") is not None else "")
                          for s in v["sources"])
        rows.append((v["name"], v["table"], str(v["rows"]), ",".join(v["key"]) or "-",
                     files, v["loaded_at"]))
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    return 0


@report_errors
def _drop(args):
    from specprod_db import vac
    from specprod_db.db.connect import connect
    from specprod_db.log import get_logger
    conn = connect(args.db, application_name="specprod-db vac")
    try:
        dropped = vac.drop(conn, args.schema, args.name)
    finally:
        conn.close()
    get_logger().info("%s.%s: %s", args.schema, vac.table_name(args.name),
                      "dropped" if dropped else "no such VAC")
    return 0 if dropped else 1
