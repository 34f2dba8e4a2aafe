"""Continuous batching through a real server: clients that go away free their rows, a full
batch and queue answer 429, deadlines are honoured."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import LiveServer, tiny_env

GENERATE = "/v1beta/models/tiny-random:generateContent"
STREAM = "/v1beta/models/tiny-random:streamGenerateContent"
LONG = {
    "contents": [{"parts": [{"text": "go"}]}],
    "generationConfig": {"maxOutputTokens": 500, "temperature": 1.0, "seed": 3},
}
SHORT = {"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": 4}}


@pytest.fixture(scope="module")
def live(tiny_model_dir, tmp_path_factory) -> Iterator[LiveServer]:
    """One row per batch and no queue: a second generation while one runs is refused."""
    env = {
        **tiny_env(tiny_model_dir),
        "TUNESMITH_WORKERS": "0",
        "TUNESMITH_SERVING_MAX_BATCH_ROWS": "1",
        "TUNESMITH_SERVING_MAX_QUEUED_REQUESTS": "0",
    }
    server = LiveServer(tmp_path_factory.mktemp("serving") / "data", env).start()
    yield server
    server.stop()


def metric(live: LiveServer, name: str, **labels: str) -> float:
    text = httpx.get(f"{live.url}/metrics").text
    wanted = {"base_model": "models/tiny-random", **labels}
    selector = ",".join(f'{key}="{value}"' for key, value in wanted.items())
    line = f"{name}{{{selector}}}"
    return sum(float(row.split()[-1]) for row in text.splitlines() if row.startswith(line))


def finished(live: LiveServer, outcome: str) -> float:
    return metric(live, "tunesmith_generations_finished_total", outcome=outcome)


def wait_for(live: LiveServer, name: str, count: float, **labels: str) -> None:
    for _ in range(1200):
        if metric(live, name, **labels) >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"{name} {labels} did not reach {count}")


def wait_for_outcome(live: LiveServer, outcome: str, count: float) -> None:
    wait_for(live, "tunesmith_generations_finished_total", count, outcome=outcome)


def test_a_stream_whose_client_disconnects_frees_its_row(live):
    cancelled = finished(live, "cancelled")
    with live.client() as client:
        with client.stream("POST", STREAM, params={"alt": "sse"}, json=LONG) as response:
            first = next(line for line in response.iter_lines() if line.startswith("data:"))
        assert "candidates" in json.loads(first.removeprefix("data:"))

        wait_for_outcome(live, "cancelled", cancelled + 1)
        answer = client.post(GENERATE, json=SHORT)

    assert answer.status_code == 200, answer.text
    assert answer.json()["usageMetadata"]["candidatesTokenCount"] > 0


def test_an_abandoned_request_stops_generating(live):
    cancelled = finished(live, "cancelled")
    body = json.dumps(LONG).encode()
    request = (
        f"POST {GENERATE} HTTP/1.1\r\nHost: 127.0.0.1\r\nx-goog-api-key: {live.api_key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    started = metric(live, "tunesmith_generation_requests_total")
    with socket.create_connection(("127.0.0.1", live.port)) as sock:
        sock.sendall(request + body)
        wait_for(live, "tunesmith_generation_requests_total", started + 1)
    # gone without reading the answer

    wait_for_outcome(live, "cancelled", cancelled + 1)
    with live.client() as client:
        assert client.post(GENERATE, json=SHORT).status_code == 200


def test_a_full_batch_and_queue_answer_429_with_retry_info(live):
    # One row and no queue: of 8 long generations sent at once, the first runs for its 500
    # tokens and those that arrive meanwhile are refused. (That the refusal is decided
    # without any timing is tests/integration/test_batching.py's business; this is the wire.)
    with live.client() as client, ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: client.post(GENERATE, json=LONG), range(8)))
        answer = client.post(GENERATE, json=SHORT)
        for _ in range(10):  # a client that waits as Retry-After says gets its answer
            if answer.status_code != 429:
                break
            time.sleep(int(answer.headers["retry-after"]))
            answer = client.post(GENERATE, json=SHORT)

    refused = [r for r in replies if r.status_code == 429]
    assert refused and len(refused) < len(replies), [r.status_code for r in replies]
    error = refused[0].json()["error"]
    assert error["status"] == "RESOURCE_EXHAUSTED"
    retry = next(d for d in error["details"] if d["@type"].endswith("RetryInfo"))
    assert retry["retryDelay"].endswith("s")
    assert int(refused[0].headers["retry-after"]) >= 1
    assert answer.status_code == 200, answer.text


def test_a_client_deadline_ends_the_generation(live):
    with live.client() as client:
        late = client.post(GENERATE, json=LONG, headers={"X-Server-Timeout": "0.001"})
        bad = client.post(GENERATE, json=SHORT, headers={"X-Server-Timeout": "soon"})

    assert late.status_code == 504, late.text
    assert late.json()["error"]["status"] == "DEADLINE_EXCEEDED"
    assert bad.status_code == 400
    assert "X-Server-Timeout" in bad.json()["error"]["message"]
