"""The web console in a real browser: console_tour.mjs drives Debian's Chromium through
playwright-core (installed by `make test` with `npm ci`) against a live server on the tiny
random model. Screenshots land in tests/artifacts/browser/. Before the tour, a small job with
validation examples trains to the end, so the tour can check the validation curve, the
per-epoch table and the checkpoint list, as its owner and as a reader."""

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
VALIDATED_ID = "validated"
VALIDATED_EPOCHS = 3  # of 8 examples in batches of 2: 4 steps an epoch
VALIDATED_STEPS = 12
EVALUATION_INTERVAL = 3  # steps 3, 6, 9 as well as the epoch ends 4, 8, 12
READER = "reader@example.com"

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


def tune_with_validation(server: LiveServer) -> str:
    """Creates a job with validation examples through the API, waits until it is ACTIVE and
    shares it with a reader; answers the reader's API key."""
    examples = [{"textInput": str(n), "output": str(n + 1)} for n in range(8)]
    held_out = [{"textInput": str(n), "output": str(n + 1)} for n in range(20, 23)]
    body = {
        "baseModel": TINY,
        "displayName": "Validated",
        "tuningTask": {
            "hyperparameters": {"epochCount": VALIDATED_EPOCHS, "batchSize": 2},
            "trainingData": {"examples": {"examples": examples}},
            "validationData": {"examples": {"examples": held_out}},
            "evaluationIntervalSteps": EVALUATION_INTERVAL,
        },
    }
    with server.client() as client:
        created = client.post(
            "/v1beta/tunedModels", params={"tunedModelId": VALIDATED_ID}, json=body
        )
        assert created.status_code == 200, created.text
        deadline = time.monotonic() + 120
        while (state := client.get(f"/v1beta/tunedModels/{VALIDATED_ID}").json()["state"]) != (
            "ACTIVE"
        ):
            assert state == "CREATING" and time.monotonic() < deadline, state
            time.sleep(0.3)
        reader_key = server.new_api_key(READER)
        shared = client.post(
            f"/v1beta/tunedModels/{VALIDATED_ID}/permissions",
            json={"granteeType": "USER", "emailAddress": READER, "role": "READER"},
        )
        assert shared.status_code == 200, shared.text
    return reader_key


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


def run_tour(server: LiveServer, reader_key: str) -> tuple[subprocess.CompletedProcess, dict]:
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
        "VALIDATED_MODEL_ID": VALIDATED_ID,
        "READER_API_KEY": reader_key,
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
    reader_key = tune_with_validation(console_server)
    occupy_the_worker(console_server)
    done, report = run_tour(console_server, reader_key)
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

    assert sorted(report["listedAfterDelete"]) == [TOUR_ID, VALIDATED_ID]
    assert len(report["screenshots"]) == 13
    assert all(Path(shot).stat().st_size > 10_000 for shot in report["screenshots"])

    with httpx.Client(base_url=console_server.url, headers=console_server.headers()) as client:
        model = client.get(f"/v1beta/tunedModels/{TOUR_ID}").json()
        evaluations = client.get(f"/v1beta/tunedModels/{VALIDATED_ID}/evaluations").json()
        checkpoints = client.get(f"/v1beta/tunedModels/{VALIDATED_ID}/checkpoints").json()
    assert model["state"] == "ACTIVE" and model["displayName"] == "Console tour"
    check_validation_pages(report, evaluations["evaluations"], checkpoints["checkpoints"])


def formatted(loss: float) -> str:
    """A loss as the console writes it (4 significant digits, no trailing zeros)."""
    return f"{float(f'{loss:.4g}')!r}".removesuffix(".0")


def check_validation_pages(report: dict, evaluations: list[dict], checkpoints: list[dict]):
    """The validated model's page, as its owner and as a reader, against the API's answers."""
    validated = report["validated"]
    # Two curves: the training loss per step, the validation loss per evaluation.
    assert validated["trainingCurves"] == 1 and validated["validationCurves"] == 1
    assert validated["points"] == VALIDATED_STEPS
    assert validated["validationPoints"] == len(evaluations) == 6
    assert validated["legend"] == ["training loss (per step)", "validation loss"]
    assert validated["legendVisible"] is True
    # One row per epoch, from the evaluation at the epoch's end (not a later one in the
    # middle of the next epoch, which counts the same completed epochs).
    epoch_ends = {e["epoch"]: e for e in reversed(evaluations) if e.get("epoch")}
    assert sorted(epoch_ends) == list(range(1, VALIDATED_EPOCHS + 1))
    assert validated["epochRows"] == [
        [
            str(epoch),
            str(e["step"]),
            formatted(e["validationLoss"]),
            f"{round(e['exactMatch'] * 100)}%",
        ]
        for epoch, e in sorted(epoch_ends.items())
    ]
    assert [row[1] for row in validated["epochRows"]] == ["4", "8", "12"]
    # One checkpoint per epoch; the last one served until "Serve this" picked the first.
    assert validated["checkpointEpochs"] == ["1", "2", "3"]
    assert validated["servingBefore"] == "3"
    assert validated["serveButtonsBefore"] == 2
    assert validated["servingAfter"] == "1"
    assert validated["servingAfterReload"] == "1"
    assert [c["epoch"] for c in checkpoints] == [1, 2, 3]
    assert [c["epoch"] for c in checkpoints if c.get("serving")] == [1]
    # A reader sees the same numbers, but no button to pick a checkpoint.
    reader = report["validatedAsReader"]
    assert reader["checkpointEpochs"] == ["1", "2", "3"]
    assert reader["serving"] == "1"
    assert reader["serveButtons"] == 0
    assert reader["epochRows"] == validated["epochRows"]
    assert reader["consoleErrors"] == []
