"""A private PostgreSQL server on loopback for the tests, from Debian's `postgresql`
package (`make system-deps` installs it): its own cluster in a temporary folder, a free port,
trust authentication for one role, and a fresh database per test server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

ROLE = "tunesmith"


def server_binaries() -> Path:
    """The newest installed PostgreSQL's bin folder."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    if not found:
        raise FileNotFoundError(
            "PostgreSQL is not installed: `make system-deps` installs Debian's postgresql"
        )
    return found[-1].parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    def __init__(self) -> None:
        self.bin = server_binaries()
        # Not under pytest's 0700 temp folders: the server runs as the `postgres` user
        # when the tests run as root (PostgreSQL refuses to run as root).
        self.root = Path(tempfile.mkdtemp(prefix="tunesmith-pg-"))
        self.port = _free_port()
        self.as_server_user: list[str] = []
        if os.geteuid() == 0:
            self.as_server_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.root, "postgres")

    def _run(self, *command: str | Path) -> None:
        subprocess.run(
            [*self.as_server_user, *map(str, command)],
            check=True,
            capture_output=True,
            cwd=self.root,
        )

    def start(self) -> PostgresServer:
        data = self.root / "data"
        self._run(self.bin / "initdb", "-D", data, "-U", ROLE, "-A", "trust", "-E", "UTF8")
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=300"
        )
        self._run(
            self.bin / "pg_ctl", "-D", data, "-l", self.root / "log", "-w", "-o", options, "start"
        )
        return self

    def url(self, database: str) -> str:
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A new empty database's URL, as a user would set TUNESMITH_DATABASE_URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run(self.bin / "pg_ctl", "-D", self.root / "data", "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
