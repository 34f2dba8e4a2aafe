"""Deleting a tuned model removes every file it left: adapters and checkpoints (issue 14)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from tunesmith.api.service import TuningService
from tunesmith.artifacts import Artifacts
from tunesmith.config import Settings
from tunesmith.domain.access import Principal
from tunesmith.domain.quotas import ProjectQuota
from tunesmith.domain.resources import (
    ClaimedJob,
    Hyperparameters,
    TunedModel,
    TunedModelState,
    TuningExample,
)
from tunesmith.jobs.worker import Worker
from tunesmith.store.db import make_engine, migrate
from tunesmith.store.repository import Repository

OWNER = Principal("owner", "owner@localhost")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


@pytest.fixture
def repo(settings: Settings) -> Repository:
    settings.data_dir.mkdir(parents=True)
    engine = make_engine(settings.sqlalchemy_url)
    migrate(engine)
    repo = Repository(engine)
    repo.ensure_principal(OWNER.id, OWNER.email)
    return repo


def add_model(repo: Repository, model_id: str, operation_id: str) -> None:
    now = datetime.now(UTC)
    model = TunedModel(
        id=model_id, base_model="models/x", display_name="", description="", temperature=1.0,
        top_p=0.9, top_k=10, state=TunedModelState.CREATING, create_time=now, update_time=now,
        hyperparameters=Hyperparameters(2, 1, 0.001), owner_id=OWNER.id,
    )  # fmt: skip
    repo.create_tuned_model(
        model, operation_id, [TuningExample("1", "2")], seed=7, total_steps=1,
        owner_email=OWNER.email, quota=ProjectQuota(),
    )  # fmt: skip


def job_of(model_id: str, operation_id: str) -> ClaimedJob:
    return ClaimedJob(
        operation_id, model_id, "models/x", None, None, [], Hyperparameters(1, 1, 0.001), 1, 7, 1
    )


def job_files(settings: Settings, model_id: str, operation_id: str) -> list[Path]:
    """What a job leaves: its adapter, a half-saved adapter, a checkpoint and its staging."""
    artifacts = Artifacts.of(settings)
    checkpoint = artifacts.checkpoint(operation_id)
    files = [
        artifacts.adapter(model_id, operation_id) / "adapter_model.safetensors",
        artifacts.staging(model_id, operation_id) / "adapter_model.safetensors",
        checkpoint,
        checkpoint.with_suffix(".tmp"),
    ]
    for path in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"state")
    return files


def test_delete_removes_adapters_and_checkpoints(settings, repo):
    add_model(repo, "m1", "op1")
    add_model(repo, "other", "op2")
    mine, theirs = job_files(settings, "m1", "op1"), job_files(settings, "other", "op2")

    TuningService(settings, repo, catalog=None, engine=None).delete(OWNER, "m1")  # type: ignore[arg-type]

    assert [p for p in mine if p.exists()] == []
    assert not Artifacts.of(settings).model_dir("m1").exists()
    assert all(p.exists() for p in theirs)


def test_a_job_that_lost_its_lease_to_a_delete_removes_what_it_wrote_after(settings, repo):
    add_model(repo, "m1", "op1")
    add_model(repo, "m2", "op2")
    repo.delete_tuned_model("m1")
    late = job_files(settings, "m1", "op1")  # written by the job after the delete
    taken_over = job_files(settings, "m2", "op2")  # another worker now runs this one

    worker = Worker(settings, repo, catalog=None)  # type: ignore[arg-type]
    worker._clean_if_deleted(job_of("m1", "op1"))
    worker._clean_if_deleted(job_of("m2", "op2"))

    assert [p for p in late if p.exists()] == []
    assert not Artifacts.of(settings).model_dir("m1").exists()
    assert all(p.exists() for p in taken_over)
