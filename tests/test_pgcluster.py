"""The private cluster: start, connect over the socket, q3c, idempotent start, clean stop.

Uses its own cluster directory and port, so the session's cluster is not disturbed.
"""
import os
import socket
import subprocess

import psycopg2
import pytest

from specprod_db import pgcluster


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
        with conn.cursor() as cur:
            cur.execute(query)
            return cur.fetchone()
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
        # Also on the localhost port, never on 5432.
        assert port != 5432
        assert _query(f"host=127.0.0.1 port={port} dbname=lifecycle user=postgres",
                      "SELECT 1") == (1,)

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
