"""Adapters and checkpoints in object storage: moto's S3 server on loopback, never AWS."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_worker import make_repo, queue_job, status_of

from conftest import LiveServer, tiny_env, wait_for_operation
from tunesmith.artifacts import COMPLETE, Artifacts
from tunesmith.config import Settings
from tunesmith.domain.resources import JobStatus
from tunesmith.jobs import worker as worker_module
from tunesmith.jobs.worker import Worker
from tunesmith.training.base_models import Catalog

# Dummy credentials, so botocore never looks for real ones (or asks an instance for them).
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    saved = {key: os.environ.get(key) for key in AWS_ENV}
    os.environ.update(AWS_ENV)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def bucket(s3_endpoint, request) -> tuple[str, dict]:
    """A new bucket per test, and the artifact settings that point at it."""
    import fsspec

    options = {"endpoint_url": s3_endpoint}
    name = request.node.name.replace("_", "-")[:50].strip("-")
    fsspec.filesystem("s3", **options).mkdir(name)
    return f"s3://{name}/artifacts", options


def s3_settings(tmp_path: Path, data: str, bucket, **extra) -> Settings:
    url, options = bucket
    return Settings(
        data_dir=tmp_path / data,
        base_model_dir=tmp_path / "base-models",
        database_url=f"sqlite:///{tmp_path / 'shared.db'}",
        artifact_url=url,
        artifact_options=options,
        **extra,
    )


def remote_files(artifacts: Artifacts) -> list[str]:
    remote = artifacts.remote
    remote.fs.invalidate_cache()
    return sorted(p.removeprefix(remote.root + "/") for p in remote.fs.find(remote.root))


@pytest.fixture
def tiny(tiny_model_dir, monkeypatch) -> None:
    for key, value in tiny_env(tiny_model_dir).items():
        monkeypatch.setenv(key, value)


def test_a_job_uploads_its_adapter_and_a_server_downloads_it(tiny, tmp_path, bucket):
    settings = s3_settings(tmp_path, "worker", bucket)
    repo = make_repo(settings)
    operation_id = queue_job(repo, "shared")
    Worker(settings, repo, Catalog(settings)).run_once()
    assert status_of(repo, "shared").status is JobStatus.SUCCEEDED

    worker_side = Artifacts.of(settings)
    stored = remote_files(worker_side)
    assert f"adapters/shared/{operation_id}/{COMPLETE}" in stored
    assert f"adapters/shared/{operation_id}/adapter_model.safetensors" in stored
    assert not any(p.startswith("checkpoints/") for p in stored)  # removed when it ended
    assert not worker_side.model_dir("shared").exists()  # nothing left on the worker

    server_side = Artifacts.of(s3_settings(tmp_path, "server", bucket))
    local = server_side.fetch_adapter("shared", operation_id)
    assert local == server_side.adapter("shared", operation_id)
    key = worker_side.remote.adapter_key("shared", operation_id)
    manifest = json.loads(worker_side.remote.fs.cat_file(f"{key}/{COMPLETE}"))
    assert {p.name: p.stat().st_size for p in local.iterdir()} == manifest["files"]

    server_side.remove_model("shared", [operation_id])
    assert remote_files(worker_side) == []
    assert not local.exists()


def test_an_adapter_without_its_manifest_is_not_served(tmp_path, bucket):
    writer = Artifacts.of(s3_settings(tmp_path, "writer", bucket))
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    writer.store(folder, "half", "op-half")
    writer.remote.remove_file(f"{writer.remote.adapter_key('half', 'op-half')}/{COMPLETE}")

    reader = Artifacts.of(s3_settings(tmp_path, "reader", bucket))
    assert reader.fetch_adapter("half", "op-half") is None
    assert not reader.model_dir("half").exists()


def test_a_worker_resumes_from_a_checkpoint_another_worker_uploaded(
    tiny, tmp_path, bucket, monkeypatch
):
    """Worker A, a process with its own data dir, is killed mid-job; worker B, with another
    data dir, finds A's checkpoint in the bucket and finishes the job from there."""
    url, options = bucket
    b_settings = s3_settings(tmp_path, "b", bucket, job_lease_seconds=1.0)
    repo = make_repo(b_settings)
    operation_id = queue_job(repo, "resumed", epochs=40)
    steps = 2 * 40  # queue_job: 4 examples, batch 2

    a_env = {
        **os.environ,
        "TUNESMITH_DATA_DIR": str(tmp_path / "a"),
        "TUNESMITH_BASE_MODEL_DIR": str(b_settings.base_model_dir),
        "TUNESMITH_DATABASE_URL": b_settings.database_url,
        "TUNESMITH_ARTIFACT_URL": url,
        "AWS_ENDPOINT_URL": options["endpoint_url"],  # botocore's own setting works as well
        "TUNESMITH_CHECKPOINT_INTERVAL_SECONDS": "0",
        "TUNESMITH_JOB_LEASE_SECONDS": "1",
    }
    log = open(tmp_path / "worker-a.log", "wb")  # noqa: SIM115
    worker_a = subprocess.Popen(
        [sys.executable, "-m", "tunesmith", "worker"], env=a_env, stdout=log, stderr=log
    )
    checkpoint = f"checkpoints/{operation_id}.pt"
    artifacts = Artifacts.of(b_settings)
    try:
        deadline = time.monotonic() + 120
        while not (
            len(repo.operation_snapshots(operation_id)) >= 10
            and checkpoint in remote_files(artifacts)
        ):
            assert worker_a.poll() is None, (tmp_path / "worker-a.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "worker-a.log").read_text()
            time.sleep(0.2)
    finally:
        os.kill(worker_a.pid, signal.SIGKILL)
        worker_a.wait()
    assert (tmp_path / "a" / checkpoint).exists()  # A's local copy, which B cannot see

    resumed_at: list[int] = []
    real_train = worker_module.train_lora

    def recording(*args, on_resume, **kwargs):
        def noted(step: int, tokens: int) -> None:
            resumed_at.append(step)
            on_resume(step, tokens)

        return real_train(*args, on_resume=noted, **kwargs)

    monkeypatch.setattr(worker_module, "train_lora", recording)
    time.sleep(b_settings.job_lease_seconds)  # A's lease runs out
    assert Worker(b_settings, repo, Catalog(b_settings)).run_once()
    operation = status_of(repo, "resumed")
    assert operation.status is JobStatus.SUCCEEDED, operation.error
    assert len(resumed_at) == 1 and resumed_at[0] > 0  # from A's checkpoint, not from scratch
    assert [s.step for s in repo.operation_snapshots(operation_id)] == list(range(1, steps + 1))
    assert checkpoint not in remote_files(artifacts)
    assert f"adapters/resumed/{operation_id}/{COMPLETE}" in remote_files(artifacts)


def test_the_api_serves_and_deletes_a_model_stored_in_s3(tiny_model_dir, tmp_path, bucket):
    url, options = bucket
    env = {
        **tiny_env(tiny_model_dir),
        **AWS_ENV,
        "TUNESMITH_ARTIFACT_URL": url,
        "TUNESMITH_ARTIFACT_OPTIONS": json.dumps(options),
    }
    server = LiveServer(tmp_path / "data", env).start()
    artifacts = Artifacts(tmp_path / "data", url, options)
    try:
        with server.client() as client:
            body = {
                "baseModel": "models/tiny-random",
                "tuningTask": {
                    "hyperparameters": {"epochCount": 1, "batchSize": 2},
                    "trainingData": {
                        "examples": {"examples": [{"textInput": "1", "output": "2"}] * 4}
                    },
                },
            }
            created = client.post("/v1beta/tunedModels", json=body)
            assert created.status_code == 200, created.text
            operation = wait_for_operation(client, created.json()["name"])
            assert operation["response"]["state"] == "ACTIVE", operation
            model = operation["response"]["name"]
            model_id, operation_id = operation["name"].split("/")[1::2]
            assert not artifacts.adapter(model_id, operation_id).exists()  # only in the bucket

            request = {
                "contents": [{"parts": [{"text": "1"}]}],
                "generationConfig": {"maxOutputTokens": 4},
            }
            reply = client.post(f"/v1beta/{model}:generateContent", json=request)
            assert reply.status_code == 200, reply.text
            assert artifacts.adapter(model_id, operation_id).exists()  # the server's download

            assert client.delete(f"/v1beta/{model}").status_code == 200
            assert remote_files(artifacts) == []
            assert not artifacts.model_dir(model_id).exists()
    finally:
        server.stop()


def test_a_model_deleted_while_its_adapter_uploads_leaves_nothing(
    tiny, tmp_path, bucket, monkeypatch
):
    settings = s3_settings(tmp_path, "worker", bucket)
    repo = make_repo(settings)
    artifacts = Artifacts.of(settings)
    real_publish = Artifacts.publish

    def deleted_meanwhile(self, tuned_model_id: str, operation_id: str) -> bool:
        artifacts.remove_model(tuned_model_id, repo.delete_tuned_model(tuned_model_id))
        return real_publish(self, tuned_model_id, operation_id)

    monkeypatch.setattr(Artifacts, "publish", deleted_meanwhile)
    queue_job(repo, "doomed", epochs=1)
    Worker(settings, repo, Catalog(settings)).run_once()
    assert remote_files(artifacts) == []
    assert not artifacts.model_dir("doomed").exists()
