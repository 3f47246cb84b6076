"""A real PostgreSQL server for the tests: a throwaway cluster on a free loopback port.

`MAESTRO_TEST_POSTGRES_DSN` points the tests at a server someone else runs; otherwise one is
started from the machine's PostgreSQL binaries (`.ci/run` installs them), as the `postgres` user
when the tests run as root, because PostgreSQL refuses to run as root. Each test gets its own
database.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg


def _binaries() -> Path:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql); .ci/run does it")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Yields the DSN of the `postgres` database of a running server."""
    external = os.environ.get("MAESTRO_TEST_POSTGRES_DSN")
    if external:
        yield external
        return
    bindir = _binaries()
    root = Path(tempfile.mkdtemp(prefix="maestro-pg-"))
    data = root / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        root.chmod(0o700)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
         "--no-sync", "-E", "UTF8"],
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    server = subprocess.Popen(
        [*as_user, str(bindir / "postgres"), "-D", str(data), "-p", str(port),
         "-h", "127.0.0.1", "-k", str(root), "-c", "fsync=off", "-c", "max_connections=200"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(dsn, connect_timeout=1).close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.1)
        yield dsn
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(root, ignore_errors=True)


def fresh_database(server_dsn: str) -> str:
    """Create an empty database on the server; its DSN."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}".encode())
    return server_dsn.replace("dbname=postgres", f"dbname={name}")
