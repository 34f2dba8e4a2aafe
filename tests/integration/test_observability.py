"""/metrics, request ids and logs: in-process for the HTTP layer, then on a real server that
tunes and generates."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

import httpx
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from transformers import AutoTokenizer

from conftest import TINY, LiveServer, tiny_env, wait_for_operation
from tunesmith.api.app import create_app
from tunesmith.config import Settings
from tunesmith.training.prompt import PromptCodec, detect_prompt_format

EXAMPLES = [("1", "2"), ("three", "four"), ("ninety nine", "one hundred")]
EPOCHS, BATCH = 2, 2
CREATE_BODY = {
    "displayName": "Observed model",
    "baseModel": TINY,
    "tuningTask": {
        "hyperparameters": {"epochCount": EPOCHS, "batchSize": BATCH},
        "trainingData": {
            "examples": {"examples": [{"textInput": i, "output": o} for i, o in EXAMPLES]}
        },
    },
}
GENERATE_BODY = {
    "contents": [{"parts": [{"text": "three"}]}],
    "generationConfig": {"maxOutputTokens": 6},
}
Sample = tuple[str, frozenset[tuple[str, str]]]


def samples(exposition: str) -> dict[Sample, float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def total(scraped: dict[Sample, float], name: str, **labels: str) -> float:
    """The sum over every sample of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(value for (n, got), value in scraped.items() if n == name and wanted <= got)


def test_metrics_need_a_readers_credentials_off_loopback(tmp_path):
    exposed = TestClient(create_app(Settings(data_dir=tmp_path, host="0.0.0.0")))
    assert exposed.get("/metrics").status_code == 403
    key = (tmp_path / "secrets" / "owner-api-key").read_text().strip()
    assert exposed.get("/metrics", params={"key": key}).status_code == 200

    opened = Settings(data_dir=tmp_path, host="0.0.0.0", metrics_public=True)
    assert TestClient(create_app(opened)).get("/metrics").status_code == 200
    local = TestClient(create_app(Settings(data_dir=tmp_path, host="127.0.0.1")))
    assert local.get("/metrics").status_code == 200


def test_routes_are_labelled_by_template_and_request_ids_echoed(tmp_path):
    client = TestClient(create_app(Settings(data_dir=tmp_path)))
    reply = client.get("/v1beta/tunedModels/private-id", headers={"X-Request-Id": "trace.7"})
    assert reply.status_code == 403 and reply.headers["x-request-id"] == "trace.7"
    unsafe = client.get("/v1/tunedModels/private-id", headers={"X-Request-Id": "a b"})
    assert re.fullmatch(r"[0-9a-f]{32}", unsafe.headers["x-request-id"])
    client.get("/scanner/private-path")
    exposition = client.get("/metrics").text
    scraped = samples(exposition)
    for route in ("/v1beta/tunedModels/{model_id}", "/v1/tunedModels/{model_id}", "unmatched"):
        assert total(scraped, "tunesmith_http_requests_total", route=route) == 1
    assert "private" not in exposition


def sse_documents(text: str) -> Iterable[dict]:
    return (json.loads(line[len("data: ") :]) for line in text.splitlines() if line.strip())


def trained_tokens_by_hand(tiny_model_dir) -> int:
    """Prompt and answer tokens of every example, once per epoch (padding is not training)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    codec = PromptCodec(tokenizer, detect_prompt_format(tokenizer))
    pairs = [codec.encode_example(text_input, output) for text_input, output in EXAMPLES]
    return EPOCHS * sum(len(prompt) + len(answer) for prompt, answer in pairs)


def test_a_live_server_measures_tuning_and_generation_and_logs_request_ids(
    tiny_model_dir, tmp_path
):
    live = LiveServer(tmp_path / "data", tiny_env(tiny_model_dir)).start()
    try:
        with live.client() as client:
            created = client.post(
                "/v1beta/tunedModels", json=CREATE_BODY, headers={"X-Request-Id": "create-42"}
            )
            assert created.headers["x-request-id"] == "create-42"
            operation = wait_for_operation(client, created.json()["name"])
            model = operation["metadata"]["tunedModel"]
            generated = client.post(f"/v1beta/{model}:generateContent", json=GENERATE_BODY)
            streamed = client.post(
                f"/v1beta/{model}:streamGenerateContent",
                params={"alt": "sse"},
                json=GENERATE_BODY,
            )
        assert httpx.get(f"{live.url}/v1beta/models", params={"key": live.api_key}).is_success
        scraped = samples(httpx.get(f"{live.url}/metrics").text)  # loopback: no credentials
    finally:
        live.stop()

    assert "error" not in operation, operation
    assert scraped[("tunesmith_tuning_jobs", frozenset({("state", "succeeded")}))] == 1
    assert total(scraped, "tunesmith_tuning_jobs") == 1
    assert total(scraped, "tunesmith_tuned_models", state="active") == 1
    assert total(scraped, "tunesmith_training_steps") == operation["metadata"]["totalSteps"]
    assert total(scraped, "tunesmith_training_tokens") == trained_tokens_by_hand(tiny_model_dir)

    usages = [generated.json()["usageMetadata"]]
    usages += [d["usageMetadata"] for d in sse_documents(streamed.text) if "usageMetadata" in d]
    assert len(usages) == 2
    on_tiny = {"base_model": TINY}
    assert total(scraped, "tunesmith_generation_requests_total", **on_tiny) == 2
    for kind, field in (("prompt", "promptTokenCount"), ("candidates", "candidatesTokenCount")):
        counted = total(scraped, "tunesmith_generation_tokens_total", type=kind, **on_tiny)
        assert counted == sum(usage[field] for usage in usages) > 0
    for histogram in ("duration", "time_to_first_token"):
        name = f"tunesmith_generation_{histogram}_seconds_count"
        assert total(scraped, name, **on_tiny) == 2

    requests = "tunesmith_http_request_duration_seconds_count"
    for route in ("/v1beta/tunedModels", "/v1beta/tunedModels/{model_id}:generateContent"):
        assert total(scraped, requests, method="POST", route=route, status="200") == 1
    polled = "/v1/tunedModels/{model_id}/operations/{operation_id}"  # wait_for_operation's
    assert total(scraped, requests, method="GET", route=polled, status="200") >= 1
    labels = {value for (_, got) in scraped for _, value in got}
    assert not {model, model.removeprefix("tunedModels/"), "Observed model"} & labels

    log = live.log()
    assert "request_id=create-42 POST /v1beta/tunedModels 200" in log
    assert f"request_id={generated.headers['x-request-id']} " in log
    assert f"operation={operation['name']} " in log  # the worker's lines
    assert live.api_key not in log
