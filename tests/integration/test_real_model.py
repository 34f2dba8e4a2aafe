"""End to end on the real default base model: the tutorial's job really teaches the task."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from conftest import (
    BASE_MODEL_CACHE,
    TUTORIAL_EXAMPLES,
    TUTORIAL_REQUESTS_BODY,
    LiveServer,
    wait_for_operation,
)
from tunesmith.config import Settings
from tunesmith.domain.quotas import ProjectQuota
from tunesmith.domain.resources import (
    EvaluationPlan,
    Hyperparameters,
    JobStatus,
    TunedModel,
    TunedModelState,
    TuningExample,
)
from tunesmith.jobs.worker import Worker
from tunesmith.store.db import make_engine, migrate
from tunesmith.store.repository import Repository
from tunesmith.training.base_models import Catalog

HELD_OUT = [
    ("5", "6"), ("41", "42"), ("-10", "-9"), ("123", "124"), ("2,000", "2,001"),
    ("six", "seven"), ("twenty", "twenty one"), ("forty five", "forty six"),
]  # fmt: skip


@pytest.mark.slow
def test_tutorial_job_on_gemma_answers_the_task(tmp_path):
    server = LiveServer(tmp_path / "data", {}).start(timeout=600)
    try:
        with server.client() as client:
            body = TUTORIAL_REQUESTS_BODY
            operation = client.post("/v1beta/tunedModels", json=body).json()
            assert operation["metadata"]["totalSteps"] == 19
            done = wait_for_operation(client, operation["name"], timeout=600)
            assert "error" not in done, done
            losses = [s["meanLoss"] for s in done["metadata"]["snapshots"]]
            assert sum(losses[-3:]) < sum(losses[:3])  # it learned
            name = done["response"]["name"]

            def answer(text: str) -> str:
                reply = client.post(
                    f"/v1beta/{name}:generateContent",
                    json={
                        "contents": [{"parts": [{"text": text}]}],
                        "generationConfig": {"temperature": 0, "maxOutputTokens": 16},
                    },
                )
                assert reply.status_code == 200, reply.text
                return reply.json()["candidates"][0]["content"]["parts"][0]["text"].strip()

            trained = sum(answer(i) == o for i, o in TUTORIAL_EXAMPLES)
            held_out = sum(answer(i) == o for i, o in HELD_OUT)
            # Each job draws its own seed. In 16 runs of the default recipe (8 seeds before
            # packed training, 8 after; docs/PERFORMANCE.md) a run got 12 to 15 of the 15
            # training inputs back, most often 15; the one 12 came after packing.
            assert trained >= 12, trained
            # Over the 58-run recipe sweep (docs/PERFORMANCE.md) held-out digits came out
            # right about 75% of the time and number words about 40%, so this list averages
            # about 5 of 8. 3 shows it generalises beyond the training
            # inputs without failing on an unlucky seed.
            assert held_out >= 3, held_out
    finally:
        server.stop()


@pytest.mark.slow
def test_evaluation_numbers_on_gemma(tmp_path):
    """A one-step job on the default base model, evaluated on 3 held-out examples: the
    numbers are computed and in range (how good they are is the test above's business)."""
    settings = Settings(data_dir=tmp_path / "data", base_model_dir=BASE_MODEL_CACHE)
    settings.data_dir.mkdir(parents=True)
    engine = make_engine(settings.sqlalchemy_url)
    migrate(engine)
    repo = Repository(engine)
    repo.ensure_principal("owner", "owner@localhost")
    now = datetime.now(UTC)
    model = TunedModel(
        id="gemma-evaluated", base_model=settings.default_base_model, display_name="",
        description="", temperature=1.0, top_p=0.95, top_k=64, state=TunedModelState.CREATING,
        create_time=now, update_time=now, hyperparameters=Hyperparameters(1, 8, 0.001),
        owner_id="owner",
    )  # fmt: skip
    pairs = [TuningExample(i, o) for i, o in TUTORIAL_EXAMPLES]
    plan = EvaluationPlan(pairs[8:11])
    repo.create_tuned_model(
        model, "op-gemma", pairs[:8], seed=1, total_steps=1, owner_email="owner@localhost",
        quota=ProjectQuota(), plan=plan,
    )  # fmt: skip
    assert Worker(settings, repo, Catalog(settings)).run_once()
    operation = repo.get_operation("gemma-evaluated", "op-gemma")
    assert operation.status is JobStatus.SUCCEEDED, operation.error
    evaluations = repo.operation_evaluations("op-gemma")
    assert [(e.step, e.epoch, e.examples) for e in evaluations] == [(1, 1, 3)]
    for evaluation in evaluations:
        assert math.isfinite(evaluation.validation_loss) and evaluation.validation_loss >= 0
        assert evaluation.training_loss is not None and math.isfinite(evaluation.training_loss)
        assert 0.0 <= evaluation.exact_match <= 1.0
    assert [c.epoch for c in repo.epoch_checkpoints("op-gemma")] == [1]
