"""The worker in-process, on the tiny model: how jobs fail, retry and clean up."""

from __future__ import annotations

import math
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from conftest import TINY, tiny_env
from tunesmith.artifacts import Artifacts
from tunesmith.config import Settings
from tunesmith.domain.quotas import ProjectQuota
from tunesmith.domain.resources import (
    Hyperparameters,
    JobStatus,
    TunedModel,
    TunedModelState,
    TuningExample,
)
from tunesmith.jobs import worker as worker_module
from tunesmith.jobs.worker import MAX_ATTEMPTS, Worker
from tunesmith.store.db import make_engine, migrate
from tunesmith.store.repository import Repository
from tunesmith.training.base_models import Catalog

EXAMPLES = [TuningExample(str(n), str(n + 1)) for n in range(4)]


def locked() -> OperationalError:
    return OperationalError(
        "INSERT INTO snapshots", {}, sqlite3.OperationalError("database is locked")
    )


@pytest.fixture
def settings(tmp_path, tiny_model_dir, monkeypatch) -> Settings:
    for key, value in tiny_env(tiny_model_dir).items():
        monkeypatch.setenv(key, value)
    return Settings(data_dir=tmp_path / "data", base_model_dir=tmp_path / "base-models")


def make_repo(settings: Settings, cls: type[Repository] = Repository) -> Repository:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.sqlalchemy_url)
    migrate(engine)
    repo = cls(engine)
    repo.ensure_principal("owner", "owner@localhost")
    return repo


def queue_job(
    repo: Repository,
    model_id: str,
    *,
    epochs: int = 2,
    rate: float = 0.001,
    source: str | None = None,
    source_operation_id: str | None = None,
) -> str:
    now = datetime.now(UTC)
    model = TunedModel(
        id=model_id, base_model=TINY, display_name="", description="", temperature=1.0,
        top_p=0.9, top_k=10, state=TunedModelState.CREATING, create_time=now, update_time=now,
        hyperparameters=Hyperparameters(epochs, 2, rate), owner_id="owner",
        source_tuned_model=source,
    )  # fmt: skip
    operation_id = f"op-{model_id}"
    repo.create_tuned_model(
        model, operation_id, EXAMPLES, seed=3, total_steps=math.ceil(len(EXAMPLES) * epochs / 2),
        owner_email="owner@localhost", quota=ProjectQuota(),
        source_operation_id=source_operation_id,
    )  # fmt: skip
    return operation_id


def run_job(settings: Settings, repo: Repository) -> Worker:
    worker = Worker(settings, repo, Catalog(settings))
    assert worker.run_once()
    return worker


def status_of(repo: Repository, model_id: str):
    return repo.get_operation(model_id, f"op-{model_id}")


def test_a_busy_database_during_a_step_is_retried(settings):
    class BusyAtFirst(Repository):
        failures = 3

        def record_step(self, *args, **kwargs):
            if self.failures:
                self.failures -= 1
                raise locked()
            return super().record_step(*args, **kwargs)

    repo = make_repo(settings, BusyAtFirst)
    queue_job(repo, "busy")
    run_job(settings, repo)
    operation = status_of(repo, "busy")
    assert operation.status is JobStatus.SUCCEEDED, operation.error
    assert [s.step for s in repo.operation_snapshots(operation.id)] == [1, 2, 3, 4]


def test_a_job_whose_finish_always_fails_reaches_the_attempt_limit(settings):
    """An exception in the finishing code used to hand the attempt back every time."""

    class BrokenFinish(Repository):
        def finish_job(self, operation_id, worker_id, status, error, *args):
            if status is JobStatus.SUCCEEDED:
                raise RuntimeError("a bug in the finishing code")
            return super().finish_job(operation_id, worker_id, status, error, *args)

    repo = make_repo(settings, BrokenFinish)
    queue_job(repo, "unlucky", epochs=1)
    worker = Worker(settings, repo, Catalog(settings))
    for _ in range(MAX_ATTEMPTS + 2):
        if not worker.run_once():
            break
    operation = status_of(repo, "unlucky")
    assert operation.status is JobStatus.FAILED
    assert f"died {MAX_ATTEMPTS} times" in operation.error.message


def test_a_diverging_loss_fails_the_job_naming_the_step(settings, monkeypatch):
    real_train = worker_module.train_lora

    def diverging(base, examples, hp, seed, out, checkpoint, on_step, **kwargs):
        def nan_from_step_3(result):
            if result.step >= 3:
                result = type(result)(result.step, result.epoch, float("nan"), result.tokens)
            on_step(result)

        return real_train(base, examples, hp, seed, out, checkpoint, nan_from_step_3, **kwargs)

    monkeypatch.setattr(worker_module, "train_lora", diverging)
    repo = make_repo(settings)
    queue_job(repo, "diverges", epochs=3, rate=1.0)
    run_job(settings, repo)
    operation = status_of(repo, "diverges")
    assert operation.status is JobStatus.FAILED
    assert "nan at step 3" in operation.error.message
    assert "learningRate" in operation.error.message
    assert [s.step for s in repo.operation_snapshots(operation.id)] == [1, 2]
    assert repo.get_tuned_model("diverges").state is TunedModelState.FAILED
    assert not Artifacts.of(settings).adapter("diverges", operation.id).exists()


def test_the_source_adapter_is_bound_when_the_job_is_accepted(settings):
    repo = make_repo(settings)
    parent_op = queue_job(repo, "parent", epochs=1)
    run_job(settings, repo)
    queue_job(repo, "child", epochs=1, source="tunedModels/parent", source_operation_id=parent_op)
    # The parent is deleted, and its id reused, before the child's job starts.
    Artifacts.of(settings).remove_model("parent", repo.delete_tuned_model("parent"))
    queue_job(repo, "parent", epochs=1)
    run_job(settings, repo)  # the oldest queued job: the child's
    child = status_of(repo, "child")
    assert child.status is JobStatus.FAILED
    assert "tunedModels/parent was deleted before this job started" in child.error.message


def test_a_model_deleted_while_its_adapter_saves_leaves_nothing(settings, monkeypatch):
    real_train = worker_module.train_lora
    repo = make_repo(settings)
    artifacts = Artifacts.of(settings)

    def deleted_while_saving(base, examples, hp, seed, out: Path, checkpoint, on_step, **kwargs):
        real_train(base, examples, hp, seed, out, checkpoint, on_step, **kwargs)
        artifacts.remove_model("doomed", repo.delete_tuned_model("doomed"))

    monkeypatch.setattr(worker_module, "train_lora", deleted_while_saving)
    queue_job(repo, "doomed", epochs=1)
    run_job(settings, repo)
    assert not artifacts.model_dir("doomed").exists()
    assert not artifacts.checkpoint("op-doomed").exists()
