"""Prompts of different lengths prefilled together, left-padded, then decoded together, give
each prompt's logits alone: on a tiny Gemma 3 whose sliding window (4) is shorter than the
longer prompt, with a tied output projection."""

from __future__ import annotations

import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from tunesmith.serving.batch import prefill

PROMPTS = [[2, 7], [2, 11, 12, 13, 14, 15, 16, 17, 18], [2, 30, 31, 32, 33]]


def tiny_gemma() -> Gemma3ForCausalLM:
    config = Gemma3TextConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=4,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return Gemma3ForCausalLM(config).eval()


def decode(model, prompts: list[list[int]], steps: int) -> list[torch.Tensor]:
    """Each step's logits (rows, vocab), feeding every row its greedy token."""
    logits, kv = prefill(model, prompts)
    seen = [logits]
    for _ in range(steps):
        logits = kv.step(model, logits.argmax(dim=-1))
        seen.append(logits)
    return seen


def test_padded_prefill_and_decoding_give_each_prompts_logits_alone():
    model = tiny_gemma()

    together = decode(model, PROMPTS, steps=6)

    assert not any(bool(step.isnan().any()) for step in together)
    for row, prompt in enumerate(PROMPTS):
        alone = decode(model, [prompt], steps=6)
        for mine, theirs in zip(together, alone, strict=True):
            torch.testing.assert_close(mine[row], theirs[0], rtol=1e-4, atol=1e-5)
