"""Every read and write of the database, returning domain objects."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from tunesmith.domain.errors import Code, ServiceError
from tunesmith.domain.resources import (
    CANCELLED_ERROR,
    ClaimedJob,
    Hyperparameters,
    JobError,
    JobStatus,
    Operation,
    TunedModel,
    TunedModelState,
    TuningExample,
    TuningSnapshot,
)
from tunesmith.domain.validation import TunedModelUpdate
from tunesmith.store.tables import api_keys, operations, principals, snapshots, tuned_models


def utcnow() -> datetime:
    return datetime.now(UTC)


class LeaseLost(Exception):
    """The worker no longer holds the job: it expired, was taken over, or was deleted."""


def _tuned_model(row, snaps: list[TuningSnapshot]) -> TunedModel:
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
        reader_project_numbers=json.loads(row.reader_project_numbers),
    )


def _operation(row) -> Operation:
    error = JobError(row.error_code, row.error_message) if row.error_code is not None else None
    return Operation(
        id=row.id,
        tuned_model_id=row.tuned_model_id,
        status=JobStatus(row.status),
        total_steps=row.total_steps,
        completed_steps=row.completed_steps,
        error=error,
    )


def _snapshot(row) -> TuningSnapshot:
    return TuningSnapshot(row.step, row.epoch, row.mean_loss, row.compute_time)


class Repository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self.engine.begin() as connection:
            yield connection

    # ------------------------------------------------------------ principals

    def ensure_principal(self, principal_id: str, email: str) -> None:
        with self._tx() as c:
            if c.execute(select(principals.c.id).where(principals.c.id == principal_id)).first():
                return
            c.execute(insert(principals).values(id=principal_id, email=email, create_time=utcnow()))

    def add_api_key(self, principal_id: str, key_hash: str) -> None:
        with self._tx() as c:
            c.execute(
                insert(api_keys).values(
                    key_hash=key_hash,
                    principal_id=principal_id,
                    create_time=utcnow(),
                    revoked=False,
                )
            )

    def principal_for_key(self, key_hash: str) -> tuple[str, str] | None:
        query = (
            select(principals.c.id, principals.c.email)
            .join(api_keys, api_keys.c.principal_id == principals.c.id)
            .where(api_keys.c.key_hash == key_hash, api_keys.c.revoked.is_(False))
        )
        with self.engine.connect() as c:
            row = c.execute(query).first()
        return (row.id, row.email) if row else None

    def principal(self, principal_id: str) -> tuple[str, str] | None:
        query = select(principals.c.id, principals.c.email).where(principals.c.id == principal_id)
        with self.engine.connect() as c:
            row = c.execute(query).first()
        return (row.id, row.email) if row else None

    # ------------------------------------------------------------ tuned models

    def create_tuned_model(
        self,
        model: TunedModel,
        operation_id: str,
        examples: list[TuningExample],
        seed: int,
        total_steps: int,
    ) -> None:
        """The model and its queued job, in one transaction: both or neither."""
        hp = model.hyperparameters
        try:
            with self._tx() as c:
                c.execute(
                    insert(tuned_models).values(
                        id=model.id,
                        base_model=model.base_model,
                        source_tuned_model=model.source_tuned_model,
                        display_name=model.display_name,
                        description=model.description,
                        temperature=model.temperature,
                        top_p=model.top_p,
                        top_k=model.top_k,
                        state=int(model.state),
                        epoch_count=hp.epoch_count,
                        batch_size=hp.batch_size,
                        learning_rate=hp.learning_rate,
                        reader_project_numbers=json.dumps(model.reader_project_numbers),
                        owner_id=model.owner_id,
                        create_time=model.create_time,
                        update_time=model.update_time,
                    )
                )
                c.execute(
                    insert(operations).values(
                        id=operation_id,
                        tuned_model_id=model.id,
                        status=JobStatus.QUEUED.value,
                        base_model=model.base_model,
                        source_tuned_model=model.source_tuned_model,
                        training_data=json.dumps([[e.text_input, e.output] for e in examples]),
                        total_steps=total_steps,
                        completed_steps=0,
                        seed=seed,
                        cancel_requested=False,
                        attempts=0,
                        create_time=model.create_time,
                        update_time=model.create_time,
                    )
                )
        except IntegrityError as error:
            raise ServiceError(
                Code.ALREADY_EXISTS, f"Tuned model {model.name} already exists."
            ) from error

    def get_tuned_model(self, model_id: str) -> TunedModel | None:
        with self.engine.connect() as c:
            row = c.execute(select(tuned_models).where(tuned_models.c.id == model_id)).first()
            if row is None:
                return None
            snaps = c.execute(
                select(snapshots)
                .join(operations, operations.c.id == snapshots.c.operation_id)
                .where(operations.c.tuned_model_id == model_id)
                .order_by(snapshots.c.step)
            ).all()
        return _tuned_model(row, [_snapshot(s) for s in snaps])

    def list_tuned_models(
        self, offset: int, limit: int, text: str = "", owner_id: str | None = None
    ) -> tuple[list[TunedModel], bool]:
        """A page in creation order and whether more follow; `text` matches display name
        or description, case-insensitively, every word."""
        query = select(tuned_models.c.id).order_by(tuned_models.c.create_time, tuned_models.c.id)
        if owner_id is not None:
            query = query.where(tuned_models.c.owner_id == owner_id)
        for word in text.split():
            pattern = f"%{word.lower()}%"
            query = query.where(
                or_(
                    func.lower(tuned_models.c.display_name).like(pattern),
                    func.lower(tuned_models.c.description).like(pattern),
                )
            )
        with self.engine.connect() as c:
            ids = c.execute(query.offset(offset).limit(limit + 1)).scalars().all()
        models = [m for m in (self.get_tuned_model(i) for i in ids[:limit]) if m is not None]
        return models, len(ids) > limit

    def update_tuned_model(self, model_id: str, change: TunedModelUpdate) -> TunedModel | None:
        values: dict = {
            name: getattr(change, name)
            for name in ("display_name", "description", "temperature", "top_p", "top_k")
            if getattr(change, name) is not None
        }
        if change.reader_project_numbers is not None:
            values["reader_project_numbers"] = json.dumps(change.reader_project_numbers)
        values["update_time"] = utcnow()
        with self._tx() as c:
            result = c.execute(
                update(tuned_models).where(tuned_models.c.id == model_id).values(**values)
            )
        return self.get_tuned_model(model_id) if result.rowcount else None

    def delete_tuned_model(self, model_id: str) -> bool:
        """Deletes the model, its operations and snapshots. A running job notices at its next
        step that its operation is gone and stops."""
        with self._tx() as c:
            op_ids = select(operations.c.id).where(operations.c.tuned_model_id == model_id)
            c.execute(delete(snapshots).where(snapshots.c.operation_id.in_(op_ids)))
            c.execute(delete(operations).where(operations.c.tuned_model_id == model_id))
            result = c.execute(delete(tuned_models).where(tuned_models.c.id == model_id))
        return bool(result.rowcount)

    # ------------------------------------------------------------ operations

    def get_operation(self, model_id: str, operation_id: str) -> Operation | None:
        query = select(operations).where(
            operations.c.id == operation_id, operations.c.tuned_model_id == model_id
        )
        with self.engine.connect() as c:
            row = c.execute(query).first()
        return _operation(row) if row else None

    def list_operations(self, model_id: str) -> list[Operation]:
        query = (
            select(operations)
            .where(operations.c.tuned_model_id == model_id)
            .order_by(operations.c.create_time)
        )
        with self.engine.connect() as c:
            return [_operation(r) for r in c.execute(query)]

    def operation_snapshots(self, operation_id: str) -> list[TuningSnapshot]:
        query = (
            select(snapshots)
            .where(snapshots.c.operation_id == operation_id)
            .order_by(snapshots.c.step)
        )
        with self.engine.connect() as c:
            return [_snapshot(r) for r in c.execute(query)]

    def request_cancel(self, model_id: str, operation_id: str) -> Operation | None:
        """Cancels a queued job at once; flags a running one for its worker to stop."""
        with self._tx() as c:
            row = c.execute(
                select(operations).where(
                    operations.c.id == operation_id, operations.c.tuned_model_id == model_id
                )
            ).first()
            if row is None:
                return None
            if row.status == JobStatus.QUEUED.value:
                self._finish(c, operation_id, JobStatus.CANCELLED, CANCELLED_ERROR, utcnow())
            elif row.status == JobStatus.RUNNING.value:
                c.execute(
                    update(operations)
                    .where(operations.c.id == operation_id)
                    .values(cancel_requested=True, update_time=utcnow())
                )
        return self.get_operation(model_id, operation_id)

    # ------------------------------------------------------------ job queue

    def claim_job(self, worker_id: str, lease_seconds: float) -> ClaimedJob | None:
        """Takes the oldest queued job, or a running one whose worker stopped renewing its
        lease. The conditional UPDATE is the lock: of two workers racing, one wins."""
        now = utcnow()
        claimable = or_(
            operations.c.status == JobStatus.QUEUED.value,
            and_(
                operations.c.status == JobStatus.RUNNING.value,
                operations.c.lease_expires_at < now,
            ),
        )
        for _ in range(5):
            with self._tx() as c:
                row = c.execute(
                    select(operations).where(claimable).order_by(operations.c.create_time).limit(1)
                ).first()
                if row is None:
                    return None
                taken = c.execute(
                    update(operations)
                    .where(operations.c.id == row.id, claimable)
                    .values(
                        status=JobStatus.RUNNING.value,
                        worker_id=worker_id,
                        lease_expires_at=now + timedelta(seconds=lease_seconds),
                        attempts=operations.c.attempts + 1,
                        update_time=now,
                    )
                ).rowcount
                if not taken:
                    continue
                c.execute(
                    update(tuned_models)
                    .where(
                        tuned_models.c.id == row.tuned_model_id, tuned_models.c.start_time.is_(None)
                    )
                    .values(start_time=now)
                )
                hp = c.execute(
                    select(
                        tuned_models.c.epoch_count,
                        tuned_models.c.batch_size,
                        tuned_models.c.learning_rate,
                    ).where(tuned_models.c.id == row.tuned_model_id)
                ).one()
            return ClaimedJob(
                operation_id=row.id,
                tuned_model_id=row.tuned_model_id,
                base_model=row.base_model,
                source_tuned_model=row.source_tuned_model,
                examples=[TuningExample(i, o) for i, o in json.loads(row.training_data)],
                hyperparameters=Hyperparameters(hp.epoch_count, hp.batch_size, hp.learning_rate),
                total_steps=row.total_steps,
                seed=row.seed,
                attempt=row.attempts + 1,
                cancel_requested=row.cancel_requested,
            )
        return None

    def _held(self, c: Connection, operation_id: str, worker_id: str):
        row = c.execute(
            select(operations.c.cancel_requested, operations.c.status).where(
                operations.c.id == operation_id, operations.c.worker_id == worker_id
            )
        ).first()
        if row is None or row.status != JobStatus.RUNNING.value:
            raise LeaseLost(operation_id)
        return row

    def renew_lease(self, operation_id: str, worker_id: str, lease_seconds: float) -> bool:
        """Extends the lease; returns whether cancellation was asked for."""
        now = utcnow()
        with self._tx() as c:
            row = self._held(c, operation_id, worker_id)
            c.execute(
                update(operations)
                .where(operations.c.id == operation_id)
                .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
            )
        return bool(row.cancel_requested)

    def release_lease(self, operation_id: str, worker_id: str) -> None:
        """Makes a running job claimable now (its worker is shutting down). A hand-back is
        not a failed attempt, so it does not count towards the job's attempt limit."""
        with self._tx() as c:
            c.execute(
                update(operations)
                .where(
                    operations.c.id == operation_id,
                    operations.c.worker_id == worker_id,
                    operations.c.status == JobStatus.RUNNING.value,
                )
                .values(lease_expires_at=utcnow(), attempts=operations.c.attempts - 1)
            )

    def record_step(
        self, operation_id: str, worker_id: str, snapshot: TuningSnapshot, lease_seconds: float
    ) -> bool:
        """Stores a step's snapshot and progress, renewing the lease; returns whether
        cancellation was asked for."""
        with self._tx() as c:
            row = self._held(c, operation_id, worker_id)
            c.execute(
                delete(snapshots).where(
                    snapshots.c.operation_id == operation_id, snapshots.c.step == snapshot.step
                )
            )
            c.execute(
                insert(snapshots).values(
                    operation_id=operation_id,
                    step=snapshot.step,
                    epoch=snapshot.epoch,
                    mean_loss=snapshot.mean_loss,
                    compute_time=snapshot.compute_time,
                )
            )
            c.execute(
                update(operations)
                .where(operations.c.id == operation_id)
                .values(
                    completed_steps=snapshot.step,
                    lease_expires_at=snapshot.compute_time + timedelta(seconds=lease_seconds),
                    update_time=snapshot.compute_time,
                )
            )
        return bool(row.cancel_requested)

    def rewind(self, operation_id: str, worker_id: str, step: int) -> None:
        """Forgets progress past `step`, where a resumed job picks up from its checkpoint."""
        with self._tx() as c:
            self._held(c, operation_id, worker_id)
            c.execute(
                delete(snapshots).where(
                    snapshots.c.operation_id == operation_id, snapshots.c.step > step
                )
            )
            c.execute(
                update(operations)
                .where(operations.c.id == operation_id)
                .values(completed_steps=step)
            )

    def finish_job(
        self, operation_id: str, worker_id: str, status: JobStatus, error: JobError | None
    ) -> None:
        with self._tx() as c:
            self._held(c, operation_id, worker_id)
            self._finish(c, operation_id, status, error, utcnow())

    def _finish(
        self,
        c: Connection,
        operation_id: str,
        status: JobStatus,
        error: JobError | None,
        now: datetime,
    ) -> None:
        c.execute(
            update(operations)
            .where(operations.c.id == operation_id)
            .values(
                status=status.value,
                error_code=error.code if error else None,
                error_message=error.message if error else None,
                lease_expires_at=None,
                update_time=now,
            )
        )
        model_id = c.execute(
            select(operations.c.tuned_model_id).where(operations.c.id == operation_id)
        ).scalar_one()
        state = TunedModelState.ACTIVE if status == JobStatus.SUCCEEDED else TunedModelState.FAILED
        c.execute(
            update(tuned_models)
            .where(tuned_models.c.id == model_id)
            .values(state=int(state), update_time=now, complete_time=now)
        )
