"""Shared fixtures: a tiny random model for plumbing, and real servers on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from postgres import PostgresServer
from tiny_model import build_tiny_model

REPO = Path(__file__).resolve().parents[1]
TINY = "models/tiny-random"
# The 15 examples of the Gemini tuning tutorial (../shared/reference/tutorial-rest-flow.md).
TUTORIAL_EXAMPLES = [
    ("1", "2"), ("3", "4"), ("-3", "-2"), ("twenty two", "twenty three"),
    ("two hundred", "two hundred one"), ("ninety nine", "one hundred"), ("8", "9"),
    ("-98", "-97"), ("1,000", "1,001"), ("10,100,000", "10,100,001"), ("thirteen", "fourteen"),
    ("eighty", "eighty one"), ("one", "two"), ("three", "four"), ("seven", "eight"),
]  # fmt: skip
# The tutorial's python-requests create body (batch 4: 19 steps).
TUTORIAL_REQUESTS_BODY = {
    "display_name": "number generator",
    "base_model": "models/gemini-1.0-pro-001",
    "tuning_task": {
        "hyperparameters": {"batch_size": 4, "learning_rate": 0.001, "epoch_count": 5},
        "training_data": {
            "examples": {"examples": [{"text_input": i, "output": o} for i, o in TUTORIAL_EXAMPLES]}
        },
    },
}
# Converted real base models survive between local runs here (CI starts empty).
BASE_MODEL_CACHE = REPO / ".tunesmith-test-cache"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


# Quotas off, for a server that a test drives harder than any one user may: say why where
# it is used. Every other test server runs with the default quotas, as users have them.
QUOTAS_OFF = {
    "TUNESMITH_QUOTA_REQUESTS_PER_MINUTE": "0",
    "TUNESMITH_QUOTA_CONCURRENT_JOBS_PER_PROJECT": "0",
}


def tiny_env(tiny_dir: Path) -> dict[str, str]:
    return {
        "TUNESMITH_EXTRA_BASE_MODELS": json.dumps([{"name": TINY, "path": str(tiny_dir)}]),
        "TUNESMITH_DEFAULT_BASE_MODEL": TINY,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    """`tunesmith serve` in a subprocess, as a user runs it."""

    data_dir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_key(self) -> str:
        return (self.data_dir / "secrets" / "owner-api-key").read_text().strip()

    def environment(self) -> dict[str, str]:
        """What this server's processes (and admin commands or extra workers) run with."""
        return {
            **os.environ,
            "TUNESMITH_DATA_DIR": str(self.data_dir),
            "TUNESMITH_PORT": str(self.port),
            "TUNESMITH_BASE_MODEL_DIR": str(BASE_MODEL_CACHE),
            **self.env,
        }

    def start(self, timeout: float = 300) -> LiveServer:
        env = self.environment()
        log = open(self.data_dir.parent / f"server-{self.port}.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tunesmith", "serve"], env=env, stdout=log, stderr=log
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log()
            try:
                if httpx.get(f"{self.url}/v1beta/models", headers=self.headers()).is_success:
                    return self
            except (httpx.HTTPError, FileNotFoundError):
                pass
            time.sleep(0.3)
        raise TimeoutError(self.log())

    def headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self.api_key}

    def admin(self, *args: str) -> str:
        """Runs an admin command (`tunesmith users create ...`) on this server's data dir."""
        env = self.environment()
        done = subprocess.run(
            [sys.executable, "-m", "tunesmith", *args], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout.strip()

    def admin_json(self, *args: str):
        return json.loads(self.admin(*args, "--json"))

    def new_api_key(self, email: str) -> str:
        """Creates the user if needed and returns a new API key for it."""
        users = self.admin_json("users", "list")
        if email not in {u["email"] for u in users}:
            self.admin("users", "create", email)
        return self.admin("keys", "create", "--user", email).splitlines()[-1]

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers(), timeout=120)

    def log(self) -> str:
        return (self.data_dir.parent / f"server-{self.port}.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def wait_for_operation(client: httpx.Client, name: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        operation = client.get(f"/v1/{name}").json()
        if operation.get("done"):
            return operation
        time.sleep(0.3)
    raise TimeoutError(f"{name} did not finish")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A private PostgreSQL server on loopback, for the whole run."""
    server = PostgresServer().start()
    yield server
    server.stop()


DATABASES = ["sqlite", "postgresql"]


def database_env(database: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """Settings for a test server on `database`: SQLite in its data dir (the default), or a
    new database on the test PostgreSQL server."""
    if database == "sqlite":
        return {}
    url = request.getfixturevalue("postgres").new_database()
    return {"TUNESMITH_DATABASE_URL": url}


@pytest.fixture(scope="session", params=DATABASES)
def server(request, tiny_model_dir, tmp_path_factory) -> Iterator[LiveServer]:
    """One shared server on the tiny random model for the integration and compatibility
    tests, once on each database."""
    env = {**tiny_env(tiny_model_dir), **database_env(request.param, request)}
    live = LiveServer(tmp_path_factory.mktemp(f"server-{request.param}") / "data", env)
    live.start()
    yield live
    live.stop()
