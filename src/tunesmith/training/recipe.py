"""The training recipe: everything about how a job trains that the user does not set.

The user sets epochs, batch size and learning rate (the wire's hyperparameters); the recipe
sets the adapter's shape and how the learning rate and the data are used around them. The
default was chosen by bench/recipe_sweep.py; docs/QUALITY.md has the measurements.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Recipe:
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    dropout: float = 0.0
    init: str = "kaiming"  # the A matrices' initialisation (B starts at 0): kaiming or gaussian
    weight_decay: float = 0.0
    warmup: float = 0.0  # share of the steps over which the rate rises linearly from 0
    decay: str = "constant"  # after warm-up: "constant", "linear" or "cosine" down to 0
    neftune_alpha: float = 0.0  # NEFTune: uniform noise on the input embeddings in training
    average_last: float = 0.0  # the adapter saved is the mean of this share of the last steps
    prompt_loss_weight: float = 0.0  # the prompt tokens' loss joins the answer's at this weight

    def learning_rate_scale(self, step: int, steps: int) -> float:
        """The factor on the user's learning rate for `step` (1-based) of `steps`."""
        warmup_steps = math.ceil(self.warmup * steps)
        if step <= warmup_steps:
            return step / (warmup_steps + 1)
        if self.decay == "constant":
            return 1.0
        progress = (step - warmup_steps) / (steps - warmup_steps + 1)
        if self.decay == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))


DEFAULT_RECIPE = Recipe()


def step_seed(seed: int, step: int) -> int:
    """The random state of one step (dropout, embedding noise), so a job resumed from a
    checkpoint draws exactly what the uninterrupted job would have."""
    return (seed * 1_000_003 + step) % 2**63


def embedding_noise(embedded: torch.Tensor, alpha: float, length: int) -> torch.Tensor:
    """NEFTune (Jain et al., 2023): the embedded input plus uniform noise of magnitude
    alpha / sqrt(length x width), for a batch whose longest example has `length` tokens
    (what padding pads to, whether or not the batch is padded). alpha 0: no noise. Only
    training passes an alpha."""
    if alpha <= 0:
        return embedded
    magnitude = alpha / math.sqrt(length * embedded.shape[-1])
    return embedded + torch.empty_like(embedded).uniform_(-magnitude, magnitude)


class WeightAverage:
    """The mean of the trainable weights after each of a job's last steps (stochastic
    weight averaging), kept in the checkpoint so a resumed job averages the same steps."""

    def __init__(self, params: list[torch.Tensor], share: float, steps: int) -> None:
        self.params = params
        self.first_step = steps - math.ceil(share * steps) + 1 if share > 0 else steps + 1
        self.count = 0
        self.sums: list[torch.Tensor] = []

    @torch.no_grad()
    def add(self, step: int) -> None:
        if step < self.first_step:
            return
        if not self.sums:
            self.sums = [p.detach().clone() for p in self.params]
        else:
            for total, p in zip(self.sums, self.params, strict=True):
                total.add_(p)
        self.count += 1

    @torch.no_grad()
    def apply(self) -> None:
        """Puts the mean into the weights (before the adapter is saved)."""
        for total, p in zip(self.sums, self.params, strict=True):
            p.copy_(total / self.count)

    def state_dict(self) -> dict:
        return {"count": self.count, "sums": self.sums}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.sums = int(state["count"]), list(state["sums"])
