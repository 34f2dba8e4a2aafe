"""The job queue: operations, leases, steps and their snapshots. The part of the store a
worker needs, on its own."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timedelta

from sqlalchemy import Connection, Table, and_, delete, func, insert, or_, select, update

from tunesmith.domain.resources import (
    CANCELLED_ERROR,
    CheckpointChoice,
    ClaimedJob,
    EpochCheckpoint,
    Evaluation,
    EvaluationPlan,
    Hyperparameters,
    JobError,
    JobStatus,
    Operation,
    TunedModelState,
    TuningExample,
    TuningSnapshot,
)
from tunesmith.store.rows import (
    StoreBase,
    epoch_checkpoint_from_row,
    evaluation_from_row,
    operation_from_row,
    snapshot_from_row,
    utcnow,
)
from tunesmith.store.tables import (
    epoch_checkpoints,
    evaluations,
    operations,
    snapshots,
    tuned_models,
)


class LeaseLost(Exception):
    """The worker no longer holds the job: it expired, was taken over, or was deleted."""


class JobQueue(StoreBase):
    # ------------------------------------------------------------ operations

    def get_operation(self, model_id: str, operation_id: str) -> Operation | None:
        query = select(operations).where(
            operations.c.id == operation_id, operations.c.tuned_model_id == model_id
        )
        with self.engine.connect() as c:
            row = c.execute(query).first()
        return operation_from_row(row) if row else None

    def operation_progress(self, operation_id: str) -> tuple[JobStatus, int] | None:
        """An operation's status and completed steps: what changes whenever its answer
        does, cheap enough to read several times a second while a poll waits."""
        query = select(operations.c.status, operations.c.completed_steps).where(
            operations.c.id == operation_id
        )
        with self.engine.connect() as c:
            row = c.execute(query).first()
        return (JobStatus(row.status), row.completed_steps) if row else None

    def list_operations(self, model_id: str) -> list[Operation]:
        query = (
            select(operations)
            .where(operations.c.tuned_model_id == model_id)
            .order_by(operations.c.create_time)
        )
        with self.engine.connect() as c:
            return [operation_from_row(r) for r in c.execute(query)]

    def operation_snapshots(self, operation_id: str) -> list[TuningSnapshot]:
        return self._per_operation(snapshots, operation_id, snapshots.c.step, snapshot_from_row)

    def operation_evaluations(self, operation_id: str) -> list[Evaluation]:
        return self._per_operation(
            evaluations, operation_id, evaluations.c.step, evaluation_from_row
        )

    def epoch_checkpoints(self, operation_id: str) -> list[EpochCheckpoint]:
        return self._per_operation(
            epoch_checkpoints, operation_id, epoch_checkpoints.c.epoch, epoch_checkpoint_from_row
        )

    def _per_operation(self, table: Table, operation_id: str, order, convert: Callable) -> list:
        """An operation's rows of `table` (snapshots, evaluations, kept epochs), in order."""
        query = select(table).where(table.c.operation_id == operation_id).order_by(order)
        with self.engine.connect() as c:
            return [convert(r) for r in c.execute(query)]

    def serve_epoch(self, model_id: str, operation_id: str, epoch: int) -> bool:
        """Makes the operation's kept adapter of `epoch` the one its model serves; False
        when no such checkpoint is kept."""
        kept = select(epoch_checkpoints.c.epoch).where(
            epoch_checkpoints.c.operation_id == operation_id, epoch_checkpoints.c.epoch == epoch
        )
        with self._tx() as c:
            if c.execute(kept).first() is None:
                return False
            now = utcnow()
            c.execute(
                update(operations)
                .where(operations.c.id == operation_id)
                .values(served_epoch=epoch, update_time=now)
            )
            c.execute(
                update(tuned_models).where(tuned_models.c.id == model_id).values(update_time=now)
            )
        return True

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

    def _any_claimable(self) -> bool:
        """Whether a job waits to be claimed, by a plain read: an idle worker looks every
        fraction of a second, and a claim takes the database's write lock."""
        with self.engine.connect() as c:
            query = select(operations.c.id).where(_claimable(self._now(c))).limit(1)
            return c.execute(query).first() is not None

    def claim_job(self, worker_id: str, lease_seconds: float) -> ClaimedJob | None:
        """Takes the oldest queued job, or a running one whose worker stopped renewing its
        lease. On PostgreSQL the row is locked with SKIP LOCKED, so racing workers take
        different jobs; everywhere the conditional UPDATE is the lock: of two, one wins."""
        if not self._any_claimable():
            return None
        for _ in range(5):
            with self._tx() as c:
                now = self._now(c)
                claimable = _claimable(now)
                row = c.execute(
                    select(operations)
                    .where(claimable)
                    .order_by(operations.c.create_time)
                    .limit(1)
                    .with_for_update(skip_locked=True)
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
                source_operation_id=row.source_operation_id,
                source_served_epoch=row.source_served_epoch,
                examples=[TuningExample(i, o) for i, o in json.loads(row.training_data)],
                hyperparameters=Hyperparameters(hp.epoch_count, hp.batch_size, hp.learning_rate),
                total_steps=row.total_steps,
                seed=row.seed,
                attempt=row.attempts + 1,
                cancel_requested=row.cancel_requested,
                plan=plan_from_row(row),
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
        with self._tx() as c:
            row = self._held(c, operation_id, worker_id)
            expires = self._now(c) + timedelta(seconds=lease_seconds)
            c.execute(
                update(operations)
                .where(operations.c.id == operation_id)
                .values(lease_expires_at=expires)
            )
        return bool(row.cancel_requested)

    def release_lease(self, operation_id: str, worker_id: str, *, failed: bool = False) -> None:
        """Makes a running job claimable now. A worker shutting down hands its job back
        without using up an attempt; a `failed` attempt (an error the job's own code did not
        handle) keeps its count, so a job that always fails reaches the attempt limit."""
        refund = 0 if failed else 1
        with self._tx() as c:
            c.execute(
                update(operations)
                .where(
                    operations.c.id == operation_id,
                    operations.c.worker_id == worker_id,
                    operations.c.status == JobStatus.RUNNING.value,
                )
                .values(lease_expires_at=self._now(c), attempts=operations.c.attempts - refund)
            )

    def record_step(
        self,
        operation_id: str,
        worker_id: str,
        snapshot: TuningSnapshot,
        lease_seconds: float,
        tokens: int = 0,
    ) -> bool:
        """Stores a step's snapshot and progress and adds the `tokens` it trained on,
        renewing the lease; returns whether cancellation was asked for."""
        with self._tx() as c:
            row = self._held(c, operation_id, worker_id)
            replaced = c.execute(
                delete(snapshots).where(
                    snapshots.c.operation_id == operation_id, snapshots.c.step == snapshot.step
                )
            ).rowcount
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
                    # A step stored again trained on the same batch: its tokens count once.
                    trained_tokens=operations.c.trained_tokens + (0 if replaced else tokens),
                    lease_expires_at=self._now(c) + timedelta(seconds=lease_seconds),
                    update_time=snapshot.compute_time,
                )
            )
        return bool(row.cancel_requested)

    def record_evaluation(self, operation_id: str, worker_id: str, evaluation: Evaluation) -> None:
        """Stores a step's evaluation; one evaluated again (a resumed job) replaces it."""
        self._replace_held(operation_id, worker_id, evaluations, "step", asdict(evaluation))

    def record_epoch_checkpoint(
        self, operation_id: str, worker_id: str, checkpoint: EpochCheckpoint
    ) -> None:
        """Records an epoch's kept adapter (its files are already stored)."""
        self._replace_held(operation_id, worker_id, epoch_checkpoints, "epoch", asdict(checkpoint))

    def _replace_held(
        self, operation_id: str, worker_id: str, table: Table, key: str, values: dict
    ) -> None:
        """Stores a row of an operation's `table` under the worker's lease, replacing the
        row with the same `key` (a resumed job writes it again)."""
        with self._tx() as c:
            self._held(c, operation_id, worker_id)
            c.execute(
                delete(table).where(
                    table.c.operation_id == operation_id, table.c[key] == values[key]
                )
            )
            c.execute(insert(table).values(operation_id=operation_id, **values))

    def forget_epoch_checkpoints(
        self, operation_id: str, worker_id: str, epochs: list[int]
    ) -> None:
        """Drops the records of kept adapters (before their files are removed)."""
        with self._tx() as c:
            self._held(c, operation_id, worker_id)
            c.execute(
                delete(epoch_checkpoints).where(
                    epoch_checkpoints.c.operation_id == operation_id,
                    epoch_checkpoints.c.epoch.in_(epochs),
                )
            )

    def rewind(self, operation_id: str, worker_id: str, step: int, trained_tokens: int = 0) -> None:
        """Forgets progress past `step`, where a resumed job picks up from its checkpoint.

        `trained_tokens` is what steps 1..`step` trained on, and replaces the stored count:
        snapshots keep no per-step token count to subtract, but a job's batches are fixed by
        its seed, so the worker recomputes it (0 for a fresh start). Steps past `step` are
        trained again and count again, once."""
        with self._tx() as c:
            self._held(c, operation_id, worker_id)
            for table in (snapshots, evaluations, epoch_checkpoints):
                c.execute(
                    delete(table).where(table.c.operation_id == operation_id, table.c.step > step)
                )
            c.execute(
                update(operations)
                .where(operations.c.id == operation_id)
                .values(completed_steps=step, trained_tokens=trained_tokens)
            )

    def finish_job(
        self,
        operation_id: str,
        worker_id: str,
        status: JobStatus,
        error: JobError | None,
        served_epoch: int | None = None,
    ) -> None:
        """Ends the job; a succeeded one serves its kept adapter of `served_epoch`, or
        its final adapter (None)."""
        with self._tx() as c:
            self._held(c, operation_id, worker_id)
            if served_epoch is not None:
                c.execute(
                    update(operations)
                    .where(operations.c.id == operation_id)
                    .values(served_epoch=served_epoch)
                )
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

    def count_jobs_by_status(self) -> dict[JobStatus, int]:
        query = select(operations.c.status, func.count()).group_by(operations.c.status)
        with self.engine.connect() as c:
            return {JobStatus(status): count for status, count in c.execute(query)}

    def training_totals(self) -> tuple[int, int]:
        """(steps completed, tokens trained on), summed over every stored tuning job."""
        query = select(
            func.coalesce(func.sum(operations.c.completed_steps), 0),
            func.coalesce(func.sum(operations.c.trained_tokens), 0),
        )
        with self.engine.connect() as c:
            steps, tokens = c.execute(query).one()
        return int(steps), int(tokens)


def plan_from_row(row) -> EvaluationPlan:
    validation = json.loads(row.validation_data) if row.validation_data else []
    return EvaluationPlan(
        validation=[TuningExample(i, o) for i, o in validation],
        interval_steps=row.evaluation_interval_steps or 0,
        choice=CheckpointChoice.resolved(row.checkpoint_choice),
    )


def _claimable(now: datetime):
    """A queued job, or a running one whose worker stopped renewing its lease."""
    return or_(
        operations.c.status == JobStatus.QUEUED.value,
        and_(
            operations.c.status == JobStatus.RUNNING.value,
            operations.c.lease_expires_at < now,
        ),
    )
