"""`tunesmith models`, `operations`, `generate` and `base-models` against a real server."""

from __future__ import annotations

import subprocess

import httpx
import pytest
from cli_support import TUNESMITH, Cli, server_text, tune_colours

from conftest import TINY, free_port

pytest_plugins = ["cli_fixtures"]


@pytest.fixture(scope="module")
def colours(api: httpx.Client) -> dict:
    return tune_colours(api, "cli-colours")


def test_models_list_get_update_delete(cli: Cli, api: httpx.Client):
    tune_colours(api, "cli-crud", epochs=2)
    assert "tunedModels/cli-crud" in {m["name"] for m in cli.json("models", "list")}
    assert "cli-crud" in cli.ok("models", "list")
    assert cli.json("models", "get", "cli-crud")["state"] == "ACTIVE"
    assert "2 epochs, batch size 2, learning rate 0.01" in cli.ok("models", "get", "cli-crud")

    updated = cli.json(
        "models", "update", "tunedModels/cli-crud", "--display-name", "Colours",
        "--temperature", "0.3",
    )  # fmt: skip
    assert (updated["displayName"], updated["temperature"]) == ("Colours", 0.3)
    refused = cli.run("models", "update", "cli-crud", "--top-p", "7")
    assert refused.returncode == 1
    assert "topP must be in [0.0, 1.0], got 7.0 (INVALID_ARGUMENT)" in refused.stderr
    assert "Nothing to update" in cli.run("models", "update", "cli-crud").stderr

    assert "Deleted tunedModels/cli-crud." in cli.ok("models", "delete", "cli-crud")
    gone = cli.run("models", "get", "cli-crud")
    assert gone.returncode == 1
    assert "Tuned model tunedModels/cli-crud does not exist. (NOT_FOUND)" in gone.stderr


def test_operations_list_get_cancel(cli: Cli, colours: dict):
    [operation] = cli.json("operations", "list", "cli-colours")
    name = operation["name"]
    assert name in {op["name"] for op in cli.json("operations", "list")}
    assert cli.json("operations", "get", name)["done"] is True
    shown = cli.ok("operations", "get", name)
    assert "SUCCEEDED" in shown and "100/100" in shown

    finished = cli.run("operations", "cancel", name)
    assert finished.returncode == 1
    assert "has already finished" in finished.stderr
    not_a_name = cli.run("operations", "get", "cli-colours")
    assert not_a_name.returncode == 1
    assert "expected tunedModels/MODEL/operations/ID" in not_a_name.stderr


def test_generate_streams_the_servers_answer(cli: Cli, api: httpx.Client, colours: dict):
    expected = server_text(api, colours["name"], "7", 8)
    assert expected != server_text(api, TINY, "7", 8)  # the tuned adapter answers
    options = ("--temperature", "0", "--max-output-tokens", "8")
    assert cli.ok("generate", "cli-colours", "7", *options) == expected + "\n"
    whole = cli.json("generate", "tunedModels/cli-colours", "7", *options)
    assert whole["candidates"][0]["content"]["parts"][0]["text"] == expected
    from_stdin = subprocess.run(
        [str(TUNESMITH), "generate", "cli-colours", "-", *options],
        input="7",
        env=cli.env(),
        capture_output=True,
        text=True,
    )
    assert from_stdin.stdout == expected + "\n"
    base = cli.ok("generate", TINY, "7", "--temperature", "0", "--max-output-tokens", "4")
    assert base == server_text(api, TINY, "7", 4) + "\n"


def test_base_models_list(cli: Cli):
    assert TINY in {m["name"] for m in cli.json("base-models", "list")}
    assert TINY in cli.ok("base-models", "list")


def test_connection_and_credential_problems_are_messages(cli: Cli, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    down = cli.run("models", "list", env=cli.env(TUNESMITH_SERVER_URL=url))
    assert down.returncode == 1
    assert f"Cannot reach the Tunesmith server at {url}" in down.stderr

    bad_key = cli.run("models", "list", env=cli.env(TUNESMITH_API_KEY="nope"))
    assert bad_key.returncode == 1
    assert "API key not valid" in bad_key.stderr

    no_key = cli.run("models", "list", env=cli.env(TUNESMITH_DATA_DIR=str(tmp_path)))
    assert no_key.returncode == 1
    assert "No API key: set TUNESMITH_API_KEY" in no_key.stderr
