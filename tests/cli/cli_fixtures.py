"""Fixtures of the CLI tests, loaded with `pytest_plugins` so that every CLI test module
shares one server (a conftest.py here would shadow the root one for `from conftest import`)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from cli_support import Cli

from conftest import LiveServer, tiny_env


@pytest.fixture(scope="session")
def cli_server(tiny_model_dir, tmp_path_factory) -> Iterator[LiveServer]:
    # One torch thread: on a busy machine, two spin-waiting threads slow a tiny model's
    # steps from milliseconds to a second.
    env = {**tiny_env(tiny_model_dir), "TUNESMITH_TORCH_THREADS": "1"}
    live = LiveServer(tmp_path_factory.mktemp("cli") / "data", env)
    yield live.start()
    live.stop()


@pytest.fixture(scope="session")
def cli(cli_server) -> Cli:
    return Cli(cli_server)


@pytest.fixture(scope="session")
def api(cli_server) -> Iterator[httpx.Client]:
    with cli_server.client() as client:
        yield client
