"""What a tight polling client costs the training it polls.

    .venv/bin/python bench/polling.py [--rounds 2]

Starts `tunesmith serve` with the default settings (default base model, default quotas)
and runs the tutorial's job (15 examples, batch 4, 5 epochs, 19 steps) again and again,
alternating two ways of following it:

- tight: google-generativeai 0.8.6's own `Operation.wait_bar()`, which calls operations.get
  again the moment an answer arrives, with no sleep;
- polite: a GET of the operation every 5 s.

The job's wall time is the server's own record (tuningTask.startTime to completeTime), so
the polling interval does not round it. A warm-up job runs first. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import google.generativeai as genai
import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from conftest import TUTORIAL_EXAMPLES, LiveServer  # noqa: E402

TRAINING_DATA = [{"text_input": i, "output": o} for i, o in TUTORIAL_EXAMPLES]


def seconds(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def training_time(client: httpx.Client, model: str) -> float:
    task = client.get(f"/v1beta/{model}").json()["tuningTask"]
    return seconds(task["startTime"], task["completeTime"])


def operation_gets(client: httpx.Client) -> int:
    route = 'route="/v1beta/tunedModels/{model_id}/operations/{operation_id}"'
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in client.get("/metrics").text.splitlines()
            if line.startswith("tunesmith_http_requests_total") and route in line
        )
    )


def create(model_id: str) -> genai.types.Operation:
    return genai.create_tuned_model(
        "models/gemini-1.0-pro-001",
        training_data=TRAINING_DATA,
        id=model_id,
        epoch_count=5,
        batch_size=4,
        learning_rate=0.001,
    )


def follow_tightly(model_id: str) -> None:
    for _ in create(model_id).wait_bar(disable=True):
        pass


def follow_politely(client: httpx.Client, model_id: str) -> None:
    operation = create(model_id)
    while not client.get(f"/v1beta/{operation.name}").json().get("done"):
        time.sleep(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="bench-polling-")) / "data"
    server = LiveServer(data, {}).start(timeout=900)
    genai.configure(
        api_key=server.api_key, transport="rest", client_options={"api_endpoint": server.url}
    )
    results: dict[str, list[float]] = {"tight": [], "polite": []}
    gets: dict[str, list[int]] = {"tight": [], "polite": []}
    try:
        with server.client() as client:
            follow_politely(client, "warm-up")
            for n in range(args.rounds):
                for way in ("tight", "polite"):
                    model_id = f"{way}-{n}"
                    before = operation_gets(client)
                    if way == "tight":
                        follow_tightly(model_id)
                    else:
                        follow_politely(client, model_id)
                    gets[way].append(operation_gets(client) - before)
                    results[way].append(training_time(client, f"tunedModels/{model_id}"))
                    print(f"{way} round {n}: {results[way][-1]:.2f} s, {gets[way][-1]} GETs")
    finally:
        server.stop()
    tight, polite = statistics.median(results["tight"]), statistics.median(results["polite"])
    print("\n| follower | job wall time, median (s) | runs | operations.get calls per job |")
    print("|---|---|---|---|")
    for way, median in (("tight (wait_bar)", tight), ("polite (every 5 s)", polite)):
        key = way.split()[0]
        runs = ", ".join(f"{t:.2f}" for t in results[key])
        print(f"| {way} | {median:.2f} | {runs} | {statistics.median(gets[key]):.0f} |")
    print(f"\ntight / polite: {tight / polite:.3f}")


if __name__ == "__main__":
    main()
