"""Prompts of different lengths prefilled together, left-padded, then decoded together, give
each prompt's logits alone: on a tiny Gemma 3 whose sliding window (4) is shorter than the
longer prompt, with a tied output projection, through transformers' decoder and through
Gemma's own passes."""

from __future__ import annotations

import pytest
import torch

from tiny_model import tiny_gemma3
from tunesmith.serving.batch import Passes, TransformersPasses
from tunesmith.serving.gemma import GemmaPasses
from tunesmith.serving.lora import AdapterBank

PROMPTS = [[2, 7], [2, 11, 12, 13, 14, 15, 16, 17, 18], [2, 30, 31, 32, 33]]


def transformers_passes(model) -> Passes:
    return TransformersPasses(model)


def gemma_passes(model) -> Passes:
    return GemmaPasses(model, AdapterBank(model, capacity=1))


def decode(passes: Passes, prompts: list[list[int]], steps: int) -> list[torch.Tensor]:
    """Each step's logits (rows, vocab), feeding every row its greedy token."""
    logits, kv = passes.prefill(prompts)
    seen = [logits]
    for _ in range(steps):
        logits = passes.step(kv, logits.argmax(dim=-1))
        seen.append(logits)
    return seen


@pytest.mark.parametrize("make", [transformers_passes, gemma_passes])
def test_padded_prefill_and_decoding_give_each_prompts_logits_alone(make):
    passes = make(tiny_gemma3(softcap=None, vocab_size=64))

    together = decode(passes, PROMPTS, steps=6)

    assert not any(bool(step.isnan().any()) for step in together)
    for row, prompt in enumerate(PROMPTS):
        alone = decode(passes, [prompt], steps=6)
        for mine, theirs in zip(together, alone, strict=True):
            torch.testing.assert_close(mine[row], theirs[0], rtol=1e-4, atol=1e-5)
