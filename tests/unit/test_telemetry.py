"""Token accounting through a resumed job, the store's metrics, logs and request ids."""

from __future__ import annotations

import io
import json
import logging
import re
from contextvars import copy_context
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from conftest import TINY
from tunesmith.config import LocalBaseModel, Settings
from tunesmith.domain.quotas import ProjectQuota
from tunesmith.domain.resources import (
    Hyperparameters,
    JobStatus,
    TunedModel,
    TunedModelState,
    TuningExample,
    TuningSnapshot,
)
from tunesmith.observability import logs
from tunesmith.observability.http import request_id_for
from tunesmith.observability.metrics import StoreCollector
from tunesmith.store.db import make_engine, migrate
from tunesmith.store.repository import Repository
from tunesmith.training.base_models import Catalog, load_base_model
from tunesmith.training.lora import Checkpoint, StepResult, train_lora

EXAMPLES = [TuningExample("1", "2"), TuningExample("three", "four"), TuningExample("9", "10")]
HP = Hyperparameters(epoch_count=2, batch_size=2, learning_rate=0.001)  # 3 steps


@pytest.fixture
def repo(tmp_path) -> Repository:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    repo = Repository(engine)
    repo.ensure_principal("owner", "owner@localhost")
    return repo


def add_job(repo: Repository, model_id: str = "m1", op: str = "op1") -> None:
    now = datetime.now(UTC)
    model = TunedModel(
        id=model_id, base_model=TINY, display_name="Secret name", description="",
        temperature=1.0, top_p=0.9, top_k=10, state=TunedModelState.CREATING, create_time=now,
        update_time=now, hyperparameters=HP, owner_id="owner",
    )  # fmt: skip
    repo.create_tuned_model(
        model, op, EXAMPLES, seed=7, total_steps=3, owner_email="owner@localhost",
        quota=ProjectQuota(),
    )  # fmt: skip


def snapshot(step: int) -> TuningSnapshot:
    return TuningSnapshot(step, 0, 1.0, datetime.now(UTC))


def test_each_step_adds_its_tokens_once(repo):
    add_job(repo)
    repo.claim_job("w1", 60)
    for step, tokens in ((1, 10), (2, 20), (3, 30)):
        repo.record_step("op1", "w1", snapshot(step), 60, tokens=tokens)
    repo.record_step("op1", "w1", snapshot(3), 60, tokens=30)  # the same step stored again
    assert repo.training_totals() == (3, 60)


def test_rewind_sets_tokens_back_to_the_checkpoint(repo):
    add_job(repo)
    repo.claim_job("w1", 60)
    for step, tokens in ((1, 10), (2, 20), (3, 30)):
        repo.record_step("op1", "w1", snapshot(step), 60, tokens=tokens)
    repo.rewind("op1", "w1", 1, trained_tokens=10)
    assert repo.training_totals() == (1, 10)
    for step, tokens in ((2, 20), (3, 30)):
        repo.record_step("op1", "w1", snapshot(step), 60, tokens=tokens)
    assert repo.training_totals() == (3, 60)


class WorkerCrash(Exception):
    pass


def test_a_resumed_job_counts_every_step_once(repo, tiny_model_dir, tmp_path):
    """The worker's callbacks, with the worker killed after it stored step 2 but before it
    checkpointed it: the resumed run trains step 2 again, and its tokens still count once."""
    settings = Settings(
        data_dir=tmp_path, extra_base_models=[LocalBaseModel(name=TINY, path=tiny_model_dir)]
    )
    base = load_base_model(Catalog(settings).get(TINY).target, tmp_path / "cache")
    add_job(repo)
    repo.claim_job("w1", 60)
    step_tokens: dict[int, int] = {}
    crash_at = {2}

    def on_step(result: StepResult) -> None:
        step_tokens[result.step] = result.tokens
        repo.record_step("op1", "w1", snapshot(result.step), 60, tokens=result.tokens)
        if result.step in crash_at:
            crash_at.remove(result.step)
            raise WorkerCrash

    def on_resume(step: int, tokens: int) -> None:
        repo.rewind("op1", "w1", step, trained_tokens=tokens)

    def train() -> None:
        checkpoint = Checkpoint(tmp_path / "checkpoint.pt")
        train_lora(
            base, EXAMPLES, HP, 7, tmp_path / "adapter", checkpoint, on_step, on_resume,
            checkpoint_interval=0,  # a checkpoint after every step
        )  # fmt: skip

    with pytest.raises(WorkerCrash):
        train()
    assert repo.training_totals() == (2, step_tokens[1] + step_tokens[2])
    train()  # resumes from the checkpoint of step 1
    encoded = [base.codec.encode_example(e.text_input, e.output) for e in EXAMPLES]
    expected = HP.epoch_count * sum(len(prompt) + len(answer) for prompt, answer in encoded)
    assert sum(step_tokens.values()) == expected
    assert repo.training_totals() == (3, expected)


def test_store_metrics_count_jobs_and_models_by_state(repo):
    add_job(repo, "m1", "op1")
    add_job(repo, "m2", "op2")
    repo.claim_job("w1", 60)
    repo.record_step("op1", "w1", snapshot(1), 60, tokens=12)
    repo.finish_job("op1", "w1", JobStatus.SUCCEEDED, None)
    registry = CollectorRegistry()
    registry.register(StoreCollector(repo))

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("tunesmith_store_up") == 1
    assert value("tunesmith_tuning_jobs", state="succeeded") == 1
    assert value("tunesmith_tuning_jobs", state="queued") == 1
    assert value("tunesmith_tuning_jobs", state="cancelled") == 0
    assert value("tunesmith_tuned_models", state="active") == 1
    assert value("tunesmith_tuned_models", state="creating") == 1
    assert value("tunesmith_training_steps") == 1
    assert value("tunesmith_training_tokens") == 12


def test_store_metrics_report_a_database_that_fails(repo):
    with repo.engine.begin() as c:
        c.exec_driver_sql("DROP TABLE operations")
    registry = CollectorRegistry()
    registry.register(StoreCollector(repo))
    assert registry.get_sample_value("tunesmith_store_up") == 0
    assert registry.get_sample_value("tunesmith_tuning_jobs", {"state": "queued"}) is None


def test_request_ids_from_clients_are_kept_only_when_plain():
    assert request_id_for("abc-123.x:y_z") == "abc-123.x:y_z"
    for odd in (None, "", "a" * 200, "two words", "line\nbreak", "-leading-dash", "ключ"):
        assert re.fullmatch(r"[0-9a-f]{32}", request_id_for(odd))
    assert request_id_for(None) != request_id_for(None)


def capture(log_format: str, emit) -> str:
    stream = io.StringIO()
    logger = logging.getLogger("tunesmith.test-observability")
    logger.setLevel(logging.INFO)
    logger.addHandler(logs.make_handler(log_format, stream))
    try:
        copy_context().run(emit, logger)
    finally:
        logger.handlers.clear()
    return stream.getvalue()


def emit_lines(logger: logging.Logger) -> None:
    logs.bind(request_id="r-1")
    with logs.log_fields(operation="tunedModels/m/operations/o"):
        logger.info("inside %s", "block", extra={"data": {"status": 200}})
    logger.info("after")


def test_json_lines_carry_the_context_and_the_records_data():
    first, second = (json.loads(line) for line in capture("json", emit_lines).splitlines())
    assert first["message"] == "inside block"
    assert first["request_id"] == "r-1" and first["operation"] == "tunedModels/m/operations/o"
    assert first["status"] == 200 and first["level"] == "INFO"
    assert second["request_id"] == "r-1" and "operation" not in second
    assert logs.current_fields() == {}  # bound inside the copied context only


def test_text_lines_show_the_context_before_the_message():
    first, second = capture("text", emit_lines).splitlines()
    assert first.endswith("request_id=r-1 operation=tunedModels/m/operations/o inside block")
    assert second.endswith("request_id=r-1 after")
