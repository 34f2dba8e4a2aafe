"""Removing a tuned model's files: its adapters and its tuning jobs' checkpoints (which hold
the adapter and optimizer state, so they are as private as the model)."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path

from tunesmith.config import Settings
from tunesmith.store.repository import Repository


def adapter_dir(settings: Settings, model_id: str, operation_id: str = "") -> Path:
    from tunesmith.jobs.worker import adapter_dir  # the worker calls in here: no cycle

    return adapter_dir(settings, model_id, operation_id)


def checkpoint_files(settings: Settings, operation_id: str) -> list[Path]:
    """A job's checkpoint and the staging file a checkpoint is written to first."""
    checkpoint = settings.checkpoints_dir / f"{operation_id}.pt"
    return [checkpoint, checkpoint.with_suffix(".tmp")]


def remove_model_files(settings: Settings, model_id: str, operation_ids: Iterable[str]) -> None:
    """Every file of a deleted tuned model whose operations were `operation_ids`."""
    shutil.rmtree(adapter_dir(settings, model_id), ignore_errors=True)
    for operation_id in operation_ids:
        for path in checkpoint_files(settings, operation_id):
            path.unlink(missing_ok=True)


def remove_if_deleted(
    settings: Settings, repo: Repository, model_id: str, operation_id: str
) -> None:
    """After a worker lost a job's lease: if the job's model was deleted meanwhile, the files
    the job wrote after the delete removed the model's (a checkpoint, a finished adapter)
    go too. A job another worker took over keeps them."""
    if repo.get_operation(model_id, operation_id) is not None:
        return
    final = adapter_dir(settings, model_id, operation_id)
    for folder in (final, final.with_name(f".{final.name}.partial")):
        shutil.rmtree(folder, ignore_errors=True)
    with suppress(OSError):  # a new model of the same id may have adapters there
        final.parent.rmdir()
    for path in checkpoint_files(settings, operation_id):
        path.unlink(missing_ok=True)
