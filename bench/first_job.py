"""The tutorial's job through a fresh `tunesmith serve`: the first job and a second one.

    .venv/bin/python bench/first_job.py [--base-model-dir DIR] [--runs N]

Each run starts a server on a new data folder and sends the requests in bench/run.py's
order (21 GETs once the server answers, then the first job, then a second). It prints one
JSON line a run, in seconds: since the server's launch, when the server answered, when each
job was posted, when the worker said it was ready, claimed and ended each job (its log's time
stamps); and each job's POST to ACTIVE. Then the medians.

The server is the `tunesmith` on PYTHONPATH (another tree's src measures that tree).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from conftest import LiveServer  # noqa: E402
from run import job_body, timed_gets  # noqa: E402

EVENTS = {"waiting for jobs": "ready", "claimed": "claimed", "ended": "ended"}


def rounded(value):
    if isinstance(value, float):
        return round(value, 2)
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return {k: rounded(v) for k, v in value.items()} if isinstance(value, dict) else value


def one_run(cache: Path) -> dict:
    os.environ["TUNESMITH_LOG_FORMAT"] = "json"
    with tempfile.TemporaryDirectory() as tmp:
        server = LiveServer(Path(tmp) / "data", {"TUNESMITH_BASE_MODEL_DIR": str(cache)})
        server.data_dir.mkdir(parents=True)
        launch = time.time()
        server.start(timeout=600)
        out: dict = {"answered": time.time() - launch}
        try:
            with server.client() as client:
                timed_gets(client, 21)
                for run in ("first", "second"):
                    start = time.time()
                    out[f"{run}_posted"] = start - launch
                    operation = client.post("/v1beta/tunedModels", json=job_body()).json()
                    while not (done := client.get(f"/v1/{operation['name']}").json()).get("done"):
                        time.sleep(0.05)
                    out[run] = time.time() - start
                    assert done["response"]["state"] == "ACTIVE", done
        finally:
            server.stop()
        for line in server.log().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            at = datetime.fromisoformat(record["time"]).timestamp() - launch
            for text, key in EVENTS.items():
                if text in record["message"]:
                    out.setdefault(key, []).append(at)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-model-dir", type=Path, default=REPO / ".tunesmith-test-cache")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = []
    for _ in range(args.runs):
        runs.append(one_run(args.base_model_dir.resolve()))
        print(json.dumps(rounded(runs[-1])), flush=True)
    keys = ("answered", "ready", "first_posted", "first", "second")
    medians = {k: statistics.median(r[k][0] if k == "ready" else r[k] for r in runs) for k in keys}
    print("medians", json.dumps(rounded(medians)))


if __name__ == "__main__":
    main()
