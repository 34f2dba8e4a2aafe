"""The output projection and the final logit soft-cap: the one place training, evaluation
and serving turn final hidden states into logits (no peft here: the API process imports
it)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def vocab_logits(
    causal_lm: torch.nn.Module,
    hidden: Tensor,
    project: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Float32 logits (rows, vocab) of 2-D hidden states (rows, hidden): the output
    projection (`project` where given: the same product computed another way), then the
    model's final logit soft-cap if it has one. The projection runs on a contiguous copy: a
    strided input sends a CPU matmul (and peft's layers) down a path that copies the whole
    262k-row weight."""
    logits = (project or causal_lm.get_output_embeddings())(hidden.contiguous()).float()
    cap = getattr(causal_lm.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits
