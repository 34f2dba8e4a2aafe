"""What the CLI tests share besides fixtures: running the command, tuning a model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from conftest import TINY, LiveServer, wait_for_operation

TUNESMITH = Path(sys.executable).with_name("tunesmith")
# Every example has the same answer, and 100 steps teach it to the tiny random model well
# enough that greedy decoding has a clear winner at each token, in any precision (with
# fewer, near-ties among its compressed logits let bfloat16 rounding pick either token).
COLOURS = "red green blue yellow"


@dataclass
class Cli:
    """Runs `tunesmith ...` in a subprocess against one server, as a user runs it."""

    server: LiveServer

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "TUNESMITH_SERVER_URL": self.server.url,
            "TUNESMITH_DATA_DIR": str(self.server.data_dir),  # holds the owner's key
            **self.server.env,
            **extra,
        }

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [str(TUNESMITH), *args],
            env=env or self.env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert "Traceback" not in done.stderr, done.stderr
        return done

    def ok(self, *args: str) -> str:
        done = self.run(*args)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))


def tune_colours(api: httpx.Client, model_id: str, epochs: int = 50) -> dict[str, Any]:
    """A tuned model (through the API, the quick way) that answers with COLOURS."""
    body = {
        "baseModel": TINY,
        "tuningTask": {
            "hyperparameters": {"epochCount": epochs, "batchSize": 2, "learningRate": 0.01},
            "trainingData": {
                "examples": {
                    "examples": [{"textInput": str(n), "output": COLOURS} for n in range(4)]
                }
            },
        },
    }
    created = api.post("/v1beta/tunedModels", json=body, params={"tunedModelId": model_id})
    assert created.status_code == 200, created.text
    operation = wait_for_operation(api, created.json()["name"])
    assert "response" in operation, operation
    return operation["response"]


def server_text(api: httpx.Client, model: str, prompt: str, tokens: int) -> str:
    """The server's greedy answer."""
    reply = api.post(
        f"/v1beta/{model}:generateContent",
        json={
            "contents": [{"parts": [{"text": prompt}]}],
            "generationConfig": {"temperature": 0, "maxOutputTokens": tokens},
        },
    )
    assert reply.status_code == 200, reply.text
    return reply.json()["candidates"][0]["content"]["parts"][0]["text"]
