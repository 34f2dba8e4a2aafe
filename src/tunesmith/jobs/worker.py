"""A worker process: claims queued tuning jobs from the database and runs them.

The database is the queue. A claimed job carries a lease that the worker renews on every
step and from a heartbeat thread; a worker that dies stops renewing, and after the lease
expires another worker claims the job and resumes it from its last checkpoint.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import uuid
from pathlib import Path

from tunesmith.config import Settings
from tunesmith.domain.errors import Code
from tunesmith.domain.resources import (
    CANCELLED_ERROR,
    ClaimedJob,
    JobError,
    JobStatus,
    TuningSnapshot,
)
from tunesmith.jobs.cleanup import remove_if_deleted
from tunesmith.observability.logs import log_fields
from tunesmith.store.repository import LeaseLost, Repository, utcnow
from tunesmith.training.base_models import Catalog, LoadedBaseModel, load_base_model
from tunesmith.training.lora import Checkpoint, StepResult, train_lora

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5  # a job that kills its worker this often is failed, not retried


def adapter_dir(settings: Settings, tuned_model_id: str, operation_id: str = "") -> Path:
    """A tuned model's adapters, one folder per tuning operation: a reused tuned model id
    never finds (or is served from a cache of) an older model's adapter."""
    folder = settings.adapters_dir / tuned_model_id
    return folder / operation_id if operation_id else folder


def trained_adapter(settings: Settings, repo: Repository, tuned_model_id: str) -> Path | None:
    """The adapter of a tuned model's last tuning operation."""
    operations = repo.list_operations(tuned_model_id)
    return adapter_dir(settings, tuned_model_id, operations[-1].id) if operations else None


def operation_name(job: ClaimedJob) -> str:
    return f"tunedModels/{job.tuned_model_id}/operations/{job.operation_id}"


class Cancelled(Exception):
    pass


class Heartbeat(threading.Thread):
    """Renews a job's lease while a step or a model load takes longer than the lease."""

    def __init__(self, repo: Repository, job: ClaimedJob, worker_id: str, lease: float) -> None:
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
            except Exception:  # a busy database must not kill the heartbeat
                log.exception("lease renewal failed")


class Worker:
    def __init__(self, settings: Settings, repo: Repository, catalog: Catalog) -> None:
        self.settings, self.repo, self.catalog = settings, repo, catalog
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._bases: dict[str, LoadedBaseModel] = {}

    def run_forever(self, stop: threading.Event) -> None:
        log.info("worker %s waiting for jobs", self.worker_id)
        while not stop.is_set():
            if not self.run_once():
                stop.wait(self.settings.worker_poll_seconds)

    def run_once(self) -> bool:
        """Claims and runs one job; False when the queue is empty."""
        job = self.repo.claim_job(self.worker_id, self.settings.job_lease_seconds)
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
            remove_if_deleted(self.settings, self.repo, job.tuned_model_id, job.operation_id)
        except BaseException:
            # Shutting down mid-job: hand the job back at once instead of at lease expiry.
            self.repo.release_lease(job.operation_id, self.worker_id)
            raise
        finally:
            heartbeat.stopped.set()

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
        except LeaseLost:
            raise
        except Exception as error:
            log.exception("job %s failed", job.operation_id)
            message = f"Tuning failed: {type(error).__name__}: {error}"
            return self._finish(job, JobStatus.FAILED, JobError(Code.INTERNAL.rpc_code, message))
        self._finish(job, JobStatus.SUCCEEDED, None)

    def _train(self, job: ClaimedJob, heartbeat: Heartbeat) -> None:
        entry = self.catalog.get(job.base_model)
        if entry is None:
            raise ValueError(f"base model {job.base_model} is no longer in the catalog")
        base = self._base(entry.target.name)
        lease = self.settings.job_lease_seconds

        def on_step(result: StepResult) -> None:
            snapshot = TuningSnapshot(result.step, result.epoch, result.mean_loss, utcnow())
            cancel = self.repo.record_step(
                job.operation_id, self.worker_id, snapshot, lease, tokens=result.tokens
            )
            if cancel or heartbeat.cancel_requested:
                raise Cancelled
            if heartbeat.lost:
                raise LeaseLost(job.operation_id)

        def on_resume(step: int, tokens: int) -> None:
            self.repo.rewind(job.operation_id, self.worker_id, step, trained_tokens=tokens)

        source = job.source_tuned_model
        init = self.trained_adapter(source.removeprefix("tunedModels/")) if source else None
        final = adapter_dir(self.settings, job.tuned_model_id, job.operation_id)
        staging = final.with_name(f".{final.name}.partial")
        final.parent.mkdir(parents=True, exist_ok=True)
        checkpoint = Checkpoint(self.settings.checkpoints_dir / f"{job.operation_id}.pt")
        train_lora(
            base,
            job.examples,
            job.hyperparameters,
            job.seed,
            staging,
            checkpoint,
            on_step=on_step,
            on_resume=on_resume,
            init_adapter=init,
            checkpoint_interval=self.settings.checkpoint_interval_seconds,
        )
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)

    def trained_adapter(self, tuned_model_id: str) -> Path | None:
        return trained_adapter(self.settings, self.repo, tuned_model_id)

    def _finish(self, job: ClaimedJob, status: JobStatus, error: JobError | None) -> None:
        self.repo.finish_job(job.operation_id, self.worker_id, status, error)
        (self.settings.checkpoints_dir / f"{job.operation_id}.pt").unlink(missing_ok=True)
        log.info("job %s ended %s", job.operation_id, status.value)

    def _base(self, name: str) -> LoadedBaseModel:
        if name not in self._bases:
            spec = next(e.target for e in self.catalog.list() if e.target.name == name)
            self._bases[name] = load_base_model(spec, self.settings.base_model_cache_dir)
        return self._bases[name]
