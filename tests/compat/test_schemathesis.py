"""schemathesis against the server's own OpenAPI document, with valid credentials and
without: no 5xx, and every error body a valid google.rpc Status.

Authenticated cases mostly name real resources (ACTIVE tuned models, their operations and
permissions, the base models), so that they reach the handlers rather than a 404.
`make test` runs 25 cases per method; `make fuzz` sets TUNESMITH_SCHEMATHESIS_CASES to run
at least that many authenticated cases in all."""

from __future__ import annotations

import io
import math
import os
import random
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from conftest import QUOTAS_OFF, TINY, LiveServer, tiny_env
from tunesmith.api import wire

RPC_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "RESOURCE_EXHAUSTED": 429,
}
EXAMPLES_PER_OPERATION = 25
AUTHENTICATED_CASES = int(os.environ.get("TUNESMITH_SCHEMATHESIS_CASES", "0"))
REAL_ID_SHARE = 0.8  # of the cases with a path id, those that name a real resource
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
    because thousands of cases a minute from one key are what the request quota refuses. No
    training worker: the fuzzer's creates only queue jobs, and CPU stays with the fuzzing."""
    env = {
        **tiny_env(tiny_model_dir),
        **QUOTAS_OFF,
        "TUNESMITH_WORKERS": "0",
        "TUNESMITH_DEFAULT_MAX_OUTPUT_TOKENS": "4",
        "TUNESMITH_QUOTA_TUNED_MODELS_PER_PROJECT": "0",
    }
    live = LiveServer(tmp_path_factory.mktemp("fuzz") / "data", env)
    yield live.start()
    live.stop()


def lora_archive(tiny_model_dir: Path, out: Path) -> bytes:
    """A small random LoRA adapter of the tiny model, as importAdapter takes it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            tar.add(out / name, arcname=name)
    return buffer.getvalue()


@dataclass
class RealIds:
    """Resources that exist, for path parameters. `disposable` models (created by the
    fuzzer itself) are the only real ones a DELETE may name, so the others stay."""

    models: list[str]
    operations: dict[str, list[str]]
    permissions: dict[str, list[str]]
    base_models: list[str]
    disposable: list[str] = field(default_factory=list)

    def fill(self, case, rnd: random.Random) -> None:
        params = case.path_parameters
        if not params or rnd.random() >= REAL_ID_SHARE:
            return
        if "base_id" in params:
            params["base_id"] = rnd.choice(self.base_models)
        if "model_id" not in params:
            return
        deletes_model = case.method.upper() == "DELETE" and "permission_id" not in params
        pool = self.disposable if deletes_model else self.models
        if not pool:
            return
        model = params["model_id"] = rnd.choice(pool)
        for name, known in (("operation_id", self.operations), ("permission_id", self.permissions)):
            if name in params and known.get(model):
                params[name] = rnd.choice(known[model])

    def learn(self, case, response) -> None:
        """Models the fuzzer created become disposable; deleted ones are forgotten."""
        if response.status_code != 200:
            return
        if case.method.upper() == "POST" and case.path.endswith("/tunedModels"):
            self.disposable.append(response.json()["metadata"]["tunedModel"].split("/")[1])
        if case.method.upper() == "DELETE" and "permission_id" not in case.path_parameters:
            gone = case.path_parameters["model_id"]
            self.disposable = [m for m in self.disposable if m != gone]


@pytest.fixture(scope="module")
def real_ids(server, tiny_model_dir, tmp_path_factory) -> RealIds:
    archive = lora_archive(tiny_model_dir, tmp_path_factory.mktemp("lora"))
    ids = RealIds([], {}, {}, [TINY.split("/")[1], "gemini-1.0-pro-001"])
    with server.client() as client:
        for model_id in ("fuzz-a", "fuzz-b"):
            reply = client.post(
                "/v1beta/tunedModels:importAdapter",
                params={"tunedModelId": model_id, "baseModel": TINY},
                content=archive,
            )
            assert reply.status_code == 200, reply.text
            grant = {"granteeType": "EVERYONE", "role": "READER"}
            assert client.post(f"/v1beta/tunedModels/{model_id}/permissions", json=grant).is_success
            ids.models.append(model_id)
            ids.operations[model_id] = [
                op["name"].split("/")[-1]
                for op in client.get(f"/v1beta/tunedModels/{model_id}/operations").json()[
                    "operations"
                ]
            ]
            ids.permissions[model_id] = [
                p["name"].split("/")[-1]
                for p in client.get(f"/v1beta/tunedModels/{model_id}/permissions").json()[
                    "permissions"
                ]
            ]
        # A model still CREATING too: its job only queues, with no worker to run it.
        reply = client.post(
            "/v1beta/tunedModels", json=QUEUED_MODEL, params={"tunedModelId": "fuzz-q"}
        )
        assert reply.status_code == 200, reply.text
        ids.models.append("fuzz-q")
        ids.operations["fuzz-q"] = [reply.json()["name"].split("/")[-1]]
    return ids


QUEUED_MODEL = {
    "baseModel": TINY,
    "tuningTask": {"trainingData": {"examples": {"examples": [{"textInput": "1", "output": "2"}]}}},
}


@pytest.fixture(scope="module")
def schema(server):
    document = httpx.get(f"{server.url}/openapi.json").json()
    return schemathesis.openapi.from_dict(document)


def operations(schema):
    return [result.ok() for result in schema.get_all_operations()]


HOSTILE_SHARE = 0.3  # of the authenticated cases, those with one value made hostile
HOSTILE_VALUES = [
    2**31,
    -(2**31) - 1,
    2**63,
    -(2**63) - 1,
    10**30,
    str(2**64),
    1e308,
    -0.0,
    "\ud800",
    "a\udfffb",
    "\u202e\x00",
    "x" * 100_000,
]


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def make_hostile(case, rnd: random.Random) -> None:
    """Puts one value the schema's own generator never tries (proto range edges, lone
    surrogates, a long string, nesting past the limit) into a body field or a query
    parameter."""
    if rnd.random() >= HOSTILE_SHARE:
        return
    value = rnd.choice([*HOSTILE_VALUES, nested(wire.MAX_DEPTH + 10)])
    slots = _slots(case.body) if isinstance(case.body, dict) else []
    if slots:
        container, key = rnd.choice(slots)
        container[key] = value
    elif case.query:  # a URL holds no lone surrogate: the client cannot encode one
        text = str(value)[:1000].encode("utf-8", "replace").decode("utf-8")
        case.query[rnd.choice(sorted(case.query))] = text


def _slots(body: dict) -> list[tuple[dict | list, str | int]]:
    """Every place in a JSON body a value sits, at any depth."""
    found: list[tuple[dict | list, str | int]] = []
    stack: list[dict | list] = [body]
    while stack:
        container = stack.pop()
        keys = container.keys() if isinstance(container, dict) else range(len(container))
        for key in keys:
            found.append((container, key))
            if isinstance(container[key], dict | list):
                stack.append(container[key])
    return found


def cases(operation) -> st.SearchStrategy:
    """Requests that fit the schema and requests that break it (out-of-range integers,
    wrong types, missing fields), half and half where the operation has anything to break."""
    positive = operation.as_strategy(GenerationMode.POSITIVE)
    try:
        return st.one_of(positive, operation.as_strategy(GenerationMode.NEGATIVE))
    except Exception:  # nothing in the operation can be made invalid
        return positive


def examples_per_operation(credentials: str, count: int) -> int:
    if credentials == "api-key" and AUTHENTICATED_CASES:
        return max(EXAMPLES_PER_OPERATION, math.ceil(AUTHENTICATED_CASES / count))
    return EXAMPLES_PER_OPERATION


def keep_generation_short(case) -> None:
    """Generation on the tiny model is cheap but not free: at most 4 tokens per candidate.
    Only valid lengths are shortened; hostile values go through as generated."""
    if not isinstance(case.body, dict):
        return
    config = case.body.get("generationConfig")
    if isinstance(config, dict):
        tokens = config.get("maxOutputTokens")
        if type(tokens) is int and tokens > 4:
            config["maxOutputTokens"] = 4


@pytest.mark.parametrize("credentials", ["api-key", "none"])
def test_no_server_errors_and_every_error_is_a_google_rpc_status(
    server, schema, real_ids, credentials
):
    headers = {"x-goog-api-key": server.api_key} if credentials == "api-key" else {}
    all_operations = operations(schema)
    examples = examples_per_operation(credentials, len(all_operations))
    for operation in all_operations:

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=cases(operation), rnd=st.randoms(use_true_random=False))
        def run(case, rnd) -> None:
            if credentials == "api-key":
                real_ids.fill(case, rnd)
                make_hostile(case, rnd)
            keep_generation_short(case)
            response = case.call(base_url=server.url, headers=headers, timeout=60)
            CASES_RUN[credentials][response.status_code] += 1
            assert_google_rpc_status(response)
            if credentials == "none":
                # No key (403), or a made-up key (400 API_KEY_INVALID) or token (401).
                assert response.status_code in (400, 401, 403), response.text
                if response.status_code == 400:
                    assert "API_KEY_INVALID" in response.text
            else:
                real_ids.learn(case, response)

        run()
    statuses = CASES_RUN[credentials]
    print(f"schemathesis, credentials={credentials}: {statuses.total()} cases, {dict(statuses)}")
    assert statuses.total() >= len(all_operations)
    if credentials == "api-key":
        assert statuses[200] > 0  # the key got generated requests past authentication
        assert statuses.total() >= AUTHENTICATED_CASES
