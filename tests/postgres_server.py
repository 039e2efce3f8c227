"""A throwaway PostgreSQL 15 server for tests: ``running_postgres()`` or the session fixture ``postgres_server``.

The server runs from the Debian binaries (``/usr/lib/postgresql/15/bin``, or ``$QF_TEST_PG_BIN``) with its
data directory in a fresh temp dir, listening on 127.0.0.1 on a free port only (no Unix socket), with
``fsync=off``, password (SCRAM) authentication over TCP and one database created for the tests. initdb
refuses to run as root, so as root the server runs as the ``postgres`` OS user (``runuser``). Everything is
stopped and deleted afterwards. Use it in a conftest: ``from tests.postgres_server import postgres_server``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_BIN = Path(os.environ.get("QF_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_OS_USER = "postgres"


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    dbname: str
    data_dir: Path

    def connect(self, dbname: str | None = None):
        import psycopg2

        return psycopg2.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                                dbname=dbname or self.dbname, connect_timeout=10)

    def local_yaml(self, schema: str = "cdm", raw_schema: str = "raw", dbname: str | None = None) -> str:
        """A ``project_metadata/local.yaml`` pointing QuantFlow at this server."""
        return (
            "local:\n"
            "  postgres:\n"
            f"    host: {self.host}\n"
            f"    port: {self.port}\n"
            f"    user: {self.user}\n"
            f"    password: {self.password}\n"
            f"    dbname: {dbname or self.dbname}\n"
            f"    schema: {schema}\n"
            f"    raw_schema: {raw_schema}\n"
        )

    def create_database(self, name: str) -> str:
        con = self.connect("postgres")
        con.autocommit = True
        try:
            with con.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            con.close()
        return name


def binaries_missing() -> str | None:
    """Why the server cannot run here, or None."""
    for name in ("initdb", "pg_ctl", "postgres"):
        if not (PG_BIN / name).exists():
            return f"PostgreSQL 15 binaries not found ({PG_BIN / name} is missing; apt-get install postgresql-15)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_OS_USER)
        except KeyError:
            return f"running as root but there is no '{PG_OS_USER}' OS user to run PostgreSQL as"
        if shutil.which("runuser") is None:
            return "running as root but `runuser` is not installed (util-linux)"
    return None


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", PG_OS_USER, "--", *cmd] if os.geteuid() == 0 else cmd


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(_as_server_user(cmd), check=False, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}): {proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def _wait_ready(server: PostgresServer, timeout: float = 30.0) -> None:
    import psycopg2

    deadline = time.monotonic() + timeout
    while True:
        try:
            server.connect("postgres").close()
            return
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextlib.contextmanager
def running_postgres(dbname: str = "quantflow_test", listen: str = "127.0.0.1") -> Iterator[PostgresServer]:
    """Start a fresh server with database ``dbname``; stop it and delete its files on exit. ``listen``: its
    addresses (``*`` for containers on a Docker network too, with password authentication from anywhere)."""
    reason = binaries_missing()
    if reason:
        raise RuntimeError(reason)
    root = Path(tempfile.mkdtemp(prefix="qf-postgres-"))
    data_dir = root / "data"
    password = secrets.token_hex(12)
    try:
        pwfile = root / "pwfile"
        pwfile.write_text(password + "\n")
        if os.geteuid() == 0:
            pg = pwd.getpwnam(PG_OS_USER)
            os.chown(root, pg.pw_uid, pg.pw_gid)
            os.chown(pwfile, pg.pw_uid, pg.pw_gid)
        os.chmod(root, 0o700)
        _run([str(PG_BIN / "initdb"), "-D", str(data_dir), "-U", "postgres", f"--pwfile={pwfile}",
              "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--locale=C"], "initdb")
        pwfile.unlink()
        if listen != "127.0.0.1":
            with open(data_dir / "pg_hba.conf", "a") as hba:
                hba.write("host all all 0.0.0.0/0 scram-sha-256\n")
        server = None
        for _attempt in range(3):  # the free port can be taken between probing and binding
            port = _free_port()
            options = (f"-c listen_addresses='{listen}' -p {port} -c unix_socket_directories='' "
                       "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                       "-c shared_buffers=32MB -c max_connections=40")
            proc = subprocess.run(_as_server_user([str(PG_BIN / "pg_ctl"), "-D", str(data_dir), "-l",
                                                   str(root / "server.log"), "-o", options, "-w", "-t", "30",
                                                   "start"]), check=False, capture_output=True, text=True, timeout=60)
            if proc.returncode == 0:
                server = PostgresServer("127.0.0.1", port, "postgres", password, dbname, data_dir)
                break
        if server is None:
            log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {proc.stdout}{proc.stderr}{log[-2000:]}")
        try:
            _wait_ready(server)
            server.create_database(dbname)
            yield server
        finally:
            subprocess.run(_as_server_user([str(PG_BIN / "pg_ctl"), "-D", str(data_dir), "-m", "immediate",
                                            "-w", "stop"]), check=False, capture_output=True, timeout=60)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL 15 server for the whole session (skips the test when the binaries are absent)."""
    reason = binaries_missing()
    if reason:
        pytest.skip(reason)
    with running_postgres() as server:
        yield server
