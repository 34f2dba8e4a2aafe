"""Rows to domain objects and back, and what every part of the store shares."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, and_, func, or_, select

from tunesmith.domain.access import (
    Account,
    GranteeType,
    ListScope,
    Permission,
    Role,
)
from tunesmith.domain.resources import (
    EpochCheckpoint,
    Evaluation,
    Hyperparameters,
    JobError,
    JobStatus,
    Operation,
    TunedModel,
    TunedModelState,
    TuningSnapshot,
)
from tunesmith.store.db import writer
from tunesmith.store.tables import (
    permissions,
    reader_projects,
    tuned_models,
)

ACTIVE_JOBS = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


def utcnow() -> datetime:
    return datetime.now(UTC)


def tuned_model_row(model: TunedModel) -> dict:
    hp = model.hyperparameters
    return {
        "id": model.id,
        "base_model": model.base_model,
        "source_tuned_model": model.source_tuned_model,
        "display_name": model.display_name,
        "description": model.description,
        "temperature": model.temperature,
        "top_p": model.top_p,
        "top_k": model.top_k,
        "state": int(model.state),
        "epoch_count": hp.epoch_count,
        "batch_size": hp.batch_size,
        "learning_rate": hp.learning_rate,
        "owner_id": model.owner_id,
        "project_number": model.project_number,
        "create_time": model.create_time,
        "update_time": model.update_time,
    }


def operation_row(
    model: TunedModel, operation_id: str, status: JobStatus, training_data: str
) -> dict:
    """An operation's columns, but for its step count and seed."""
    return {
        "id": operation_id,
        "tuned_model_id": model.id,
        "status": status.value,
        "base_model": model.base_model,
        "source_tuned_model": model.source_tuned_model,
        "training_data": training_data,
        "completed_steps": 0,
        "cancel_requested": False,
        "attempts": 0,
        "project_number": model.project_number,
        "create_time": model.create_time,
        "update_time": model.create_time,
    }


def like_literal(text: str) -> str:
    """`text` matched literally by LIKE ... ESCAPE '\\': its % and _ are no wildcards."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def account_from_row(row) -> Account:
    return Account(row.id, row.email, row.kind, row.display_name, row.default_project)


def permission_from_row(row) -> Permission:
    return Permission(
        tuned_model_id=row.tuned_model_id,
        id=row.id,
        grantee_type=GranteeType(row.grantee_type),
        email=row.email or "",
        role=Role(row.role),
        create_time=row.create_time,
    )


def tuned_model_from_row(row, snaps: list[TuningSnapshot], readers: list[int]) -> TunedModel:
    return TunedModel(
        id=row.id,
        base_model=row.base_model,
        display_name=row.display_name,
        description=row.description,
        temperature=row.temperature,
        top_p=row.top_p,
        top_k=row.top_k,
        state=TunedModelState(row.state),
        create_time=row.create_time,
        update_time=row.update_time,
        hyperparameters=Hyperparameters(row.epoch_count, row.batch_size, row.learning_rate),
        owner_id=row.owner_id,
        source_tuned_model=row.source_tuned_model,
        start_time=row.start_time,
        complete_time=row.complete_time,
        snapshots=snaps,
        reader_project_numbers=readers,
        project_number=row.project_number,
    )


def operation_from_row(row) -> Operation:
    error = JobError(row.error_code, row.error_message) if row.error_code is not None else None
    return Operation(
        id=row.id,
        tuned_model_id=row.tuned_model_id,
        status=JobStatus(row.status),
        total_steps=row.total_steps,
        completed_steps=row.completed_steps,
        error=error,
        served_epoch=row.served_epoch,
    )


def evaluation_from_row(row) -> Evaluation:
    return Evaluation(
        step=row.step,
        epoch=row.epoch,
        training_loss=row.training_loss,
        validation_loss=row.validation_loss,
        exact_match=row.exact_match,
        examples=row.examples,
        create_time=row.create_time,
    )


def epoch_checkpoint_from_row(row) -> EpochCheckpoint:
    return EpochCheckpoint(row.epoch, row.step, row.create_time)


def snapshot_from_row(row) -> TuningSnapshot:
    return TuningSnapshot(row.step, row.epoch, row.mean_loss, row.compute_time)


def visible_in_list(scope: ListScope):
    """SQL condition: the caller may see this model in a list (see ListScope)."""
    grants = select(permissions.c.tuned_model_id)
    if scope.everyone:
        return tuned_models.c.id.in_(
            grants.where(permissions.c.grantee_type == int(GranteeType.EVERYONE))
        )
    caller = scope.caller
    grantee = and_(
        permissions.c.grantee_type == int(GranteeType.USER), permissions.c.email == caller.email
    )
    if caller.groups:
        grantee = or_(
            grantee,
            and_(
                permissions.c.grantee_type == int(GranteeType.GROUP),
                permissions.c.email.in_(sorted(caller.groups)),
            ),
        )
    condition = or_(
        tuned_models.c.owner_id == caller.id,
        tuned_models.c.id.in_(grants.where(grantee, permissions.c.role <= int(scope.least_role))),
    )
    if scope.least_role == Role.READER and caller.projects:
        readable_by_project = select(reader_projects.c.tuned_model_id).where(
            reader_projects.c.project_number.in_(sorted(caller.projects))
        )
        condition = or_(condition, tuned_models.c.id.in_(readable_by_project))
    return condition


class StoreBase:
    """An engine and its transactions; each part of the store builds on it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = writer(engine)

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        """A transaction that writes: all or nothing, serialised with other writers."""
        with self._writer.begin() as connection:
            yield connection

    @staticmethod
    def _now(c: Connection) -> datetime:
        """The database's clock, so leases mean the same to workers on other machines; on
        SQLite, whose file is on this machine, this machine's."""
        if c.dialect.name == "postgresql":
            return c.execute(select(func.now())).scalar_one().astimezone(UTC)
        return utcnow()
