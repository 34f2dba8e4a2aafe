"""schemathesis against the server's own OpenAPI document, with valid credentials and
without: no 5xx, and every error body a valid google.rpc Status."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings

from conftest import QUOTAS_OFF, LiveServer, tiny_env

RPC_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "RESOURCE_EXHAUSTED": 429,
    "UNIMPLEMENTED": 501,
}
EXAMPLES_PER_OPERATION = 25
CASES_RUN: dict[str, Counter[int]] = {"api-key": Counter(), "none": Counter()}


def assert_google_rpc_status(response) -> None:
    assert response.status_code < 500, f"{response.status_code}: {response.text[:500]}"
    if response.status_code < 400:
        return
    error = response.json()["error"]
    assert set(error) <= {"code", "message", "status", "details"}, error
    assert error["code"] == response.status_code, error
    assert RPC_STATUS[error["status"]] == response.status_code, error
    assert isinstance(error["message"], str) and error["message"], error
    for detail in error.get("details", []):
        assert detail["@type"].startswith("type.googleapis.com/google.rpc."), detail


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory) -> Iterator[LiveServer]:
    """Its own server, so the fuzzed requests leave the shared one's data alone; quotas off,
    because thousands of cases a minute from one key are what the request quota refuses."""
    env = {**tiny_env(tiny_model_dir), **QUOTAS_OFF}
    live = LiveServer(tmp_path_factory.mktemp("fuzz") / "data", env)
    yield live.start()
    live.stop()


@pytest.fixture(scope="module")
def schema(server):
    document = httpx.get(f"{server.url}/openapi.json").json()
    return schemathesis.openapi.from_dict(document)


def operations(schema):
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("credentials", ["api-key", "none"])
def test_no_server_errors_and_every_error_is_a_google_rpc_status(server, schema, credentials):
    headers = {"x-goog-api-key": server.api_key} if credentials == "api-key" else {}
    for operation in operations(schema):

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def run(case) -> None:
            # Generation against the tiny model would be slow to no purpose; keep it short.
            if isinstance(case.body, dict) and "generationConfig" in case.body:
                config = case.body["generationConfig"]
                if isinstance(config, dict):
                    config["maxOutputTokens"] = 2
                    config["candidateCount"] = 1
            response = case.call(base_url=server.url, headers=headers, timeout=60)
            CASES_RUN[credentials][response.status_code] += 1
            assert_google_rpc_status(response)
            if credentials == "none":
                # No key (403), or a made-up key (400 API_KEY_INVALID) or token (401).
                assert response.status_code in (400, 401, 403), response.text
                if response.status_code == 400:
                    assert "API_KEY_INVALID" in response.text

        run()
    statuses = CASES_RUN[credentials]
    print(f"schemathesis, credentials={credentials}: {statuses.total()} cases, {dict(statuses)}")
    assert statuses.total() >= len(operations(schema))
    if credentials == "api-key":
        assert statuses[200] > 0  # the key got generated requests past authentication
