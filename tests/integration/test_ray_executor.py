"""Training on Ray: `tunesmith serve` with TUNESMITH_EXECUTOR=ray and a local head on loopback."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import LiveServer, tiny_env, wait_for_operation
from ray_head import RayHead

EXAMPLES = [{"textInput": f"in {n}", "output": f"out {n}"} for n in range(8)]
STEPS = 8 * 30  # batch 1, 30 epochs


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    head = RayHead(cpus=2).start()
    yield head
    head.stop()


def lease_holder(data_dir: Path, operation_id: str) -> tuple[str | None, int]:
    """The worker holding a job's lease, and how many times the job was claimed."""
    with sqlite3.connect(data_dir / "tunesmith.db") as db:
        return db.execute(
            "SELECT worker_id, attempts FROM operations WHERE id = ?", (operation_id,)
        ).fetchone()


def command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def children(pid: int) -> list[int]:
    return [
        int(stat.parent.name)
        for stat in Path("/proc").glob("[0-9]*/stat")
        if stat.exists() and int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid
    ]


def test_a_killed_ray_worker_is_restarted_and_its_job_resumes(ray_head, tiny_model_dir, tmp_path):
    env = {
        **tiny_env(tiny_model_dir),
        **ray_head.client_env(),
        "TUNESMITH_EXECUTOR": "ray",
        "TUNESMITH_RAY_NAMESPACE": f"test-{tmp_path.name}",
        "TUNESMITH_RAY_NUM_CPUS": "1",
        "TUNESMITH_JOB_LEASE_SECONDS": "2",
        "TUNESMITH_CHECKPOINT_INTERVAL_SECONDS": "0.2",
    }
    server = LiveServer(tmp_path / "data", env).start()
    try:
        assert not any("tunesmith worker" in command_line(c) for c in children(server.process.pid))
        with server.client() as client:
            body = {
                "baseModel": "models/tiny-random",
                "tuningTask": {
                    "hyperparameters": {"epochCount": 30, "batchSize": 1},
                    "trainingData": {"examples": {"examples": EXAMPLES}},
                },
            }
            created = client.post("/v1beta/tunedModels", json=body)
            assert created.status_code == 200, created.text
            name = created.json()["name"]
            operation_id = name.rsplit("/", 1)[1]
            wait_for_steps(client, name, 20)

            worker_id, attempts = lease_holder(server.data_dir, operation_id)
            pid = int(worker_id.split(":")[1])
            assert "ray::TrainingWorker" in command_line(pid)  # a Ray actor, not a subprocess
            os.kill(pid, signal.SIGKILL)

            operation = wait_for_operation(client, name, timeout=300)
            assert "error" not in operation, operation
            assert operation["response"]["state"] == "ACTIVE"
            steps = [s["step"] for s in operation["metadata"]["snapshots"]]
            assert steps == list(range(1, STEPS + 1))
            # Ray restarted the actor, whose new worker claimed the job again and resumed it.
            assert lease_holder(server.data_dir, operation_id)[1] == attempts + 1
            assert f"resuming {operation_id} from its checkpoint of step" in ray_head.worker_logs()

        listed = server.admin("ray-workers")
        assert listed.startswith("tunesmith-worker-0\t") and "(pid " in listed, listed
        assert server.admin("ray-workers", "--stop") == "stopped tunesmith-worker-0"
        assert server.admin("ray-workers") == ""
    finally:
        server.stop()


def wait_for_steps(client, name: str, at_least: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = client.get(f"/v1/{name}").json()["metadata"].get("completedSteps", 0)
        if done >= at_least:
            return
        time.sleep(0.1)
    raise TimeoutError(f"{name} did not reach step {at_least}")
