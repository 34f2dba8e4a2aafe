"""Where adapters and checkpoints live: the one module that knows the artifact layout.

    {data_dir}/adapters/{tuned_model_id}/{operation_id}/   a tuning operation's adapter
    {data_dir}/checkpoints/{operation_id}.pt               a running job's resumable state
                                        (.tmp while it is written)

A tuned model's adapters sit in one folder per operation, so a reused tuned model id never
finds (or is served from a cache of) an older model's adapter. Folders are written under a
hidden `.partial` name and renamed into place, so a reader sees a whole adapter or none.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from tunesmith.config import Settings


class Artifacts:
    def __init__(self, data_dir: Path) -> None:
        self.adapters_root = data_dir / "adapters"
        self.checkpoints_root = data_dir / "checkpoints"

    @classmethod
    def of(cls, settings: Settings) -> Artifacts:
        return cls(settings.data_dir)

    def model_dir(self, tuned_model_id: str) -> Path:
        return self.adapters_root / tuned_model_id

    def adapter(self, tuned_model_id: str, operation_id: str) -> Path:
        return self.model_dir(tuned_model_id) / operation_id

    def staging(self, tuned_model_id: str, operation_id: str) -> Path:
        """Where an adapter is written before `publish` renames it into place."""
        return self.model_dir(tuned_model_id) / f".{operation_id}.partial"

    def checkpoint(self, operation_id: str) -> Path:
        return self.checkpoints_root / f"{operation_id}.pt"

    def remove_checkpoint(self, operation_id: str) -> None:
        """A job's checkpoint and a half-written one: they hold the adapter and optimizer
        state, so they are as private as the model."""
        checkpoint = self.checkpoint(operation_id)
        for path in (checkpoint, checkpoint.with_suffix(".tmp")):
            path.unlink(missing_ok=True)

    def publish(self, tuned_model_id: str, operation_id: str) -> bool:
        """Moves a staged adapter into place; False if its model's folder was deleted
        meanwhile (the model is gone, and nothing is left behind)."""
        staging = self.staging(tuned_model_id, operation_id)
        final = self.adapter(tuned_model_id, operation_id)
        shutil.rmtree(final, ignore_errors=True)
        try:
            os.replace(staging, final)
        except FileNotFoundError:
            shutil.rmtree(staging, ignore_errors=True)
            return False
        return True

    def discard_staging(self, tuned_model_id: str, operation_id: str) -> None:
        shutil.rmtree(self.staging(tuned_model_id, operation_id), ignore_errors=True)

    def remove_operation(self, tuned_model_id: str, operation_id: str) -> None:
        """An operation's adapter, staged adapter and checkpoint; its model's folder too
        once nothing else is in it."""
        shutil.rmtree(self.adapter(tuned_model_id, operation_id), ignore_errors=True)
        self.discard_staging(tuned_model_id, operation_id)
        self.remove_checkpoint(operation_id)
        with contextlib.suppress(OSError):  # not empty, or already gone
            self.model_dir(tuned_model_id).rmdir()

    def remove_model(self, tuned_model_id: str, operation_ids: Iterable[str]) -> None:
        """Every artifact of a deleted tuned model: its adapters and its jobs' checkpoints."""
        shutil.rmtree(self.model_dir(tuned_model_id), ignore_errors=True)
        for operation_id in operation_ids:
            self.remove_checkpoint(operation_id)
