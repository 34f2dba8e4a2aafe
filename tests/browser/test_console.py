"""The web console in a real browser: console_tour.mjs drives Debian's Chromium through
playwright-core (installed by `make test` with `npm ci`) against a live server on the tiny
random model. Screenshots land in tests/artifacts/browser/."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import REPO, TINY, LiveServer, tiny_env

HERE = Path(__file__).resolve().parent
ARTIFACTS = REPO / "tests" / "artifacts" / "browser"
CHROMIUM = shutil.which("chromium")
BLOCKER_ID = "queue-blocker"
TOUR_ID = "console-tour"
EXAMPLES = HERE / "fixtures" / "numbers.jsonl"  # 20 examples
TOUR_EPOCHS = 6  # of batch size 1: 120 steps, several seconds of training on the tiny model
TOUR_STEPS = 120

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (`make system-deps` installs it)"
)


@pytest.fixture
def console_server(tiny_model_dir: Path, tmp_path: Path) -> Iterator[LiveServer]:
    """A server whose one worker trains at a fixed fraction of its speed, so the curve grows
    while the page watches however fast this machine trains the tiny model."""
    env = {**tiny_env(tiny_model_dir), "TUNESMITH_WORKERS": "0"}
    live = LiveServer(tmp_path / "data", env).start()
    worker = subprocess.Popen(
        [sys.executable, "-m", "tunesmith", "worker"],
        env=live.environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stop = threading.Event()
    throttle = threading.Thread(target=run_in_slices, args=(worker, stop), daemon=True)
    throttle.start()
    yield live
    stop.set()
    throttle.join()
    worker.terminate()
    worker.wait(timeout=30)
    live.stop()


def run_in_slices(worker: subprocess.Popen, stop: threading.Event) -> None:
    """Lets the worker run 50 ms in every 250 ms (SIGSTOP/SIGCONT), well inside its lease."""
    while not stop.is_set():
        worker.send_signal(signal.SIGCONT)
        time.sleep(0.05)
        worker.send_signal(signal.SIGSTOP)
        stop.wait(0.2)
    worker.send_signal(signal.SIGCONT)


def occupy_the_worker(server: LiveServer) -> None:
    """Starts a job long enough to keep the server's one worker busy until the tour
    cancels it, so that the tour's own model is queued first."""
    examples = [{"textInput": str(n), "output": str(n + 1)} for n in range(4)]
    body = {
        "baseModel": TINY,
        "displayName": "Queue blocker",
        "tuningTask": {
            "hyperparameters": {"epochCount": 1000, "batchSize": 1},
            "trainingData": {"examples": {"examples": examples}},
        },
    }
    with server.client() as client:
        created = client.post("/v1beta/tunedModels", params={"tunedModelId": BLOCKER_ID}, json=body)
        assert created.status_code == 200, created.text
        deadline = time.monotonic() + 60
        while (
            not client.get(f"/v1beta/{created.json()['name']}")
            .json()["metadata"]
            .get("completedSteps")
        ):
            assert time.monotonic() < deadline, "the blocking job never started"
            time.sleep(0.2)


def run_tour(server: LiveServer) -> tuple[subprocess.CompletedProcess, dict]:
    shutil.rmtree(ARTIFACTS, ignore_errors=True)  # only this run's screenshots
    ARTIFACTS.mkdir(parents=True)
    env = {
        **os.environ,
        "CONSOLE_URL": server.url,
        "CONSOLE_API_KEY": server.api_key,
        "BLOCKER_MODEL_ID": BLOCKER_ID,
        "EXAMPLES_FILE": str(EXAMPLES),
        "TOUR_EPOCHS": str(TOUR_EPOCHS),
        "BAD_EXAMPLES_FILE": str(HERE / "fixtures" / "bad-examples.jsonl"),
        "ARTIFACTS_DIR": str(ARTIFACTS),
        "CHROMIUM": str(CHROMIUM),
    }
    done = subprocess.run(
        ["node", "console_tour.mjs"], cwd=HERE, env=env, capture_output=True, text=True, timeout=300
    )
    lines = done.stdout.strip().splitlines()
    report = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    return done, report


def test_console_tour(console_server: LiveServer):
    assert (HERE / "node_modules" / "playwright-core").is_dir(), (
        "playwright-core is missing: `make test` installs it (or run `npm ci` in tests/browser)"
    )
    occupy_the_worker(console_server)
    done, report = run_tour(console_server)
    assert done.returncode == 0, (
        f"{report.get('failure', '')}\n{done.stderr[-3000:]}\nscreenshots: {ARTIFACTS}"
    )
    assert report["consoleErrors"] == []

    assert "API key not valid" in report["rejectedKey"]
    assert report["storedKey"] == console_server.api_key
    assert report["keyAfterSignOut"] is None

    problems = report["datasetProblems"]
    assert problems[:2] == ["line 2: missing 'output'", "line 3: the output is empty"]
    assert problems[2].startswith("line 4: not valid JSON (")
    assert problems[3:] == [
        "line 5: unknown field 'prompt'; expected text_input (or input) and output",
        "line 6: expected a JSON object with text_input and output, got a list",
    ]
    assert "5 problems to fix; the first: line 2: missing 'output'" in report["localSummary"]
    assert report["pasted"].startswith("✓ 2 examples")
    assert report["uploaded"] == "✓ 20 examples in numbers.jsonl (JSONL)"

    # The server's google.rpc error, shown with the field named as the form names it.
    assert "INVALID_ARGUMENT" in report["serverError"]
    assert (
        "Epochs: tuningTask.hyperparameters.epochCount must be in [1, 1000]"
        in (report["serverError"])
    )
    assert "must be in [1, 1000], got 5000" in report["epochsFieldError"]
    assert report["epochsInvalid"] == "true"
    assert report["estimate"].endswith(f"= {TOUR_STEPS} steps")

    assert report["queuedPoints"] == 0
    assert report["queuedProgress"].startswith("Queued")
    assert report["blockerState"] == "Failed"
    assert f"/ {TOUR_STEPS} steps" in report["listProgress"]

    # Points arrived while the page watched, and a reload kept them.
    counts = report["pointCounts"]
    assert len(counts) >= 2 and counts == sorted(counts), counts
    assert counts[-1] < TOUR_STEPS, "the curve never grew while the page watched"
    assert report["pointsAfterReload"] >= report["pointsBeforeReload"] > 0
    assert report["urlAfterReload"].endswith(f"#/models/{TOUR_ID}")
    assert report["finalPoints"] == TOUR_STEPS
    assert report["epochMarkers"] == TOUR_EPOCHS
    assert report["progressText"] == f"{TOUR_STEPS} of {TOUR_STEPS} steps"
    hyperparameters = report["facts"][0]
    assert f"Epochs\n{TOUR_EPOCHS}" in hyperparameters and "Batch size\n1" in hyperparameters
    assert report["firstPointReadout"].startswith(f"Step 1 of {TOUR_STEPS} · epoch 0 · mean loss ")
    assert report["hoverReadout"].startswith("Step ")
    assert report["narrowOverflow"] is False, "the model page scrolls sideways on a phone"

    assert report["playgroundModel"] == f"tunedModels/{TOUR_ID}"
    assert "temperature 1.2 · max 8 tokens" in report["playgroundMeta"][0]
    assert "answer tokens" in report["playgroundMeta"][1]

    assert report["listedAfterDelete"] == [TOUR_ID]
    assert len(report["screenshots"]) == 10
    assert all(Path(shot).stat().st_size > 10_000 for shot in report["screenshots"])

    with httpx.Client(base_url=console_server.url, headers=console_server.headers()) as client:
        model = client.get(f"/v1beta/tunedModels/{TOUR_ID}").json()
    assert model["state"] == "ACTIVE" and model["displayName"] == "Console tour"
