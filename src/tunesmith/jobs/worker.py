"""A worker process: claims queued tuning jobs from the database and runs them.

The database is the queue. A claimed job carries a lease that the worker renews on every
step and from a heartbeat thread; a worker that dies stops renewing, and after the lease
expires another worker claims the job and resumes it from its last checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file

from tunesmith.artifacts import Artifacts
from tunesmith.config import Settings
from tunesmith.domain import checkpoints
from tunesmith.domain.errors import Code
from tunesmith.domain.resources import (
    CANCELLED_ERROR,
    ClaimedJob,
    EpochCheckpoint,
    Evaluation,
    JobError,
    JobStatus,
    TuningSnapshot,
)
from tunesmith.observability.logs import log_fields
from tunesmith.store.jobs import JobQueue, LeaseLost
from tunesmith.store.retry import is_transient, retry_transient
from tunesmith.store.rows import utcnow
from tunesmith.training.base_models import (
    Catalog,
    LoadedBaseModel,
    load_base_model,
    torch_device,
    use_torch_threads,
)
from tunesmith.training.evaluation import EpochHook, Schedule
from tunesmith.training.forward import warm_up
from tunesmith.training.lora import StepResult, train_lora

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5  # a job that kills its worker this often is failed, not retried


def operation_name(job: ClaimedJob) -> str:
    return f"tunedModels/{job.tuned_model_id}/operations/{job.operation_id}"


class Cancelled(Exception):
    pass


class JobFailed(Exception):
    """The job cannot succeed; its message is what the user reads on the operation."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.error = JobError(code.rpc_code, message)


class Heartbeat(threading.Thread):
    """Renews a job's lease while a step or a model load takes longer than the lease."""

    def __init__(self, repo: JobQueue, job: ClaimedJob, worker_id: str, lease: float) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{job.operation_id}")
        self.repo, self.job, self.worker_id, self.lease = repo, job, worker_id, lease
        self.stopped = threading.Event()
        self.cancel_requested = False
        self.lost = False

    def run(self) -> None:
        # A new thread starts with an empty context: name the job in its log lines again.
        with log_fields(operation=operation_name(self.job)):
            self._renew_until_stopped()

    def _renew_until_stopped(self) -> None:
        while not self.stopped.wait(self.lease / 3):
            try:
                self.cancel_requested |= self.repo.renew_lease(
                    self.job.operation_id, self.worker_id, self.lease
                )
            except LeaseLost:
                self.lost = True
                return
            except Exception as error:  # a busy database must not kill the heartbeat
                if not is_transient(error):
                    log.exception("lease renewal failed")


class Worker:
    def __init__(self, settings: Settings, repo: JobQueue, catalog: Catalog) -> None:
        self.settings, self.repo, self.catalog = settings, repo, catalog
        self.artifacts = Artifacts.of(settings)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._bases: dict[str, LoadedBaseModel] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Worker:
        """A worker on the settings' database, migrated first (any process may be the first)."""
        from tunesmith.store.db import make_engine, migrate

        use_torch_threads(settings.torch_threads)
        engine = make_engine(settings.sqlalchemy_url)
        migrate(engine)
        return cls(settings, JobQueue(engine), Catalog(settings))

    def run_forever(self, stop: threading.Event, ready: Callable[[], None] | None = None) -> None:
        """Preloads the default base model, calls `ready`, then claims and runs jobs until
        `stop` is set."""
        self.preload_default_base()
        if ready is not None:
            ready()
        log.info("worker %s waiting for jobs", self.worker_id)
        while not stop.is_set():
            if not self.run_once():
                stop.wait(self.settings.worker_poll_seconds)

    def preload_default_base(self) -> None:
        """Loads the default base model before the first job and warms it up, so that job
        does not wait for either."""
        name = self.catalog.default.name
        try:
            base = self._base(name)
        except Exception:
            log.exception("could not preload %s; jobs will load it", name)
            return
        try:
            warm_up(base.model)
        except Exception:
            log.exception("could not warm %s up; its first job will", name)

    def run_once(self) -> bool:
        """Claims and runs one job; False when the queue is empty."""
        job = retry_transient(
            lambda: self.repo.claim_job(self.worker_id, self.settings.job_lease_seconds)
        )
        if job is None:
            return False
        with log_fields(operation=operation_name(job)):
            self._run_claimed(job)
        return True

    def _run_claimed(self, job: ClaimedJob) -> None:
        log.info("claimed %s (attempt %d)", job.operation_id, job.attempt)
        heartbeat = Heartbeat(self.repo, job, self.worker_id, self.settings.job_lease_seconds)
        heartbeat.start()
        try:
            self._run(job, heartbeat)
        except LeaseLost:
            log.warning(
                "lost the lease on %s; another worker or a delete took it", job.operation_id
            )
            self._clean_if_deleted(job)
        except (SystemExit, KeyboardInterrupt):
            # Shutting down mid-job: hand the job back at once instead of at lease expiry.
            self._release(job, failed=False)
            raise
        except Exception:
            # The job's own finishing code failed: the attempt counts, so a job that always
            # fails here reaches MAX_ATTEMPTS instead of being retried forever.
            log.exception("job %s failed outside training", job.operation_id)
            self._release(job, failed=True)
        finally:
            heartbeat.stopped.set()

    def _release(self, job: ClaimedJob, *, failed: bool) -> None:
        try:
            retry_transient(
                lambda: self.repo.release_lease(job.operation_id, self.worker_id, failed=failed)
            )
        except Exception:
            log.exception("could not hand back %s; its lease will expire", job.operation_id)

    def _run(self, job: ClaimedJob, heartbeat: Heartbeat) -> None:
        if job.cancel_requested:
            return self._finish(job, JobStatus.CANCELLED, CANCELLED_ERROR)
        if job.attempt > MAX_ATTEMPTS:
            message = f"Tuning failed: its worker died {MAX_ATTEMPTS} times during the job."
            return self._finish(job, JobStatus.FAILED, JobError(Code.INTERNAL.rpc_code, message))
        try:
            self._train(job, heartbeat)
        except Cancelled:
            return self._finish(job, JobStatus.CANCELLED, CANCELLED_ERROR)
        except JobFailed as failure:
            log.warning("job %s failed: %s", job.operation_id, failure)
            return self._finish(job, JobStatus.FAILED, failure.error)
        except LeaseLost:
            raise
        except Exception as error:
            log.exception("job %s failed", job.operation_id)
            message = f"Tuning failed: {type(error).__name__}: {error}"
            return self._finish(job, JobStatus.FAILED, JobError(Code.INTERNAL.rpc_code, message))
        if not self.artifacts.publish(job.tuned_model_id, job.operation_id):
            raise LeaseLost(job.operation_id)  # the model was deleted while its adapter saved
        kept = self.repo.epoch_checkpoints(job.operation_id)
        evaluations = self.repo.operation_evaluations(job.operation_id)
        served = checkpoints.served_epoch(kept, evaluations, job.plan.choice)
        self._finish(job, JobStatus.SUCCEEDED, None, served)

    def _train(self, job: ClaimedJob, heartbeat: Heartbeat) -> None:
        entry = self.catalog.get(job.base_model)
        if entry is None:
            raise JobFailed(
                Code.FAILED_PRECONDITION,
                f"Tuning failed: base model {job.base_model} is no longer installed.",
            )
        init = self._source_adapter(job)
        base = self._base(entry.target.name)
        lease = self.settings.job_lease_seconds

        def on_step(result: StepResult) -> None:
            if not math.isfinite(result.mean_loss):
                raise diverged("loss", result.mean_loss, result.step, job)
            snapshot = TuningSnapshot(result.step, result.epoch, result.mean_loss, utcnow())
            cancel = retry_transient(
                lambda: self.repo.record_step(
                    job.operation_id, self.worker_id, snapshot, lease, tokens=result.tokens
                )
            )
            if cancel or heartbeat.cancel_requested:
                raise Cancelled
            if heartbeat.lost:
                raise LeaseLost(job.operation_id)

        hook = self._epoch_hook(job, base, heartbeat)

        def on_resume(step: int, tokens: int) -> None:
            if step:
                log.info("resuming %s from its checkpoint of step %d", job.operation_id, step)
            retry_transient(
                lambda: self.repo.rewind(
                    job.operation_id, self.worker_id, step, trained_tokens=tokens
                )
            )
            snapshots = self.repo.operation_snapshots(job.operation_id)
            hook.resumed({s.step: s.mean_loss for s in snapshots})

        staging = self.artifacts.staging(job.tuned_model_id, job.operation_id)
        staging.parent.mkdir(parents=True, exist_ok=True)
        train_lora(
            base,
            job.examples,
            job.hyperparameters,
            job.seed,
            staging,
            self.artifacts.resumable(job.operation_id),
            on_step=on_step,
            on_resume=on_resume,
            init_adapter=init,
            checkpoint_interval=self.settings.checkpoint_interval_seconds,
            after_step=hook,
        )
        if not adapter_is_finite(staging):
            raise JobFailed(
                Code.INVALID_ARGUMENT,
                "Tuning failed: the adapter's weights are not finite after the last step; "
                "the learning rate is likely too high. Try a lower learningRate.",
            )

    def _epoch_hook(
        self, job: ClaimedJob, base: LoadedBaseModel, heartbeat: Heartbeat
    ) -> EpochHook:
        """Evaluates the job's adapter as its plan says and keeps it at each epoch end."""
        hp = job.hyperparameters
        schedule = Schedule(
            job.total_steps,
            hp.batch_size,
            len(job.examples),
            hp.epoch_count,
            job.plan.interval_steps,
        )

        def interrupt() -> None:
            if heartbeat.cancel_requested:
                raise Cancelled
            if heartbeat.lost:
                raise LeaseLost(job.operation_id)

        def on_evaluation(evaluation: Evaluation) -> None:
            if not math.isfinite(evaluation.validation_loss):
                raise diverged("validation loss", evaluation.validation_loss, evaluation.step, job)
            retry_transient(
                lambda: self.repo.record_evaluation(job.operation_id, self.worker_id, evaluation)
            )

        def on_epoch_end(model: PeftModel, epoch: int, step: int) -> None:
            interrupt()  # a worker that lost the job must not write the next one's files
            self._keep_epoch(job, model, epoch, step)

        return EpochHook(
            base.codec, job.plan.validation, schedule, on_evaluation, on_epoch_end, interrupt
        )

    def _keep_epoch(self, job: ClaimedJob, model: PeftModel, epoch: int, step: int) -> None:
        """Stores the adapter at an epoch's end and drops those past the setting's bound."""
        model_id, operation_id = job.tuned_model_id, job.operation_id
        staging = self.artifacts.epoch_staging(model_id, operation_id, epoch)
        model.save_pretrained(staging)
        self.artifacts.keep_epoch(model_id, operation_id, epoch, staging)
        kept = EpochCheckpoint(epoch, step, utcnow())
        retry_transient(
            lambda: self.repo.record_epoch_checkpoint(operation_id, self.worker_id, kept)
        )
        drop = checkpoints.epochs_to_drop(
            self.repo.epoch_checkpoints(operation_id),
            self.repo.operation_evaluations(operation_id),
            self.settings.max_epoch_checkpoints,
            job.plan.choice,
        )
        if drop:
            retry_transient(
                lambda: self.repo.forget_epoch_checkpoints(operation_id, self.worker_id, drop)
            )
            self.artifacts.remove_epochs(model_id, operation_id, drop)

    def _source_adapter(self, job: ClaimedJob) -> Path | None:
        """The adapter bound when the job was accepted; the job fails if it is gone."""
        if not job.source_tuned_model:
            return None
        source_id = job.source_tuned_model.removeprefix("tunedModels/")
        operation_id, epoch = job.source_operation_id, job.source_served_epoch
        if operation_id is None:  # queued before sources were bound at create time
            operations = self.repo.list_operations(source_id)
            operation_id = operations[-1].id if operations else None
            epoch = operations[-1].served_epoch if operations else None
        bound = operation_id and self.repo.get_operation(source_id, operation_id)
        adapter = self.artifacts.fetch_served(source_id, bound.id, epoch) if bound else None
        if adapter is None:
            raise JobFailed(
                Code.FAILED_PRECONDITION,
                f"Tuning failed: the source tuned model {job.source_tuned_model} was deleted "
                "before this job started.",
            )
        return adapter

    def _finish(
        self,
        job: ClaimedJob,
        status: JobStatus,
        error: JobError | None,
        served_epoch: int | None = None,
    ) -> None:
        retry_transient(
            lambda: self.repo.finish_job(
                job.operation_id, self.worker_id, status, error, served_epoch
            )
        )
        self.artifacts.remove_checkpoint(job.operation_id)
        self.artifacts.discard_staging(job.tuned_model_id, job.operation_id)
        log.info("job %s ended %s", job.operation_id, status.value)

    def _clean_if_deleted(self, job: ClaimedJob) -> None:
        """A job whose model was deleted under it leaves nothing behind."""
        if self.repo.get_operation(job.tuned_model_id, job.operation_id) is None:
            self.artifacts.remove_operation(job.tuned_model_id, job.operation_id)

    def _base(self, name: str) -> LoadedBaseModel:
        if name not in self._bases:
            spec = next(e.target for e in self.catalog.list() if e.target.name == name)
            self._bases[name] = load_base_model(
                spec, self.settings.base_model_cache_dir, device=torch_device(self.settings.device)
            )
        return self._bases[name]


def diverged(loss: str, value: float, step: int, job: ClaimedJob) -> JobFailed:
    """The failure of a job whose (validation) loss stopped being a finite number."""
    return JobFailed(
        Code.INVALID_ARGUMENT,
        f"Tuning failed: the {loss} became {value} at step {step}; the learning rate "
        f"({job.hyperparameters.learning_rate}) is likely too high. Try a lower learningRate.",
    )


def adapter_is_finite(folder: Path) -> bool:
    """Whether every weight of a saved peft adapter is a finite number."""
    for file in folder.glob("*.safetensors"):
        if not all(torch.isfinite(t).all() for t in load_file(file).values()):
            return False
    return True
