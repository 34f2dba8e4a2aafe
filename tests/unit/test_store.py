from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from conftest import DATABASES
from tunesmith.config import database_url
from tunesmith.domain.access import ListScope, Principal
from tunesmith.domain.errors import Code, ServiceError
from tunesmith.domain.quotas import ProjectQuota
from tunesmith.domain.resources import (
    CANCELLED_ERROR,
    Hyperparameters,
    JobStatus,
    TunedModel,
    TunedModelState,
    TuningExample,
    TuningSnapshot,
)
from tunesmith.domain.validation import TunedModelUpdate
from tunesmith.store.db import make_engine, migrate
from tunesmith.store.jobs import LeaseLost
from tunesmith.store.repository import Repository

EXAMPLES = [TuningExample("1", "2"), TuningExample("3", "4")]
OWNER = Principal("owner", "owner@localhost")


@pytest.fixture(params=DATABASES)
def repo(request, tmp_path) -> Repository:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    else:
        url = database_url(request.getfixturevalue("postgres").new_database())
    engine = make_engine(url)
    migrate(engine)
    migrate(engine)  # idempotent
    repo = Repository(engine)
    repo.ensure_principal("owner", "owner@localhost")
    return repo


def add_model(
    repo: Repository,
    model_id: str = "m1",
    op: str = "op1",
    project: int | None = None,
    quota: ProjectQuota = ProjectQuota(),
) -> None:
    now = datetime.now(UTC)
    model = TunedModel(
        id=model_id, base_model="models/x", display_name="", description="", temperature=1.0,
        top_p=0.9, top_k=10, state=TunedModelState.CREATING, create_time=now, update_time=now,
        hyperparameters=Hyperparameters(2, 1, 0.001), owner_id="owner", project_number=project,
    )  # fmt: skip
    repo.create_tuned_model(
        model, op, EXAMPLES, seed=7, total_steps=4, owner_email=OWNER.email, quota=quota
    )


def snapshot(step: int) -> TuningSnapshot:
    return TuningSnapshot(step, step // 2, 1.0 / step, datetime.now(UTC))


def test_create_is_atomic_and_ids_unique(repo):
    add_model(repo)
    with pytest.raises(ServiceError) as caught:
        add_model(repo, op="op2")
    assert caught.value.code is Code.ALREADY_EXISTS
    assert [o.id for o in repo.list_operations("m1")] == ["op1"]


def test_one_claim_per_job_and_expired_leases_are_retaken(repo):
    add_model(repo)
    job = repo.claim_job("w1", lease_seconds=60)
    assert job is not None and job.examples == EXAMPLES and job.seed == 7 and job.attempt == 1
    assert repo.claim_job("w2", lease_seconds=60) is None
    assert repo.get_tuned_model("m1").start_time is not None

    repo.record_step("op1", "w1", snapshot(1), lease_seconds=-1)  # lease already over
    retaken = repo.claim_job("w2", lease_seconds=60)
    assert retaken is not None and retaken.attempt == 2
    with pytest.raises(LeaseLost):
        repo.record_step("op1", "w1", snapshot(2), lease_seconds=60)


def test_rewind_forgets_steps_past_the_checkpoint(repo):
    add_model(repo)
    repo.claim_job("w1", 60)
    for step in (1, 2, 3):
        repo.record_step("op1", "w1", snapshot(step), 60)
    repo.rewind("op1", "w1", 1)
    assert [s.step for s in repo.operation_snapshots("op1")] == [1]
    assert repo.get_operation("m1", "op1").completed_steps == 1


def test_finish_sets_model_state(repo):
    add_model(repo)
    repo.claim_job("w1", 60)
    repo.finish_job("op1", "w1", JobStatus.SUCCEEDED, None)
    model = repo.get_tuned_model("m1")
    assert model.state is TunedModelState.ACTIVE and model.complete_time is not None
    assert repo.claim_job("w1", 60) is None


def test_cancel_queued_job_at_once_and_running_job_by_flag(repo):
    add_model(repo)
    operation = repo.request_cancel("m1", "op1")
    assert operation.status is JobStatus.CANCELLED and operation.error == CANCELLED_ERROR
    assert repo.get_tuned_model("m1").state is TunedModelState.FAILED

    add_model(repo, "m2", "op2")
    repo.claim_job("w1", 60)
    assert repo.request_cancel("m2", "op2").status is JobStatus.RUNNING
    assert repo.record_step("op2", "w1", snapshot(1), 60) is True


def test_released_lease_is_claimable_and_not_an_attempt(repo):
    add_model(repo)
    repo.claim_job("w1", 60)
    repo.release_lease("op1", "w1")
    again = repo.claim_job("w2", 60)
    assert again is not None and again.attempt == 1


def test_delete_takes_operations_and_snapshots(repo):
    add_model(repo)
    repo.claim_job("w1", 60)
    repo.record_step("op1", "w1", snapshot(1), 60)
    assert repo.delete_tuned_model("m1")
    assert repo.get_operation("m1", "op1") is None
    assert repo.operation_snapshots("op1") == []
    with pytest.raises(LeaseLost):
        repo.renew_lease("op1", "w1", 60)


def test_list_pages_and_text_filter(repo):
    for i in range(3):
        add_model(repo, f"m{i}", f"op{i}")
    page, more = repo.list_tuned_models(0, 2, ListScope(OWNER))
    assert [m.id for m in page] == ["m0", "m1"] and more
    page, more = repo.list_tuned_models(2, 2, ListScope(OWNER))
    assert [m.id for m in page] == ["m2"] and not more
    assert repo.list_tuned_models(0, 10, ListScope(OWNER), "nothing")[0] == []


def test_timestamps_come_back_aware(repo):
    add_model(repo)
    model = repo.get_tuned_model("m1")
    assert model.create_time.tzinfo is not None
    assert datetime.now(UTC) - model.create_time < timedelta(minutes=1)


def test_filter_words_match_percent_and_underscore_literally(repo):
    for model_id, name in [("a", "100% done"), ("b", "100 done"), ("c", "x_y"), ("d", "xzy")]:
        add_model(repo, model_id, op=f"op-{model_id}")
        repo.update_tuned_model(model_id, TunedModelUpdate(display_name=name))
    scope = ListScope(OWNER)

    def matching(text: str) -> set[str]:
        return {m.id for m in repo.list_tuned_models(0, 10, scope, text)[0]}

    assert matching("100%") == {"a"}
    assert matching("x_y") == {"c"}
    assert matching("%") == {"a"}
    assert matching("_") == {"c"}


def test_delete_returns_the_operations_whose_artifacts_go_too(repo):
    add_model(repo)
    assert repo.delete_tuned_model("m1") == ["op1"]
    assert repo.delete_tuned_model("m1") is None


def test_concurrent_creates_stay_exactly_within_the_project_quota(repo):
    """The quota count and the insert it allows are one step, across threads (and, on
    PostgreSQL, across API replicas: the project's row is locked)."""
    repo.create_project(42, "busy-project")
    quota = ProjectQuota(concurrent_jobs=4)

    def create(n: int) -> bool:
        try:
            add_model(repo, f"m{n}", f"op{n}", project=42, quota=quota)
            return True
        except ServiceError as error:
            assert error.code is Code.RESOURCE_EXHAUSTED
            return False

    with ThreadPoolExecutor(max_workers=10) as pool:
        accepted = sum(pool.map(create, range(20)))
    assert accepted == 4


def test_racing_workers_claim_different_jobs(repo):
    for n in range(4):
        add_model(repo, f"m{n}", f"op{n}")
    with ThreadPoolExecutor(max_workers=4) as pool:
        claims = list(pool.map(lambda n: repo.claim_job(f"w{n}", 60), range(4)))
    assert sorted(job.operation_id for job in claims if job) == ["op0", "op1", "op2", "op3"]
