"""The REST tuning tutorial's curl flow, as published: its bodies, its polling loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

BODY = (Path(__file__).parent / "compat" / "tutorial_create_body.json").read_text()


def access_token(server) -> str:
    env = {**os.environ, "TUNESMITH_DATA_DIR": str(server.data_dir), **server.env}
    result = subprocess.run(
        [sys.executable, "-m", "tunesmith", "auth", "print-access-token"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return result.stdout.strip()


def curl(server, token: str, method: str, path: str, data: str | None = None) -> str:
    command = [
        "curl", "-s", "-X", method, f"{server.url}{path}",
        "-H", "Content-Type: application/json",
        "-H", f"Authorization: Bearer {token}",
        "-H", "x-goog-user-project: my-project-id",
    ]  # fmt: skip
    if data is not None:
        command += ["-d", data]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def run_tutorial_curl_flow(server, token: str) -> None:
    """The tutorial's curl commands against `server`, checking each recorded output."""
    listed = json.loads(curl(server, token, "GET", "/v1beta/tunedModels"))
    assert isinstance(listed, dict)

    operation = json.loads(curl(server, token, "POST", "/v1beta/tunedModels", BODY))
    assert operation["metadata"]["totalSteps"] == 38
    assert "done" not in operation
    model_name = operation["metadata"]["tunedModel"]
    assert model_name.startswith("tunedModels/number-generator-model-")
    assert operation["name"].startswith(f"{model_name}/operations/")

    # Listed at once, CREATING while it trains.
    state = curl(server, token, "GET", f"/v1beta/{model_name}")
    assert '"state": "CREATING"' in state or '"state": "ACTIVE"' in state

    # The tutorial's polling loop, on /v1/.
    percents = []
    op_json = operation
    while op_json.get("response") is None and op_json.get("error") is None:
        time.sleep(0.2)
        op_json = json.loads(curl(server, token, "GET", f"/v1/{op_json['name']}"))
        percent = op_json["metadata"].get("completedPercent")
        if percent is not None:
            percents.append(percent)
            last = op_json["metadata"]["snapshots"][-1]
            assert set(last) <= {"step", "epoch", "meanLoss", "computeTime"}
    assert op_json["done"] is True
    assert percents == sorted(percents) and percents[-1] == 100.0
    snapshots = op_json["metadata"]["snapshots"]
    assert [s["step"] for s in snapshots] == list(range(1, 39))
    assert snapshots[-1]["epoch"] == 5
    assert all(s["meanLoss"] > 0 for s in snapshots)

    grep = [line for line in curl(server, token, "GET", f"/v1beta/{model_name}").splitlines()
            if "state" in line]  # fmt: skip
    assert grep == ['  "state": "ACTIVE",']

    answer = json.loads(
        curl(server, token, "POST", f"/v1beta/{model_name}:generateContent",
             '{"contents": [{"parts": [{"text": "LXIII"}]}]}')
    )  # fmt: skip
    candidate = answer["candidates"][0]
    assert candidate["content"]["role"] == "model"
    assert isinstance(candidate["content"]["parts"][0]["text"], str)
    assert candidate["finishReason"] in ("STOP", "MAX_TOKENS")
    assert "safetyRatings" not in candidate and "promptFeedback" not in answer
    usage = answer["usageMetadata"]
    assert usage["promptTokenCount"] > 0
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"]
