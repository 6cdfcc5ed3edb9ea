"""A private, throwaway PostgreSQL cluster for tests and the demo, and the rule that picks
the server to use.

*A server is configured* when ``SPECPROD_DB_DSN`` or any of ``PGHOST``, ``PGPORT``,
``PGDATABASE``, ``PGSERVICE`` is set: then that server is used and nothing is started
(:func:`configured_dsn`). Otherwise :func:`ensure_server` starts the private cluster on
demand: its own data directory (``<checkout>/.pgcluster`` or ``SPECPROD_DB_CLUSTER_DIR``),
superuser ``postgres``, a database ``specprod_db`` with q3c created.

It is not open to other local users: the Unix socket is in a 0700 directory owned by the
user the server runs as (only that user and root can connect; there, no password is
asked), and TCP (localhost, a port that is never 5432) needs the superuser's password
(``scram-sha-256``), generated at initdb and kept in a 0600 file next to the data
(:data:`PASSWORD_FILE`).  Clusters made by an earlier version (0755 directory, ``trust``
on TCP) are fixed up by :func:`start` in place, with a configuration reload, even while
in use.

The server binaries come from the system (Debian's ``postgresql-15``, see
``etc/ensure-pg.sh``). ``initdb`` and ``pg_ctl`` refuse to run as root, so as root they run
as the ``postgres`` system user. Every external command has a timeout, and errors say what
was probed and how to fix it.

This module is the rule and the entry points (:func:`configured_dsn`, :func:`ensure_server`,
:func:`start`, :func:`stop`, :func:`status`, :func:`dsn`); one cluster directory and the
server running in it (layout, initdb, start and stop, making it private) are
:class:`specprod_db.devdb.pgcluster_dir.Cluster`.

This module is also the ``specprod-db cluster`` sub-command (``add_arguments``, ``run``)
and runs as ``python -m specprod_db.devdb.pgcluster`` without the rest of the package: it and
:mod:`specprod_db.devdb.pgcluster_dir` import only :mod:`specprod_db.conninfo`. They import
neither mpi4py nor, at module level, psycopg2.
"""
import argparse
import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

from specprod_db.conninfo import mask, scrub
from specprod_db.devdb.pgcluster_dir import (
    DEFAULT_PORT, DIR_MODE, FIX_INSTALL, HOST_AUTH, MAX_SOCKET_PATH, PASSWORD_FILE,
    PG_MAJOR, PORT_RANGE, RECORD, SUPERUSER, Cluster, ClusterError, PostgresMissingError,
    default_cluster_dir, hba_without_host_trust, quote_value)

#: The interface of the private cluster, with what :mod:`specprod_db.devdb.pgcluster_dir` owns.
__all__ = ["ACTIONS", "CONFIG_ENV", "DEFAULT_DBNAME", "DEFAULT_PORT", "DIR_MODE",
           "FIX_INSTALL", "HOST_AUTH", "MAX_SOCKET_PATH", "PASSWORD_FILE", "PG_MAJOR",
           "PORT_RANGE", "RECORD", "SUPERUSER", "ClusterError", "PostgresMissingError",
           "add_arguments", "configured_dsn", "default_cluster_dir", "default_port", "dsn",
           "ensure_q3c", "ensure_server", "find_bindir", "hba_without_host_trust", "main",
           "run", "start", "status", "stop"]

DEFAULT_DBNAME = "specprod_db"
#: Environment variables that mean "a server is configured".
CONFIG_ENV = ("SPECPROD_DB_DSN", "PGHOST", "PGPORT", "PGDATABASE", "PGSERVICE")


def default_port():
    env = os.environ.get("SPECPROD_DB_CLUSTER_PORT")
    return int(env) if env else None


def configured_dsn():
    """The conninfo of the configured server, or None when none is configured.

    ``SPECPROD_DB_DSN`` wins. Otherwise, when any of PGHOST, PGPORT, PGDATABASE, PGSERVICE
    is set, the conninfo spells out those that are set (libpq reads the other PG*
    variables, e.g. PGUSER, PGPASSWORD, itself).
    """
    dsn = os.environ.get("SPECPROD_DB_DSN", "").strip()
    if dsn:
        return dsn
    keys = {"PGSERVICE": "service", "PGHOST": "host", "PGPORT": "port",
            "PGDATABASE": "dbname"}
    parts = [f"{key}={quote_value(os.environ[var])}" for var, key in keys.items()
             if os.environ.get(var)]
    return " ".join(parts) or None


def ensure_server(cluster_dir=None, port=None, dbname=DEFAULT_DBNAME, timeout=120):
    """A usable conninfo: the configured server's, else the private cluster's (started if
    needed). Either way the q3c extension exists in the target database."""
    dsn = configured_dsn()
    if dsn is None:
        return start(cluster_dir, port=port, dbname=dbname, timeout=timeout)
    ensure_q3c(dsn, where="the configured server (" + _configured_source() + ")")
    return dsn


def start(cluster_dir=None, port=None, dbname=DEFAULT_DBNAME, timeout=120):
    """Start the private cluster (initdb on first use) and return its conninfo.

    Idempotent: a running cluster is left alone. ``port`` None means the recorded port,
    else ``SPECPROD_DB_CLUSTER_PORT``, else the first free one from 54329.
    """
    c = Cluster(cluster_dir)
    port = port if port is not None else default_port()
    with c.lock():
        if not c.running():
            bindir = find_bindir()
            if not (c.datadir / "PG_VERSION").exists():
                c.initdb(bindir, timeout)
            c.start(bindir, port, timeout)
        c.secure()
        c.create_database(dbname, timeout)
        c.write_record(dbname=dbname)
        dsn = c.dsn(dbname)
        ensure_q3c(dsn, where=f"the private cluster in {c.serverdir}")
    return dsn


def stop(cluster_dir=None, remove=False, timeout=60):
    """Stop the private cluster (fast shutdown) and wait until none of its processes is
    left; with ``remove``, also delete its directories. Idempotent."""
    c = Cluster(cluster_dir)
    with c.lock():
        if c.datadir.exists() and c.running():
            c.stop(find_bindir(), timeout)
        c.wait_gone(timeout)
        if remove:
            c.remove()


def status(cluster_dir=None):
    """A dict describing the private cluster: ``running``, ``pid``, ``port``,
    ``datadir``, ``socket_dir``, ``dsn`` (None when not running)."""
    c = Cluster(cluster_dir)
    info = c.read_record()
    running = c.running()
    return {
        "cluster_dir": str(c.cluster_dir),
        "datadir": str(c.datadir),
        "socket_dir": str(c.serverdir),
        "initialized": (c.datadir / "PG_VERSION").exists(),
        "running": running,
        "pid": c.postmaster_pid() if running else None,
        "port": info.get("port"),
        "password_file": str(c.password_file),
        "dsn": c.dsn(info.get("dbname", DEFAULT_DBNAME)) if running else None,
    }


def dsn(cluster_dir=None, dbname=None):
    """The libpq conninfo of the private cluster (whether or not it is running):
    ``host=<socket dir> port=<port> dbname=<db> user=postgres``."""
    c = Cluster(cluster_dir)
    info = c.read_record()
    if "port" not in info:
        raise ClusterError(f"no private cluster has been started in {c.cluster_dir}: "
                           f"run `specprod-db cluster start` (or `make db`) first")
    return c.dsn(dbname or info.get("dbname", DEFAULT_DBNAME))


def ensure_q3c(conninfo, where="the database", timeout=30):
    """``CREATE EXTENSION IF NOT EXISTS q3c`` in the database of ``conninfo``."""
    import psycopg2
    try:
        conn = psycopg2.connect(conninfo, connect_timeout=min(timeout, 30),
                                options=f"-c statement_timeout={int(timeout * 1000)}")
    except psycopg2.OperationalError as e:
        raise ClusterError(f"cannot connect to {where} with conninfo {mask(conninfo)!r}: "
                           f"{scrub(str(e).strip(), conninfo)}. Fix the server or unset "
                           f"SPECPROD_DB_DSN and PG* to use the private cluster") from None
    from specprod_db.db.connect import ensure_q3c as _ensure_q3c
    from specprod_db.errors import ExtensionMissing
    try:
        conn.autocommit = True
        _ensure_q3c(conn)
    except ExtensionMissing as e:
        raise ClusterError(f"{where}: {e}") from e
    finally:
        conn.close()


def find_bindir():
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Probed in order: ``SPECPROD_DB_PG_BINDIR``; ``/usr/lib/postgresql/15/bin``;
    ``pg_config --bindir``; ``/usr/lib/postgresql/*/bin``, newest first.
    """
    env = os.environ.get("SPECPROD_DB_PG_BINDIR")
    if env:
        candidates = [env]
    else:
        candidates = [f"/usr/lib/postgresql/{PG_MAJOR}/bin"]
        pg_config = shutil.which("pg_config")
        if pg_config:
            try:
                out = subprocess.run([pg_config, "--bindir"], capture_output=True,
                                     text=True, timeout=10, stdin=subprocess.DEVNULL)
                if out.returncode == 0 and out.stdout.strip():
                    candidates.append(out.stdout.strip())
            except subprocess.TimeoutExpired:
                pass
        candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True,
                             key=lambda p: _version_key(Path(p).parent.name))
    for d in candidates:
        if all(os.access(os.path.join(d, exe), os.X_OK)
               for exe in ("initdb", "pg_ctl", "postgres")):
            return Path(d)
    raise PostgresMissingError(
        f"no PostgreSQL server binaries (initdb, pg_ctl, postgres) in any of "
        f"{', '.join(dict.fromkeys(candidates))}; {FIX_INSTALL}")


def _version_key(name):
    try:
        return float(name)
    except ValueError:
        return -1.0


def _configured_source():
    if os.environ.get("SPECPROD_DB_DSN", "").strip():
        return "SPECPROD_DB_DSN"
    return ", ".join(v for v in CONFIG_ENV[1:] if os.environ.get(v))


# --- the ``specprod-db cluster`` sub-command -----------------------------------------

ACTIONS = ("start", "stop", "status", "dsn", "ensure")


def add_arguments(parser):
    parser.add_argument("action", choices=ACTIONS, help=(
        "start: start the private cluster (initdb on first use) and print its conninfo; "
        "stop: stop it, leaving no process behind; status: show it; "
        "dsn: print its conninfo (export SPECPROD_DB_DSN=$(specprod-db cluster dsn)); "
        "ensure: print the configured server's conninfo, else start the private cluster"))
    parser.add_argument("--dir", type=Path, default=None, help=(
        "cluster directory (default: $SPECPROD_DB_CLUSTER_DIR, else .pgcluster in the "
        "checkout)"))
    parser.add_argument("--port", type=int, default=None, help=(
        f"localhost port (default: the recorded one, else $SPECPROD_DB_CLUSTER_PORT, else "
        f"the first free from {DEFAULT_PORT})"))
    parser.add_argument("--dbname", default=DEFAULT_DBNAME,
                        help="database created in the cluster (default: %(default)s)")
    parser.add_argument("--remove", action="store_true",
                        help="with stop: also delete the cluster's directories")
    parser.add_argument("--timeout", type=float, default=120,
                        help="seconds allowed for each server command (default: %(default)s)")


def run(args):
    try:
        # a configured conninfo may hold a password: never print it
        if args.action == "start":
            print(mask(start(args.dir, port=args.port, dbname=args.dbname,
                             timeout=args.timeout)))
        elif args.action == "ensure":
            print(mask(ensure_server(args.dir, port=args.port, dbname=args.dbname,
                                     timeout=args.timeout)))
        elif args.action == "stop":
            stop(args.dir, remove=args.remove, timeout=args.timeout)
        elif args.action == "status":
            st = status(args.dir)
            for key, value in st.items():
                print(f"{key}: {value}")
            return 0 if st["running"] else 3
        elif args.action == "dsn":
            print(dsn(args.dir, None if args.dbname == DEFAULT_DBNAME else args.dbname))
    except ClusterError as e:
        print(f"specprod-db cluster {args.action}: {mask(e)}", file=sys.stderr)
        return 2
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m specprod_db.devdb.pgcluster",
                                     description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
