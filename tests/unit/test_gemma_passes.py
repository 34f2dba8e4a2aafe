"""Gemma 3's own serving passes compute what transformers' decoder computes: the same
logits in float32 through padded prefills and decoding steps, with rows on different
adapters, and the same greedy tokens in bf16 on weights packed for oneDNN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tiny_model import tiny_gemma3
from tunesmith.serving.batch import Passes, TransformersPasses
from tunesmith.serving.gemma import GemmaPasses
from tunesmith.serving.lora import NO_ADAPTER, AdapterBank, AdapterWeights
from tunesmith.serving.packed import PackedLinear, can_pack

PROMPTS = [[2, 7], [2, 11, 12, 13, 14, 15, 16, 17, 18], [2, 30, 31, 32, 33]]
ADAPTED = ("q_proj", "v_proj", "o_proj", "gate_proj", "down_proj")


def random_adapter(model: nn.Module, key: str, seed: int, rank: int = 2) -> AdapterWeights:
    """A LoRA adapter on some of every layer's linear layers, big enough to change tokens."""
    generator = torch.Generator().manual_seed(seed)
    modules = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in ADAPTED:
            a = torch.randn(rank, module.in_features, generator=generator)
            b = torch.randn(module.out_features, rank, generator=generator) * 0.5
            modules[name] = (a, b)
    return AdapterWeights(key, rank, modules)


def serve(passes: Passes, bank: AdapterBank, slots: list[int], steps: int) -> list[torch.Tensor]:
    """Each pass's logits for PROMPTS on `slots`' adapters, greedy tokens fed back."""
    bank.mask = bank.row_mask(slots)
    try:
        logits, kv = passes.prefill(PROMPTS)
        seen = [logits]
        for _ in range(steps):
            logits = passes.step(kv, logits.argmax(dim=-1))
            seen.append(logits)
    finally:
        bank.mask = None
    return seen


def served(kind: type, dtype: torch.dtype, softcap: float | None) -> tuple[Passes, AdapterBank]:
    model = tiny_gemma3(softcap=softcap, vocab_size=64).to(dtype)
    bank = AdapterBank(model, capacity=2)
    adapters = [random_adapter(model, key, seed) for key, seed in (("one", 1), ("two", 2))]
    # as the scheduler does: the passes first, which may replace linear layers
    passes = GemmaPasses(model, bank) if kind is GemmaPasses else TransformersPasses(model)
    for adapter in adapters:
        bank.acquire(adapter.key, lambda a=adapter: a)
    return passes, bank


@pytest.mark.parametrize("softcap", [None, 30.0])
def test_gemma_passes_give_transformers_logits_with_rows_on_different_adapters(softcap):
    lean, lean_bank = served(GemmaPasses, torch.float32, softcap)
    reference, reference_bank = served(TransformersPasses, torch.float32, softcap)
    slots = [1, NO_ADAPTER, 2]

    mine = serve(lean, lean_bank, slots, steps=6)
    theirs = serve(reference, reference_bank, slots, steps=6)
    plain = serve(reference, reference_bank, [NO_ADAPTER] * 3, steps=6)

    for step_mine, step_theirs in zip(mine, theirs, strict=True):
        torch.testing.assert_close(step_mine, step_theirs, rtol=1e-4, atol=1e-5)
    assert not torch.equal(theirs[0][0], plain[0][0])  # the adapters change the logits


def test_gemma_passes_hold_each_decoder_weight_once_and_serve_a_model_again():
    model = tiny_gemma3(vocab_size=64)
    before = sum(p.numel() for p in model.parameters())
    first = GemmaPasses(model, AdapterBank(model, capacity=1))

    linears = [m for m in model.get_decoder().modules() if isinstance(m, nn.Linear)]
    assert linears and all(m.weight is None for m in linears)
    assert sum(p.numel() for p in model.parameters()) < before

    again = GemmaPasses(model, AdapterBank(model, capacity=1))  # a second engine on it
    assert again.layers[0].qkv.linear is first.layers[0].qkv.linear
    torch.testing.assert_close(again.prefill(PROMPTS)[0], first.prefill(PROMPTS)[0])


@pytest.mark.skipif(
    not can_pack(nn.Linear(2, 2, dtype=torch.bfloat16)), reason="no oneDNN bf16 kernels here"
)
def test_packed_bf16_gemma_passes_give_the_plain_models_greedy_tokens():
    lean, lean_bank = served(GemmaPasses, torch.bfloat16, 30.0)
    reference, reference_bank = served(TransformersPasses, torch.bfloat16, 30.0)

    for slots in ([NO_ADAPTER] * 3, [2, 1, NO_ADAPTER]):
        mine = serve(lean, lean_bank, slots, steps=8)
        theirs = serve(reference, reference_bank, slots, steps=8)
        assert [s.argmax(-1).tolist() for s in mine] == [s.argmax(-1).tolist() for s in theirs]
    assert isinstance(lean.model.get_output_embeddings(), PackedLinear)
