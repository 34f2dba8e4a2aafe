"""Hostile but ordinary clients against a real server on loopback (issue 14): connections
that never finish their headers or bodies are closed, hostile imports are refused, and
normal requests keep answering throughout."""

from __future__ import annotations

import gzip
import io
import json
import socket
import tarfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from conftest import LiveServer, tiny_env

TIMEOUT = 1.0  # the server's header and body timeouts here
WAIT = 20.0  # how long a test waits for the server to close a connection
PARTIAL_HEAD = b"GET /v1beta/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
GENERATE = {
    "contents": [{"parts": [{"text": "1, 2, 3"}]}],
    "generationConfig": {"temperature": 0, "maxOutputTokens": 4},
}


@pytest.fixture(scope="module")
def live(tiny_model_dir, tmp_path_factory) -> Iterator[LiveServer]:
    env = {
        **tiny_env(tiny_model_dir),
        "TUNESMITH_TORCH_THREADS": "1",
        "TUNESMITH_HTTP_HEADER_TIMEOUT_SECONDS": str(TIMEOUT),
        "TUNESMITH_HTTP_BODY_TIMEOUT_SECONDS": str(TIMEOUT),
    }
    server = LiveServer(tmp_path_factory.mktemp("hostile") / "data", env)
    yield server.start()
    server.stop()


@pytest.fixture(scope="module")
def api(live: LiveServer) -> Iterator[httpx.Client]:
    with live.client() as client:
        yield client


def connect(live: LiveServer, first: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", live.port), timeout=WAIT)
    if first:
        sock.sendall(first)
    return sock


def until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends before it closes the connection (socket.timeout if it
    keeps it open for WAIT seconds)."""
    received = b""
    with sock:
        try:
            while chunk := sock.recv(4096):
                received += chunk
        except ConnectionResetError:
            pass
    return received


# ---------------------------------------------------------------- header and body timeouts


def test_a_partial_header_is_answered_408_and_closed(live):
    assert until_closed(connect(live, PARTIAL_HEAD)).startswith(b"HTTP/1.1 408 ")


def test_a_connection_that_sends_nothing_is_closed(live):
    assert until_closed(connect(live)) == b""


def test_a_header_that_trickles_in_is_cut_at_the_deadline_too(live):
    sock = connect(live, b"GET /v1beta/models HTTP/1.1\r\n")
    try:
        for _ in range(int(WAIT / 0.2)):  # a byte at a time: never idle, never done
            sock.sendall(b"X")
            time.sleep(0.2)
    except (BrokenPipeError, ConnectionResetError):
        return
    pytest.fail("the server kept reading a header for longer than WAIT seconds")


def test_a_stalled_body_is_closed(live):
    head = (
        f"POST /v1beta/tunedModels:importAdapter HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"x-goog-api-key: {live.api_key}\r\ncontent-length: 100000\r\n\r\n"
    ).encode()
    answer = until_closed(connect(live, head + b"\0" * 1000))
    assert not answer.startswith(b"HTTP/1.1 2")
    for _ in range(100):  # the access log line comes as the request finishes
        if "importAdapter 499" in live.log():
            break
        time.sleep(0.1)
    assert "importAdapter 499" in live.log()  # the client went away: not a server error
    assert "unhandled error" not in live.log()


def test_an_idle_keep_alive_connection_must_send_its_next_head_in_time(live):
    sock = connect(
        live, f"GET /v1beta/models?key={live.api_key} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    )
    first = sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 200 ")
    sock.sendall(PARTIAL_HEAD)
    assert b"HTTP/1.1 408 " in until_closed(sock)


def test_normal_requests_answer_while_partial_headers_pile_up(live, api):
    held = [connect(live, PARTIAL_HEAD) for _ in range(200)]
    try:
        for _ in range(10):
            assert api.get("/v1beta/models").status_code == 200
        assert api.post("/v1beta/models/tiny-random:generateContent", json=GENERATE).is_success
    finally:
        closed = [until_closed(sock) for sock in held]
    assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in closed)


# ---------------------------------------------------------------- the soak


@pytest.fixture(scope="module")
def adapter_archive(tiny_model_dir: Path, tmp_path_factory) -> Callable[..., bytes]:
    """A tar of a real LoRA adapter for the tiny model, its config changeable."""
    folder = tmp_path_factory.mktemp("soak") / "adapter"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(3)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    weights = (folder / "adapter_model.safetensors").read_bytes()

    def build(**changes) -> bytes:
        files = {
            "adapter_config.json": json.dumps({**config, **changes}).encode(),
            "adapter_model.safetensors": weights,
        }
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name, data in files.items():
                member = tarfile.TarInfo(name)
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
        return buffer.getvalue()

    return build


def huge_pax_header() -> bytes:
    member = tarfile.TarInfo("adapter_config.json")
    member.pax_headers = {"comment": "x" * 32 * 1024**2}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(member, io.BytesIO(b""))
    return gzip.compress(buffer.getvalue())


def test_soak_normal_requests_keep_answering_among_hostile_clients(live, adapter_archive):
    """Bounded in count: hostile clients hold partial headers and bodies and send hostile
    and concurrent imports while a normal client generates; every normal request is 2xx."""
    hostile_imports = [
        adapter_archive(init_lora_weights="pissa"),
        adapter_archive(init_lora_weights="olora"),
        adapter_archive(target_modules=".{4}(?:[a-z_.0-9]*)*X"),
        adapter_archive(lora_alpha=1e300),
        huge_pax_header(),
    ] * 2

    def import_(body: bytes, model_id: str) -> int:
        params = {"tunedModelId": model_id, "baseModel": "models/tiny-random"}
        with live.client() as client:
            reply = client.post("/v1beta/tunedModels:importAdapter", params=params, content=body)
        assert reply.status_code in (200, 400), reply.text
        return reply.status_code

    def hold_partial_connections(rounds: int) -> int:
        for _ in range(rounds):
            held = [connect(live, PARTIAL_HEAD) for _ in range(50)]
            [until_closed(sock) for sock in held]
        return rounds

    def normal_client(requests: int) -> list[int]:
        statuses = []
        with live.client() as client:
            for n in range(requests):
                statuses.append(client.get("/v1beta/models").status_code)
                model = (
                    "tunedModels/soak-good-0"
                    if n % 2 and n > requests // 2
                    else "models/tiny-random"
                )
                statuses.append(
                    client.post(f"/v1beta/{model}:generateContent", json=GENERATE).status_code
                )
        return statuses

    with ThreadPoolExecutor(8) as pool:
        good = [pool.submit(import_, adapter_archive(), f"soak-good-{i}") for i in range(2)]
        holders = [pool.submit(hold_partial_connections, 3) for _ in range(2)]
        bad = [
            pool.submit(import_, body, f"soak-bad-{i}") for i, body in enumerate(hostile_imports)
        ]
        assert [f.result() for f in good] == [200, 200]  # two imports at once, both served
        normal = pool.submit(normal_client, 20)
        assert all(200 <= status < 300 for status in normal.result()), normal.result()
        assert {f.result() for f in bad} == {400}
        assert [f.result() for f in holders] == [3, 3]
    with live.client() as client:
        for model_id in ("soak-good-0", "soak-good-1"):
            reply = client.post(f"/v1beta/tunedModels/{model_id}:generateContent", json=GENERATE)
            assert reply.status_code == 200, reply.text
