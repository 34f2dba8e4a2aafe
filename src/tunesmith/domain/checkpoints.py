"""Which epoch checkpoints a job keeps, and which one its model serves."""

from __future__ import annotations

from tunesmith.domain.resources import (
    CheckpointChoice,
    EpochCheckpoint,
    Evaluation,
    JobStatus,
    Operation,
)


def best_epoch(checkpoints: list[EpochCheckpoint], evaluations: list[Evaluation]) -> int | None:
    """The kept epoch with the lowest validation loss (ties: the earlier); None when no
    kept epoch was evaluated."""
    loss = {e.step: e.validation_loss for e in evaluations}
    rated = [(loss[c.step], c.epoch) for c in checkpoints if c.step in loss]
    return min(rated)[1] if rated else None


def epochs_to_drop(
    checkpoints: list[EpochCheckpoint],
    evaluations: list[Evaluation],
    keep: int,
    choice: CheckpointChoice,
) -> list[int]:
    """The epochs past the `keep` most recent, less the best one when the job serves the
    best (it may still be chosen at the end)."""
    recent = sorted(c.epoch for c in checkpoints)[-keep:] if keep > 0 else []
    kept = set(recent)
    if choice == CheckpointChoice.BEST_VALIDATION_LOSS:
        best = best_epoch(checkpoints, evaluations)
        if best is not None:
            kept.add(best)
    return sorted(c.epoch for c in checkpoints if c.epoch not in kept)


def served_epoch(
    checkpoints: list[EpochCheckpoint], evaluations: list[Evaluation], choice: CheckpointChoice
) -> int | None:
    """The epoch a finished job serves: the best by validation loss when asked for, else
    None (its final adapter, which is the last epoch's)."""
    if choice == CheckpointChoice.BEST_VALIDATION_LOSS:
        return best_epoch(checkpoints, evaluations)
    return None


def serving_epoch(operation: Operation, kept: list[EpochCheckpoint]) -> int | None:
    """The kept epoch whose adapter a finished operation's model serves: the chosen one, or
    the last epoch's (the same weights as the final adapter) when none was chosen."""
    if operation.served_epoch is not None:
        return operation.served_epoch
    if operation.status != JobStatus.SUCCEEDED:
        return None
    return next((c.epoch for c in kept if c.step == operation.total_steps), None)
