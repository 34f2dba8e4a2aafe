"""Requests a hostile client sends, on a real server: each is a 400 naming the field (or
404 for a method no route maps), never a 500, and leaves nothing behind."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from tunesmith.api import wire

EXAMPLES = [{"textInput": str(n), "output": str(n + 1)} for n in range(4)]
GENERATE = "/v1beta/models/tiny-random:generateContent"


def create_body(**fields) -> dict:
    return {
        "baseModel": "models/tiny-random",
        "tuningTask": {
            "hyperparameters": {"epochCount": 1, "batchSize": 2},
            "trainingData": {"examples": {"examples": EXAMPLES}},
        },
        **fields,
    }


def invalid_argument(reply: httpx.Response, field: str | None = None) -> dict:
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    if field is not None:
        fields = [v.get("field") for v in error["details"][0]["fieldViolations"]]
        assert field in fields, error
    return error


@pytest.fixture(scope="module")
def client(server):
    with server.client() as client:
        yield client


@pytest.fixture(scope="module")
def model(client) -> dict:
    reply = client.post("/v1beta/tunedModels", json=create_body(), params={"tunedModelId": "prey"})
    assert reply.status_code == 200, reply.text
    return client.get("/v1beta/tunedModels/prey").json()


def test_patch_beyond_int32_changes_nothing(client, model):
    for value in (2**63, str(2**63), 2**31):
        reply = client.patch("/v1beta/tunedModels/prey", content=json.dumps({"topK": value}))
        assert "out of range" in invalid_argument(reply, "topK")["message"]
    assert client.get("/v1beta/tunedModels/prey").json()["topK"] == model["topK"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"topK": 10**12}, "topK"),
        (
            {"tuningTask": {"hyperparameters": {"epochCount": 10**30}}},
            "tuningTask.hyperparameters.epochCount",
        ),
        ({"displayName": "\ud800"}, "displayName"),
        (
            {"tuningTask": {"trainingData": {"examples": {"examples": [{"textInput": "\udc00"}]}}}},
            "tuningTask.trainingData.examples.examples[0].textInput",
        ),
    ],
)
def test_create_refused_creates_nothing(client, fields, field):
    body = json.dumps(create_body(**fields))  # lone surrogates go out as \u escapes
    reply = client.post("/v1beta/tunedModels", content=body, params={"tunedModelId": "nothing"})
    invalid_argument(reply, field)
    assert client.get("/v1beta/tunedModels/nothing").status_code == 404


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"seed": 2**70}, "generationConfig.seed"),
        ({"topK": 2**63}, "generationConfig.topK"),
        ({"candidateCount": 9}, "generationConfig.candidateCount"),
    ],
)
def test_generation_config_out_of_range(client, config, field):
    body = {"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": config}
    invalid_argument(client.post(GENERATE, content=json.dumps(body)), field)


@pytest.mark.parametrize(
    "config",
    [
        {"topK": 2**31 - 1, "candidateCount": 8},  # top-k past the vocabulary
        {"temperature": 1e-45},  # logits / temperature overflows float32
        {"temperature": 2.0, "topP": 0.0, "topK": 1, "seed": -(2**31)},
    ],
)
def test_generation_at_the_edges_answers(client, config):
    body = {
        "contents": [{"parts": [{"text": "hi"}]}],
        "generationConfig": {**config, "maxOutputTokens": 2},
    }
    reply = client.post(GENERATE, json=body)
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["candidates"]) == config.get("candidateCount", 1)


@pytest.mark.parametrize("path", [GENERATE, "/v1beta/models/tiny-random:countTokens"])
def test_a_lone_surrogate_never_reaches_the_tokenizer(client, path):
    body = b'{"contents": [{"parts": [{"text": "a\\ud800"}]}]}'
    error = invalid_argument(client.post(path, content=body), "contents[0].parts[0].text")
    assert "must be valid Unicode" in error["message"]


def test_paging_beyond_int32_is_refused(client, model):
    reply = client.get("/v1beta/tunedModels", params={"pageSize": str(10**30)})
    invalid_argument(reply, "pageSize")
    token = json.dumps({"o": 10**30, "c": "tunedModels?"}).encode()
    token = base64.urlsafe_b64encode(token).decode().rstrip("=")
    invalid_argument(client.get("/v1beta/tunedModels", params={"pageToken": token}), "pageToken")


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 50_000 + b"]" * 50_000,
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        b'{"contents": [{"parts": [{"text": "x"}]}], "tools": ' + b"[" * 100 + b"]" * 100 + b"}",
        b'{"contents": [{"parts": [{"text": "x",}]}], "tools": ' + b"[" * 999 + b"]" * 999 + b"}",
    ],
)
def test_deep_nesting_is_refused(client, body):
    error = invalid_argument(client.post(GENERATE, content=body))
    assert f"deeper than {wire.MAX_DEPTH}" in error["message"]


def test_oversized_body_is_refused(client):
    body = b'{"displayName": "' + b"x" * wire.MAX_BODY_BYTES + b'"}'
    error = invalid_argument(client.patch("/v1beta/tunedModels/prey", content=body))
    assert "Request payload size exceeds the limit" in error["message"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/v1beta/tunedModels"),
        ("PUT", "/v1beta/tunedModels"),
        ("PUT", "/v1/tunedModels/prey"),
        ("POST", "/v1beta/tunedModels/prey"),
    ],
)
def test_unmapped_methods_are_not_found(client, model, method, path):
    reply = client.request(method, path)
    assert reply.status_code == 404, reply.text
    error = reply.json()["error"]
    assert (error["code"], error["status"]) == (404, "NOT_FOUND")
    assert error["message"] == f"Method not found: {method} {path}"
