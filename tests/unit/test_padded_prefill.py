"""Prompts of different lengths prefilled together, left-padded, then decoded together, give
each prompt's logits alone: on a tiny Gemma 3 whose sliding window (4) is shorter than the
longer prompt, with a tied output projection."""

from __future__ import annotations

import torch

from tiny_model import tiny_gemma3
from tunesmith.serving.batch import prefill

PROMPTS = [[2, 7], [2, 11, 12, 13, 14, 15, 16, 17, 18], [2, 30, 31, 32, 33]]


def decode(model, prompts: list[list[int]], steps: int) -> list[torch.Tensor]:
    """Each step's logits (rows, vocab), feeding every row its greedy token."""
    logits, kv = prefill(model, prompts)
    seen = [logits]
    for _ in range(steps):
        logits = kv.step(model, logits.argmax(dim=-1))
        seen.append(logits)
    return seen


def test_padded_prefill_and_decoding_give_each_prompts_logits_alone():
    model = tiny_gemma3(softcap=None, vocab_size=64)

    together = decode(model, PROMPTS, steps=6)

    assert not any(bool(step.isnan().any()) for step in together)
    for row, prompt in enumerate(PROMPTS):
        alone = decode(model, [prompt], steps=6)
        for mine, theirs in zip(together, alone, strict=True):
            torch.testing.assert_close(mine[row], theirs[0], rtol=1e-4, atol=1e-5)
