"""The private cluster: start, connect over the socket, q3c, idempotent start, clean stop;
not open to other local users (0700 socket directory, a password on TCP), also when it
was made by an earlier version.

Uses its own cluster directory and port, so the session's cluster is not disturbed.
"""
import os
import pwd
import socket
import stat
import subprocess

import psycopg2
import pytest

from specprod_db.devdb import pgcluster


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pgrep(pattern):
    r = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, timeout=10)
    return r.stdout.split()


def _query(dsn, query):
    conn = psycopg2.connect(dsn, connect_timeout=10)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(query)
            return cur.fetchone() if cur.description else None
    finally:
        conn.close()


def test_private_cluster_lifecycle(tmp_path):
    cdir, port = tmp_path / "cluster", _free_port()
    try:
        dsn = pgcluster.start(cdir, port=port, dbname="lifecycle")
        st = pgcluster.status(cdir)
        assert st["running"] and st["port"] == port and st["dsn"] == dsn
        assert f"port={port}" in dsn and "dbname=lifecycle" in dsn and "user=postgres" in dsn
        assert pgcluster.dsn(cdir) == dsn
        socket_dir = st["socket_dir"]
        assert os.path.exists(os.path.join(socket_dir, f".s.PGSQL.{port}"))

        # Over the Unix socket, as the superuser, with q3c.
        assert _query(dsn, "SELECT inet_server_addr() IS NULL, current_user") \
            == (True, "postgres")
        assert _query(dsn, "SELECT q3c_version()")[0]
        assert _query(dsn, "SELECT q3c_ang2ipix(10.0, 20.0)")[0] is not None
        # Also on the localhost port, never on 5432, but only with the password.
        assert port != 5432
        _assert_private(cdir, port, "lifecycle")

        # Idempotent: the running server is kept.
        pid = st["pid"]
        assert pgcluster.start(cdir, dbname="lifecycle") == dsn
        assert pgcluster.status(cdir)["pid"] == pid

        pgcluster.stop(cdir)
        assert not pgcluster.status(cdir)["running"]
        assert _pgrep(st["datadir"]) == []
        assert not os.path.exists(f"/proc/{pid}/cwd")
        pgcluster.stop(cdir)  # stopping a stopped cluster is fine

        # Restart keeps data and port.
        assert pgcluster.start(cdir, dbname="lifecycle") == dsn
        assert _query(dsn, "SELECT q3c_version()")[0]
    finally:
        pgcluster.stop(cdir, remove=True)
    assert not cdir.exists() and not os.path.exists(st["datadir"])
    assert _pgrep(st["datadir"]) == []


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def _server_uid():
    return os.getuid() if os.geteuid() != 0 else pwd.getpwnam(
        os.environ.get("SPECPROD_DB_CLUSTER_USER", "postgres")).pw_uid


def _assert_private(cdir, port, dbname):
    """Not open to other local users: socket directory 0700 owned by the server's user,
    no trust on TCP, the superuser's password in a 0600 file."""
    st = pgcluster.status(cdir)
    socket_dir = st["socket_dir"]
    assert _mode(socket_dir) == 0o700
    assert os.stat(socket_dir).st_uid == _server_uid()
    assert _mode(cdir) == 0o700
    hba = [line.split() for line in
           open(os.path.join(st["datadir"], "pg_hba.conf")).read().splitlines()
           if line.strip() and not line.lstrip().startswith("#")]
    host = [f for f in hba if f[0].startswith("host")]
    assert host and all(f[-1] == "scram-sha-256" for f in host), host
    assert not any("trust" in f for f in host)
    password_file = st["password_file"]
    assert _mode(password_file) == 0o600
    password = open(password_file).read().strip()
    assert len(password) >= 20
    tcp = f"host=127.0.0.1 port={port} dbname={dbname} user=postgres connect_timeout=10"
    saved = os.environ.pop("PGPASSWORD", None)  # no password from anywhere
    try:
        with pytest.raises(psycopg2.OperationalError) as e:
            psycopg2.connect(tcp + " passfile=/nonexistent")
    finally:
        if saved is not None:
            os.environ["PGPASSWORD"] = saved
    assert "password" in str(e.value)
    with pytest.raises(psycopg2.OperationalError) as e:
        psycopg2.connect(tcp + " password=wrong-password")
    assert "password authentication failed" in str(e.value)
    assert _query(f"{tcp} password={password}", "SELECT current_user") == ("postgres",)
    return password


def test_old_cluster_is_made_private(tmp_path):
    """A cluster made by an earlier version (0755 directories, trust on TCP, no superuser
    password) is fixed up by start(): while running (reload, same server process) and
    while stopped."""
    cdir, port = tmp_path / "cluster", _free_port()
    try:
        dsn = pgcluster.start(cdir, port=port, dbname="old")
        st = pgcluster.status(cdir)

        def make_old():
            hba = os.path.join(st["datadir"], "pg_hba.conf")
            text = open(hba).read().replace("scram-sha-256", "trust")
            with open(hba, "w") as f:  # keeps the file's owner
                f.write(text)
            os.remove(st["password_file"])
            os.chmod(st["socket_dir"], 0o755)
            os.chmod(cdir, 0o755)

        # while running, with a client connected throughout
        _query(dsn, "ALTER ROLE postgres PASSWORD NULL")
        make_old()
        _query(dsn, "SELECT pg_reload_conf()")
        assert _query(f"host=127.0.0.1 port={port} dbname=old user=postgres",
                      "SELECT 1") == (1,)  # open, as before
        client = psycopg2.connect(dsn)
        pid = st["pid"]
        assert pgcluster.start(cdir, dbname="old") == dsn
        assert pgcluster.status(cdir)["pid"] == pid
        with client.cursor() as cur:
            cur.execute("SELECT 1")
        client.close()
        first = _assert_private(cdir, port, "old")
        # idempotent: the password stays
        pgcluster.start(cdir, dbname="old")
        assert _assert_private(cdir, port, "old") == first

        # while stopped
        pgcluster.stop(cdir)
        make_old()
        assert pgcluster.start(cdir, dbname="old") == dsn
        assert _assert_private(cdir, port, "old") != first  # a new password
    finally:
        pgcluster.stop(cdir, remove=True)


def test_hba_without_host_trust():
    text = ("# TYPE DATABASE USER ADDRESS METHOD\n"
            "local   all   all                 trust\n"
            "host    all   all   127.0.0.1/32  trust\n"
            "host    all   all   ::1/128       trust   # comment: trust\n"
            "hostssl all   all   10.0.0.0 255.0.0.0 trust\n"
            "host    replication all 127.0.0.1/32 trust clientcert=verify-ca\n"
            "host    all   all   127.0.0.1/32  md5\n"
            "#host   all   all   0.0.0.0/0     trust\n")
    assert pgcluster.hba_without_host_trust(text) == (
        "# TYPE DATABASE USER ADDRESS METHOD\n"
        "local   all   all                 trust\n"
        "host    all   all   127.0.0.1/32  scram-sha-256\n"
        "host    all   all   ::1/128       scram-sha-256   # comment: trust\n"
        "hostssl all   all   10.0.0.0 255.0.0.0 scram-sha-256\n"
        "host    replication all 127.0.0.1/32 scram-sha-256 clientcert=verify-ca\n"
        "host    all   all   127.0.0.1/32  md5\n"
        "#host   all   all   0.0.0.0/0     trust\n")


def test_cluster_command_masks_a_configured_password(monkeypatch, capsys, pg_dsn):
    """``specprod-db cluster ensure`` (``make db``) prints the configured conninfo: masked."""
    from psycopg2.extensions import make_dsn
    monkeypatch.setenv("SPECPROD_DB_DSN", make_dsn(pg_dsn, password="not-to-be-shown"))
    assert pgcluster.main(["ensure"]) == 0
    out, err = capsys.readouterr()
    assert "not-to-be-shown" not in out + err and "password=***" in out


def test_configured_dsn(monkeypatch):
    for var in pgcluster.CONFIG_ENV:
        monkeypatch.delenv(var, raising=False)
    assert pgcluster.configured_dsn() is None
    monkeypatch.setenv("PGHOST", "/run/some dir")
    monkeypatch.setenv("PGPORT", "5433")
    assert pgcluster.configured_dsn() == "host='/run/some dir' port=5433"
    monkeypatch.setenv("SPECPROD_DB_DSN", "dbname=elsewhere")
    assert pgcluster.configured_dsn() == "dbname=elsewhere"


def test_missing_binaries_say_what_was_probed(monkeypatch):
    monkeypatch.setenv("SPECPROD_DB_PG_BINDIR", "/nonexistent/bin")
    with pytest.raises(pgcluster.PostgresMissingError) as e:
        pgcluster.find_bindir()
    assert isinstance(e.value, FileNotFoundError)
    assert "/nonexistent/bin" in str(e.value) and "make pg" in str(e.value)


def test_default_cluster_dir_is_the_checkouts(monkeypatch):
    """The private cluster lives in ``.pgcluster`` beside the Makefile, wherever the module
    sits in the package (a move into devdb/ once put it under py/)."""
    from pathlib import Path
    from specprod_db.devdb import pgcluster_dir
    monkeypatch.delenv("SPECPROD_DB_CLUSTER_DIR", raising=False)
    checkout = Path(__file__).resolve().parents[1]
    assert (checkout / "Makefile").exists()
    assert pgcluster_dir.default_cluster_dir() == checkout / ".pgcluster"
