"""Scale-out on loopback: PostgreSQL, a local Ray head, two API replicas and the Ray executor.

Both replicas serve one database and one (shared) artifact directory; training runs in
Ray worker actors, never in the replicas."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest

from conftest import LiveServer, free_port, tiny_env, wait_for_operation
from ray_head import RayHead
from tutorial_flow import access_token, run_tutorial_curl_flow

EXAMPLES = [{"textInput": f"in {n}", "output": f"out {n}"} for n in range(4)]
EPOCHS = 40  # batch 1: 160 steps, long enough to be running while the burst of creates lands
QUOTA = 4


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    head = RayHead(cpus=2).start()
    yield head
    head.stop()


@pytest.fixture(scope="module")
def replicas(ray_head, postgres, tiny_model_dir, tmp_path_factory) -> Iterator[list[LiveServer]]:
    database = postgres.new_database()
    env = {
        **tiny_env(tiny_model_dir),
        **ray_head.client_env(),
        "TUNESMITH_DATABASE_URL": database,
        "TUNESMITH_EXECUTOR": "ray",
        "TUNESMITH_WORKERS": "2",
        "TUNESMITH_RAY_NUM_CPUS": "1",
        "TUNESMITH_RAY_NAMESPACE": f"scale-out-{free_port()}",
        "TUNESMITH_JOB_LEASE_SECONDS": "3",
        "TUNESMITH_CHECKPOINT_INTERVAL_SECONDS": "0.2",
        "TUNESMITH_QUOTA_CONCURRENT_JOBS_PER_PROJECT": str(QUOTA),
    }
    # One data dir: the replicas share its secrets and, as a shared directory, its artifacts.
    data_dir = tmp_path_factory.mktemp("scale-out") / "data"
    first = LiveServer(data_dir, env).start()
    second = LiveServer(data_dir, env).start()
    yield [first, second]
    first.admin("ray-workers", "--stop")
    second.stop()
    first.stop()


def create(server: LiveServer, n: int) -> httpx.Response:
    body = {
        "displayName": f"burst {n}",
        "baseModel": "models/tiny-random",
        "tuningTask": {
            "hyperparameters": {"epochCount": EPOCHS, "batchSize": 1},
            "trainingData": {"examples": {"examples": EXAMPLES}},
        },
    }
    return httpx.post(
        f"{server.url}/v1beta/tunedModels", json=body, headers=server.headers(), timeout=60
    )


def lease_holder(database_url: str, operation_id: str) -> str | None:
    with psycopg.connect(database_url) as db:
        row = db.execute(
            "SELECT worker_id FROM operations WHERE id = %s", (operation_id,)
        ).fetchone()
    return row[0] if row else None


def test_replicas_on_postgresql_with_training_on_ray(replicas, ray_head):
    first, second = replicas
    # 20 creates at once, spread over both replicas, under a 4-job project quota.
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(lambda n: create(replicas[n % 2], n), range(20)))
    accepted = [a.json() for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code != 200]
    assert len(accepted) == QUOTA, [a.text for a in refused[:3]]
    assert all(a.status_code == 429 for a in refused)
    assert {a.json()["error"]["status"] for a in refused} == {"RESOURCE_EXHAUSTED"}

    # Kill the Ray worker process that holds the first job's lease, mid-training.
    victim = accepted[0]["name"]
    with second.client() as client:
        deadline = time.monotonic() + 240
        while client.get(f"/v1/{victim}").json()["metadata"].get("completedSteps", 0) < 10:
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.1)
        worker_id = lease_holder(first.env["TUNESMITH_DATABASE_URL"], victim.rsplit("/", 1)[1])
        assert worker_id is not None
        os.kill(int(worker_id.split(":")[1]), signal.SIGKILL)

        for operation in accepted:
            done = wait_for_operation(client, operation["name"], timeout=600)
            assert "error" not in done, done
            assert done["response"]["state"] == "ACTIVE"
            steps = [s["step"] for s in done["metadata"]["snapshots"]]
            assert steps == list(range(1, 4 * EPOCHS + 1))
    assert "from its checkpoint of step" in ray_head.worker_logs()

    # The tutorial's curl flow through the second replica.
    run_tutorial_curl_flow(second, access_token(second))
