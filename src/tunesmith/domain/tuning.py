"""Tuning rules: step arithmetic and hyperparameter defaults (reference §2.2, §3.3)."""

from __future__ import annotations

import math
import random

from tunesmith.domain.resources import TuningExample

DEFAULT_EPOCH_COUNT = 5
# The proto says the defaults depend on the example count; the threshold is ours.
LARGE_DATASET = 500
SMALL_BATCH, LARGE_BATCH = 4, 16
SMALL_LEARNING_RATE, LARGE_LEARNING_RATE = 0.001, 0.0002


def total_steps(examples: int, epochs: int, batch_size: int) -> int:
    """Batches run over the concatenated epoch stream: ceil(N * E / B)."""
    return math.ceil(examples * epochs / batch_size)


def epoch_after_step(step: int, batch_size: int, examples: int) -> int:
    """Complete passes over the data after `step` (1-based) steps: floor(step * B / N)."""
    return step * batch_size // examples


def default_batch_size(examples: int) -> int:
    return SMALL_BATCH if examples < LARGE_DATASET else LARGE_BATCH


def default_learning_rate(examples: int) -> float:
    return SMALL_LEARNING_RATE if examples < LARGE_DATASET else LARGE_LEARNING_RATE


def batch_bounds(step: int, batch_size: int, stream_length: int) -> tuple[int, int]:
    """[start, end) of step's batch in the epoch stream; the last batch may be short."""
    start = (step - 1) * batch_size
    return start, min(start + batch_size, stream_length)


# Validation examples a job evaluates on: each evaluation decodes every one of them greedily.
MAX_VALIDATION_EXAMPLES = 1000


def hold_out(
    examples: list[TuningExample], share: float, seed: int
) -> tuple[list[TuningExample], list[TuningExample]]:
    """(training, validation): `share` of the examples (rounded, at least 1, leaving at
    least 1 to train on, at most MAX_VALIDATION_EXAMPLES) held out for validation, chosen
    by `seed`; both keep the order the examples were given in."""
    count = min(max(1, round(len(examples) * share)), len(examples) - 1, MAX_VALIDATION_EXAMPLES)
    held = set(random.Random(seed).sample(range(len(examples)), count))
    training = [e for i, e in enumerate(examples) if i not in held]
    return training, [e for i, e in enumerate(examples) if i in held]
