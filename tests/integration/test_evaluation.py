"""Validation, evaluation records and epoch checkpoints, with the worker in-process on the
tiny model."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from safetensors.torch import load_file
from sqlalchemy import update

from conftest import TINY, tiny_env
from tunesmith.artifacts import Artifacts
from tunesmith.config import Settings
from tunesmith.domain.quotas import ProjectQuota
from tunesmith.domain.resources import (
    CheckpointChoice,
    Evaluation,
    EvaluationPlan,
    Hyperparameters,
    JobStatus,
    TunedModel,
    TunedModelState,
    TuningExample,
)
from tunesmith.jobs import worker as worker_module
from tunesmith.jobs.worker import Worker
from tunesmith.store.db import make_engine, migrate
from tunesmith.store.repository import Repository
from tunesmith.store.tables import operations
from tunesmith.training import evaluation as evaluation_module
from tunesmith.training.base_models import Catalog

EXAMPLES = [TuningExample(str(n), str(n + 1)) for n in range(4)]
VALIDATION = [TuningExample("7", "8"), TuningExample("9", "10")]
WEIGHTS = "adapter_model.safetensors"


@pytest.fixture
def settings(tmp_path, tiny_model_dir, monkeypatch) -> Settings:
    for key, value in tiny_env(tiny_model_dir).items():
        monkeypatch.setenv(key, value)
    return Settings(data_dir=tmp_path / "data", base_model_dir=tmp_path / "base-models")


@pytest.fixture
def repo(settings) -> Repository:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.sqlalchemy_url)
    migrate(engine)
    repo = Repository(engine)
    repo.ensure_principal("owner", "owner@localhost")
    return repo


def queue(repo: Repository, model_id: str, *, epochs: int = 3, seed: int = 3, plan=None) -> str:
    now = datetime.now(UTC)
    model = TunedModel(
        id=model_id, base_model=TINY, display_name="", description="", temperature=1.0,
        top_p=0.9, top_k=10, state=TunedModelState.CREATING, create_time=now, update_time=now,
        hyperparameters=Hyperparameters(epochs, 2, 0.01), owner_id="owner",
    )  # fmt: skip
    operation_id = f"op-{model_id}"
    repo.create_tuned_model(
        model, operation_id, EXAMPLES, seed=seed, total_steps=math.ceil(len(EXAMPLES) * epochs / 2),
        owner_email="owner@localhost", quota=ProjectQuota(), plan=plan,
    )  # fmt: skip
    return operation_id


def run(settings: Settings, repo: Repository, model_id: str):
    assert Worker(settings, repo, Catalog(settings)).run_once()
    operation = repo.get_operation(model_id, f"op-{model_id}")
    assert operation.status is JobStatus.SUCCEEDED, operation.error
    return operation


def weights(folder) -> dict:
    return load_file(folder / WEIGHTS)


def test_a_job_with_validation_records_evaluations_and_keeps_every_epoch(settings, repo):
    plan = EvaluationPlan(VALIDATION, interval_steps=1, choice=CheckpointChoice.LAST)
    queue(repo, "evaluated", plan=plan)
    operation = run(settings, repo, "evaluated")

    evaluations = repo.operation_evaluations(operation.id)
    assert [e.step for e in evaluations] == [1, 2, 3, 4, 5, 6]  # every step, as asked
    assert [e.epoch for e in evaluations] == [0, 1, 1, 2, 2, 3]
    for e in evaluations:
        assert math.isfinite(e.validation_loss) and e.validation_loss > 0
        assert 0.0 <= e.exact_match <= 1.0 and e.examples == 2
        assert e.training_loss is not None and math.isfinite(e.training_loss)
    # The epoch's training loss is the mean of its steps' losses.
    losses = {s.step: s.mean_loss for s in repo.operation_snapshots(operation.id)}
    assert evaluations[3].training_loss == pytest.approx((losses[3] + losses[4]) / 2)

    kept = repo.epoch_checkpoints(operation.id)
    assert [(c.epoch, c.step) for c in kept] == [(1, 2), (2, 4), (3, 6)]
    artifacts = Artifacts.of(settings)
    assert operation.served_epoch is None  # LAST: the final adapter, the last epoch's weights
    final = weights(artifacts.adapter("evaluated", operation.id))
    last = weights(artifacts.epoch_adapter("evaluated", operation.id, 3))
    first = weights(artifacts.epoch_adapter("evaluated", operation.id, 1))
    assert all((final[k] == last[k]).all() for k in final)
    assert any((final[k] != first[k]).any() for k in final)


def test_without_validation_epochs_are_kept_but_not_evaluated(settings, repo):
    queue(repo, "plain", epochs=2)
    operation = run(settings, repo, "plain")
    assert repo.operation_evaluations(operation.id) == []
    assert [c.epoch for c in repo.epoch_checkpoints(operation.id)] == [1, 2]


def test_kept_epochs_are_bounded_by_the_setting(settings, repo):
    settings.max_epoch_checkpoints = 2
    queue(repo, "bounded", epochs=4)
    operation = run(settings, repo, "bounded")
    assert [c.epoch for c in repo.epoch_checkpoints(operation.id)] == [3, 4]
    artifacts = Artifacts.of(settings)
    on_disk = sorted(p.name for p in artifacts.epoch_adapters("bounded", operation.id).iterdir())
    assert on_disk == ["3", "4"]


def test_best_validation_loss_is_served_and_never_dropped(settings, repo):
    settings.max_epoch_checkpoints = 1
    plan = EvaluationPlan(VALIDATION, choice=CheckpointChoice.BEST_VALIDATION_LOSS)
    queue(repo, "best", epochs=4, plan=plan)
    operation = run(settings, repo, "best")
    evaluations = repo.operation_evaluations(operation.id)
    by_epoch = {e.epoch: e.validation_loss for e in evaluations}
    best = min(by_epoch, key=lambda epoch: (by_epoch[epoch], epoch))
    assert operation.served_epoch == best
    kept = [c.epoch for c in repo.epoch_checkpoints(operation.id)]
    assert best in kept and 4 in kept and len(kept) <= 2


def test_the_same_seed_and_data_give_the_same_adapter(settings, repo):
    """Evaluation draws no random numbers: with it or without, the weights are the same."""
    queue(repo, "first", seed=11, epochs=2)
    queue(repo, "second", seed=11, epochs=2, plan=EvaluationPlan(VALIDATION, interval_steps=1))
    queue(repo, "other-seed", seed=12, epochs=2)
    runs = [run(settings, repo, m) for m in ("first", "second", "other-seed")]
    artifacts = Artifacts.of(settings)
    first, second, other = (weights(artifacts.adapter(o.tuned_model_id, o.id)) for o in runs)
    assert first.keys() == second.keys()
    assert all(torch_equal(first[k], second[k]) for k in first)
    assert not all(torch_equal(first[k], other[k]) for k in first)


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_a_resumed_job_keeps_one_evaluation_per_step(settings, repo):
    plan = EvaluationPlan(VALIDATION, interval_steps=1)
    queue(repo, "resumed", epochs=2, plan=plan)
    operation = run(settings, repo, "resumed")
    first_loss = repo.operation_evaluations(operation.id)[0].validation_loss
    # As a job resumed from its checkpoint of step 2: held by a worker again, it rewinds.
    with repo._tx() as c:
        c.execute(
            update(operations)
            .where(operations.c.id == operation.id)
            .values(status=JobStatus.RUNNING.value, worker_id="w")
        )
    repo.rewind(operation.id, "w", 2)
    assert [e.step for e in repo.operation_evaluations(operation.id)] == [1, 2]
    assert [c.epoch for c in repo.epoch_checkpoints(operation.id)] == [1]
    # Step 2 evaluated again replaces its record.
    repo.record_evaluation(
        operation.id, "w", Evaluation(2, 1, 0.5, 0.25, 1.0, 2, datetime.now(UTC))
    )
    stored = [(e.step, e.validation_loss) for e in repo.operation_evaluations(operation.id)]
    assert stored == [(1, first_loss), (2, 0.25)]


def test_deleting_the_model_removes_its_kept_epochs(settings, repo):
    queue(repo, "gone", epochs=2, plan=EvaluationPlan(VALIDATION))
    operation = run(settings, repo, "gone")
    artifacts = Artifacts.of(settings)
    assert artifacts.epoch_adapter("gone", operation.id, 1).exists()
    artifacts.remove_model("gone", repo.delete_tuned_model("gone"))
    assert not artifacts.model_dir("gone").exists()
    assert repo.operation_evaluations(operation.id) == []
    assert repo.epoch_checkpoints(operation.id) == []


def test_a_validation_loss_that_is_not_finite_fails_the_job(settings, repo, monkeypatch):
    monkeypatch.setattr(evaluation_module, "validation_loss", lambda *args: float("nan"))
    queue(repo, "diverged", plan=EvaluationPlan(VALIDATION))
    assert Worker(settings, repo, Catalog(settings)).run_once()
    operation = repo.get_operation("diverged", "op-diverged")
    assert operation.status is JobStatus.FAILED
    assert "the validation loss became nan at step 2" in operation.error.message
    assert repo.operation_evaluations(operation.id) == []


def test_a_job_from_a_tuned_model_starts_from_the_checkpoint_chosen_when_accepted(
    settings, repo, monkeypatch
):
    queue(repo, "source", epochs=3)
    source = run(settings, repo, "source")
    assert repo.serve_epoch("source", source.id, 1)
    now = datetime.now(UTC)
    derived = TunedModel(
        id="derived", base_model=TINY, display_name="", description="", temperature=1.0,
        top_p=0.9, top_k=10, state=TunedModelState.CREATING, create_time=now, update_time=now,
        hyperparameters=Hyperparameters(1, 2, 0.01), owner_id="owner",
        source_tuned_model="tunedModels/source",
    )  # fmt: skip
    repo.create_tuned_model(
        derived, "op-derived", EXAMPLES, seed=3, total_steps=2, owner_email="owner@localhost",
        quota=ProjectQuota(), source_operation_id=source.id, source_served_epoch=1,
    )  # fmt: skip
    assert repo.serve_epoch("source", source.id, 3)  # chosen again after the job was accepted
    started_from = []
    real_train = worker_module.train_lora

    def recording(*args, **kwargs):
        started_from.append(kwargs["init_adapter"])
        return real_train(*args, **kwargs)

    monkeypatch.setattr(worker_module, "train_lora", recording)
    run(settings, repo, "derived")
    assert started_from == [Artifacts.of(settings).epoch_adapter("source", source.id, 1)]
