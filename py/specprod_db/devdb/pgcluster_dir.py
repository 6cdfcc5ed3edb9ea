"""One private PostgreSQL cluster directory and the server that runs in it.

:class:`Cluster` owns a cluster directory (``<checkout>/.pgcluster`` or
``SPECPROD_DB_CLUSTER_DIR``): its record (port, database, where the data are), its lock,
the data directory, the server log and the socket, the server user (as root: ``postgres``),
initdb, ``pg_ctl start`` and ``stop`` and the processes left behind, and making the
cluster private (0700 directories, a superuser password in :data:`PASSWORD_FILE`, no
``trust`` on TCP in pg_hba.conf: :func:`hba_without_host_trust`).

The rule that picks a server and the entry points are :mod:`specprod_db.devdb.pgcluster`. Like
it, this module needs nothing of the package but :mod:`specprod_db.conninfo`, and imports
psycopg2 only when it connects.
"""
import contextlib
import fcntl
import hashlib
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from specprod_db.conninfo import mask

#: Default TCP port of the private cluster: never the system server's 5432.
DEFAULT_PORT = 54329
#: Ports tried, in order, when the default one is taken by someone else.
PORT_RANGE = range(DEFAULT_PORT, DEFAULT_PORT + 50)
#: Database superuser created by initdb; the DSN always connects as this role.
SUPERUSER = "postgres"
#: The preferred major version: the one Debian 12 ships, with ``postgresql-15-q3c``.
PG_MAJOR = "15"
#: Marker written into every cluster directory; ``stop(remove=True)`` removes nothing else.
RECORD = "specprod-db-cluster.json"
#: Unix sockets paths are limited to 107 bytes (sun_path); keep a margin.
MAX_SOCKET_PATH = 100
#: The superuser's password (TCP connections need it), in the server's directory, 0600.
PASSWORD_FILE = "superuser.password"
#: Mode of the directory holding the socket (and of the cluster directory): owner only.
DIR_MODE = 0o700
#: Authentication on TCP (pg_hba ``host*`` lines); the socket keeps ``trust``.
HOST_AUTH = "scram-sha-256"

FIX_INSTALL = (f"install the server and q3c: `make pg`, or as root "
               f"`apt-get update && apt-get install -y postgresql-{PG_MAJOR} "
               f"postgresql-{PG_MAJOR}-q3c`; or point SPECPROD_DB_PG_BINDIR at a bin "
               f"directory holding initdb and pg_ctl")


class ClusterError(RuntimeError):
    """The private cluster could not be set up, started, stopped or reached."""


class PostgresMissingError(ClusterError, FileNotFoundError):
    """No PostgreSQL server binaries were found where they were looked for."""


def default_cluster_dir():
    """``SPECPROD_DB_CLUSTER_DIR``, else ``.pgcluster`` in the checkout holding this file."""
    env = os.environ.get("SPECPROD_DB_CLUSTER_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return Path(__file__).resolve().parents[3] / ".pgcluster"  # devdb/ -> specprod_db/ -> py/ -> checkout


def quote_value(value):
    """Quote a conninfo value (libpq's rules: single quotes, backslash escapes)."""
    if value and all(ch.isalnum() or ch in "/._-:@," for ch in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _port_free(port):
    """Whether the server could listen on ``port``: like the server, with SO_REUSEADDR,
    so connections of a stopped server in TIME_WAIT (the server closes the connections
    it refuses, e.g. a wrong password) do not make its port look taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Cluster:
    """Where a private cluster lives and who runs it.

    ``cluster_dir`` holds the record (port, database, where the data are), the data
    directory ``data/``, the server log and the socket. As root the server runs as an
    unprivileged user who must be able to reach ``cluster_dir``; when it cannot (e.g. a
    checkout under /root), or the socket path would be too long, the server's files go to
    ``/tmp/specprod-db-<hash of cluster_dir>`` instead and only the record stays.
    """

    def __init__(self, cluster_dir=None):
        self.cluster_dir = Path(cluster_dir or default_cluster_dir()).resolve()
        self.user = self._server_user()
        self.serverdir = self._pick_serverdir()
        self.datadir = self.serverdir / "data"
        self.logfile = self.serverdir / "server.log"

    @property
    def password_file(self):
        return self.serverdir / PASSWORD_FILE

    # --- who runs the server -------------------------------------------------------
    @staticmethod
    def _server_user():
        """None: the current user. As root: SPECPROD_DB_CLUSTER_USER or ``postgres``."""
        if os.geteuid() != 0:
            return None
        name = os.environ.get("SPECPROD_DB_CLUSTER_USER", "postgres")
        try:
            pwd.getpwnam(name)
        except KeyError:
            _run(["useradd", "--system", "--user-group", "--no-create-home",
                  "--shell", "/usr/sbin/nologin", name], timeout=30,
                 what=f"create system user {name} to run the private cluster (initdb "
                      f"refuses root)")
        return name

    def as_server(self, argv):
        if self.user is None:
            return list(argv)
        if shutil.which("runuser"):
            return ["runuser", "-u", self.user, "--", *argv]
        pw = pwd.getpwnam(self.user)
        return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}",
                "--init-groups", "--", *argv]

    def _chown(self, path):
        if self.user is not None:
            pw = pwd.getpwnam(self.user)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def _server_can_use(self, path):
        if self.user is None:
            return True
        r = subprocess.run(self.as_server(["test", "-w", str(path), "-a", "-x", str(path)]),
                           capture_output=True, timeout=30, stdin=subprocess.DEVNULL,
                           cwd="/")
        return r.returncode == 0

    # --- layout --------------------------------------------------------------------
    def _fallback_dir(self):
        digest = hashlib.sha1(str(self.cluster_dir).encode()).hexdigest()[:12]
        return Path("/tmp") / f"specprod-db-{digest}"

    def _pick_serverdir(self):
        """The record says where the server's files went; a new cluster decides now."""
        rec = self.read_record()
        if rec.get("serverdir"):
            return Path(rec["serverdir"])
        return self.cluster_dir

    def _place(self):
        """Create the directories of a new cluster, owned by the server user."""
        self.cluster_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        self.cluster_dir.chmod(DIR_MODE)
        self._chown(self.cluster_dir)
        sock = self.cluster_dir / f".s.PGSQL.{max(PORT_RANGE)}"
        if len(str(sock)) > MAX_SOCKET_PATH or not self._server_can_use(self.cluster_dir):
            fb = self._fallback_dir()
            fb.mkdir(mode=DIR_MODE, exist_ok=True)
            fb.chmod(DIR_MODE)
            self._chown(fb)
            if not self._server_can_use(fb):
                raise ClusterError(
                    f"the server user {self.user} can reach neither {self.cluster_dir} nor "
                    f"{fb}; set SPECPROD_DB_CLUSTER_DIR to a directory it can write")
            self.serverdir = fb
            self.datadir = fb / "data"
            self.logfile = fb / "server.log"
        self.write_record(serverdir=str(self.serverdir))

    def read_record(self):
        try:
            return json.loads((self.cluster_dir / RECORD).read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def write_record(self, **changes):
        rec = self.read_record()
        rec.update(changes)
        path = self.cluster_dir / RECORD
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n")
        tmp.replace(path)

    @contextlib.contextmanager
    def lock(self):
        """Serialise start/stop across processes (pytest-xdist workers, make, ...)."""
        self.cluster_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        with open(self.cluster_dir / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def dsn(self, dbname):
        port = self.read_record().get("port", DEFAULT_PORT)
        return (f"host={quote_value(str(self.serverdir))} port={port} "
                f"dbname={quote_value(dbname)} user={SUPERUSER}")

    # --- server life cycle ---------------------------------------------------------
    def initdb(self, bindir, timeout):
        self._place()
        if self.datadir.exists() and any(self.datadir.iterdir()):
            raise ClusterError(f"{self.datadir} exists, is not empty and holds no cluster "
                               f"(no PG_VERSION); remove it or run `make clean-db`")
        self._write_password()
        _run(self.as_server([str(bindir / "initdb"), "-D", str(self.datadir),
                             "-U", SUPERUSER, "--auth-local=trust",
                             f"--auth-host={HOST_AUTH}", f"--pwfile={self.password_file}",
                             "--encoding=UTF8", "--locale=C", "--no-instructions"]),
             timeout=timeout, cwd=self.serverdir,
             what=f"initdb of the private cluster in {self.datadir}")
        self.write_record(pg_bindir=str(bindir))

    # --- not open to other local users -----------------------------------------------
    def _write_password(self):
        """A new random superuser password in :attr:`password_file` (0600, server user's)."""
        path = self.password_file
        tmp = path.with_name(path.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")
        self._chown(tmp)
        tmp.replace(path)
        return self.password()

    def password(self):
        return self.password_file.read_text().strip()

    def secure(self):
        """Make a running cluster private, whatever version created it (idempotent, safe
        while in use): directories 0700, a superuser password (kept in
        :attr:`password_file`), no ``trust`` on TCP in pg_hba.conf (then a reload)."""
        for d in {self.cluster_dir, self.serverdir}:
            if d.exists() and (d.stat().st_mode & 0o777) != DIR_MODE:
                d.chmod(DIR_MODE)
        if self.password_file.exists() and (self.password_file.stat().st_mode & 0o077):
            self.password_file.chmod(0o600)
        from psycopg2 import sql
        from psycopg2.extensions import encrypt_password
        conn = self.superuser_connection()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT rolpassword IS NULL FROM pg_authid "
                            "WHERE rolname = current_user")
                no_password = cur.fetchone()[0]
                if no_password or not self.password_file.exists():
                    password = (self.password() if self.password_file.exists()
                                else self._write_password())
                    # the verifier is computed here: the password itself is never sent
                    verifier = encrypt_password(password, SUPERUSER, conn, HOST_AUTH)
                    cur.execute(sql.SQL("ALTER ROLE {} PASSWORD %s").format(
                        sql.Identifier(SUPERUSER)), (verifier,))
                if self._fix_hba():
                    cur.execute("SELECT pg_reload_conf()")
        finally:
            conn.close()

    def _fix_hba(self):
        """Rewrite ``trust`` on pg_hba.conf's TCP lines as :data:`HOST_AUTH`; True if
        the file changed (owner and mode kept: the server must still read it)."""
        path = self.datadir / "pg_hba.conf"
        text = path.read_text()
        fixed = hba_without_host_trust(text)
        if fixed == text:
            return False
        st = path.stat()
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, st.st_mode & 0o777)
        with os.fdopen(fd, "w") as f:
            f.write(fixed)
        os.chown(tmp, st.st_uid, st.st_gid)
        tmp.replace(path)
        return True

    def start(self, bindir, port, timeout):
        rec = self.read_record()
        port = self._choose_port(port if port is not None else rec.get("port"),
                                 explicit=port is not None)
        if port == 5432:
            raise ClusterError("the private cluster must not use port 5432 (the system "
                               "server's); choose another with --port")
        self.write_record(port=port)
        # Throwaway data: durability settings off for speed.
        opts = ["-p", str(port), "-k", str(self.serverdir),
                "-c", "listen_addresses=localhost", "-c", "unix_socket_permissions=0700",
                "-c", "fsync=off", "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off", "-c", "max_connections=200"]
        self.logfile.touch()
        self._chown(self.logfile)
        try:
            _run(self.as_server([str(bindir / "pg_ctl"), "start", "-w", "-t", str(int(timeout)),
                                 "-D", str(self.datadir), "-l", str(self.logfile),
                                 "-o", " ".join(shlex.quote(o) for o in opts)]),
                 timeout=timeout + 15, cwd=self.serverdir,
                 what=f"pg_ctl start of the private cluster in {self.datadir} on port {port}")
        except ClusterError as e:
            raise ClusterError(f"{e}\n--- last lines of {self.logfile} ---\n"
                               f"{self._log_tail()}") from None

    def _choose_port(self, port, explicit):
        if port is not None and _port_free(int(port)):
            return int(port)
        if explicit:
            raise ClusterError(f"port {port} on localhost is taken; choose another with "
                               f"--port or SPECPROD_DB_CLUSTER_PORT")
        for p in PORT_RANGE:
            if _port_free(p):
                return p
        raise ClusterError(f"no free localhost port in {PORT_RANGE.start}-"
                           f"{PORT_RANGE.stop - 1}; set SPECPROD_DB_CLUSTER_PORT")

    def superuser_connection(self):
        """An autocommit connection to database ``postgres`` over the socket."""
        import psycopg2
        try:
            conn = psycopg2.connect(self.dsn("postgres"), connect_timeout=30)
        except psycopg2.OperationalError as e:
            raise ClusterError(f"the private cluster in {self.datadir} runs but refuses "
                               f"{mask(self.dsn('postgres'))!r}: {mask(str(e).strip())}; "
                               f"see {self.logfile}") from e
        conn.autocommit = True
        return conn

    def create_database(self, dbname, timeout):
        from psycopg2 import sql
        conn = self.superuser_connection()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
                if cur.fetchone() is None:
                    cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        finally:
            conn.close()

    def running(self):
        """Whether the postmaster of ``datadir`` is alive (not merely a stale pid file)."""
        pid = self.postmaster_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return pid in self.pids()

    def postmaster_pid(self):
        try:
            return int((self.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (FileNotFoundError, PermissionError, ValueError):
            return None

    def pids(self):
        """Processes of this cluster: every postgres process keeps ``datadir`` as cwd."""
        target = str(self.datadir)
        found = set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.readlink(f"/proc/{entry}/cwd") == target:
                    found.add(int(entry))
                    continue
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                if b"-D" in cmd and target.encode() in cmd:
                    found.add(int(entry))
            except OSError:
                continue
        return found

    def stop(self, bindir, timeout):
        argv = [str(bindir / "pg_ctl"), "stop", "-w", "-t", str(int(timeout)),
                "-D", str(self.datadir)]
        try:
            _run(self.as_server(argv + ["-m", "fast"]), timeout=timeout + 15,
                 cwd=self.serverdir, what=f"pg_ctl stop -m fast of {self.datadir}")
        except ClusterError:
            _run(self.as_server(argv + ["-m", "immediate"]), timeout=timeout + 15,
                 cwd=self.serverdir, what=f"pg_ctl stop -m immediate of {self.datadir}")

    def wait_gone(self, timeout):
        """Wait for every process of the cluster to exit; kill stragglers at the end."""
        deadline = time.monotonic() + timeout
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        left = self.pids()
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if left:
            time.sleep(0.5)
            if self.pids():
                raise ClusterError(f"processes {sorted(self.pids())} of {self.datadir} "
                                   f"survived pg_ctl stop and SIGKILL")

    def remove(self):
        if self.serverdir != self.cluster_dir and self.serverdir == self._fallback_dir():
            shutil.rmtree(self.serverdir, ignore_errors=True)
        d = self.cluster_dir
        if not d.exists():
            return
        if (d / RECORD).exists() or not any(p.name != ".lock" for p in d.iterdir()):
            shutil.rmtree(d)
        else:
            raise ClusterError(f"not removing {d}: it holds no {RECORD}, so it is not "
                               f"a private cluster directory")

    def _log_tail(self, n=20):
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except OSError as e:
            return f"(cannot read: {e})"


_HOST_TYPES = ("host", "hostssl", "hostnossl", "hostgssenc", "hostnogssenc")


def hba_without_host_trust(text):
    """pg_hba.conf ``text`` with ``trust`` replaced by :data:`HOST_AUTH` on every TCP
    (``host*``) line; comments, ``local`` lines and layout are kept."""
    out = []
    for line in text.splitlines(keepends=True):
        body = line.split("#", 1)[0]
        fields = body.split()
        if fields and fields[0] in _HOST_TYPES:
            # the method is the last field that is not an option (name=value)
            methods = [i for i, f in enumerate(fields) if "=" not in f]
            if len(methods) >= 5 and fields[methods[-1]] == "trust":
                spans = [m.span() for m in re.finditer(r"\S+", body)]
                start, end = spans[methods[-1]]
                line = line[:start] + HOST_AUTH + line[end:]
        out.append(line)
    return "".join(out)


def _run(argv, timeout, what, cwd=None):
    """Run an external command; raise ClusterError saying what failed and how."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL, cwd=cwd)
    except FileNotFoundError as e:
        raise PostgresMissingError(f"{what}: {argv[0]} not found; {FIX_INSTALL}") from e
    except subprocess.TimeoutExpired as e:
        raise ClusterError(f"{what}: `{shlex.join(argv)}` did not finish within "
                           f"{timeout} s") from e
    if r.returncode != 0:
        raise ClusterError(f"{what}: `{shlex.join(argv)}` exited {r.returncode}:\n"
                           f"{(r.stdout + r.stderr).strip()}")
    return r
