"""A crash of any process loses no accepted work: kill -9 the worker, then the server."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from conftest import LiveServer, tiny_env, wait_for_operation

EXAMPLES = [{"textInput": f"in {n}", "output": f"out {n}"} for n in range(8)]
STEPS = 8 * 40  # batch 1, 40 epochs


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def wait_for_steps(client, name: str, at_least: int) -> int:
    for _ in range(600):
        done = client.get(f"/v1/{name}").json()["metadata"].get("completedSteps", 0)
        if done >= at_least:
            return done
        time.sleep(0.1)
    raise TimeoutError


def test_job_survives_killed_worker_and_killed_server(tiny_model_dir, tmp_path):
    env = {
        **tiny_env(tiny_model_dir),
        "TUNESMITH_JOB_LEASE_SECONDS": "2",
        "TUNESMITH_CHECKPOINT_INTERVAL_SECONDS": "0.2",
    }
    first = LiveServer(tmp_path / "data", env).start()
    with first.client() as client:
        body = {
            "baseModel": "models/tiny-random",
            "tuningTask": {
                "hyperparameters": {"epochCount": 40, "batchSize": 1},
                "trainingData": {"examples": {"examples": EXAMPLES}},
            },
        }
        name = client.post("/v1beta/tunedModels", json=body).json()["name"]
        wait_for_steps(client, name, 30)
        (worker,) = children(first.process.pid)
        os.kill(worker, signal.SIGKILL)
        # The pool restarts the worker, which resumes from the checkpoint once the lease ends.
        before = client.get(f"/v1/{name}").json()["metadata"]["completedSteps"]
        wait_for_steps(client, name, before + 10)

    os.kill(first.process.pid, signal.SIGKILL)
    time.sleep(3)  # the orphaned worker notices and hands its job back
    second = LiveServer(first.data_dir, env, port=first.port).start()
    try:
        with second.client() as client:
            operation = wait_for_operation(client, name)
            assert "error" not in operation, operation
            assert operation["response"]["state"] == "ACTIVE"
            steps = [s["step"] for s in operation["metadata"]["snapshots"]]
            assert steps == list(range(1, STEPS + 1))
            model = client.get(f"/v1beta/{operation['metadata']['tunedModel']}").json()
            assert len(model["tuningTask"]["snapshots"]) == STEPS
            reply = client.post(
                f"/v1beta/{model['name']}:generateContent",
                json={"contents": [{"parts": [{"text": "in 3"}]}]},
            )
            assert reply.status_code == 200, reply.text
    finally:
        second.stop()
