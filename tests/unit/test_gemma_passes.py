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
from tunesmith.serving.lora import NO_ADAPTER, AdapterBank, AdapterError, AdapterWeights
from tunesmith.serving.packed import PackedLinear, can_pack

PROMPTS = [[2, 7], [2, 11, 12, 13, 14, 15, 16, 17, 18], [2, 30, 31, 32, 33]]
ADAPTED = ("q_proj", "v_proj", "o_proj", "gate_proj", "down_proj")


def random_adapter(
    model: nn.Module, key: str, seed: int, rank: int = 2, names: tuple[str, ...] = ADAPTED
) -> AdapterWeights:
    """A LoRA adapter on every layer's linear layers `names`, big enough to change tokens."""
    generator = torch.Generator().manual_seed(seed)
    modules = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in names:
            a = torch.randn(rank, module.in_features, generator=generator)
            b = torch.randn(module.out_features, rank, generator=generator) * 0.5
            modules[name] = (a, b)
    return AdapterWeights(key, rank, modules)


def serve(passes: Passes, bank: AdapterBank, slots: list[int], steps: int) -> list[torch.Tensor]:
    """Each pass's logits for PROMPTS on `slots`' adapters, greedy tokens fed back."""
    with bank.rows(slots):
        logits, kv = passes.prefill(PROMPTS)
        seen = [logits]
        for _ in range(steps):
            logits = passes.step(kv, logits.argmax(dim=-1))
            seen.append(logits)
    return seen


def served(
    kind: type, dtype: torch.dtype, softcap: float | None, kv_heads: int = 1
) -> tuple[Passes, AdapterBank]:
    model = tiny_gemma3(softcap=softcap, vocab_size=64, kv_heads=kv_heads).to(dtype)
    bank = AdapterBank(model, capacity=2)
    adapters = [random_adapter(model, key, seed) for key, seed in (("one", 1), ("two", 2))]
    # adapters come after the passes, as in the scheduler: the passes may replace layers
    passes = GemmaPasses(model, bank) if kind is GemmaPasses else TransformersPasses(model)
    for adapter in adapters:
        bank.acquire(adapter.key, lambda a=adapter: a)
    return passes, bank


@pytest.mark.parametrize(("softcap", "kv_heads"), [(None, 1), (30.0, 1), (30.0, 2)])
def test_gemma_passes_give_transformers_logits_with_rows_on_different_adapters(softcap, kv_heads):
    lean, lean_bank = served(GemmaPasses, torch.float32, softcap, kv_heads)
    reference, reference_bank = served(TransformersPasses, torch.float32, softcap, kv_heads)
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


def joined_decoding(model: nn.Module, passes: Passes, bank: AdapterBank) -> list[torch.Tensor]:
    """Logits through what the scheduler does to a batch: a padded prefill on one adapter,
    steps, a second prompt on another adapter joined mid-decoding, rows reordered and
    dropped, an adapter evicted for a third of another rank on other layers, joined again."""
    adapters = [  # each on other layers, the third of another rank
        random_adapter(model, "q", 1, rank=2, names=("q_proj",)),
        random_adapter(model, "k", 2, rank=2, names=("k_proj", "up_proj")),
        random_adapter(model, "v", 3, rank=3, names=("v_proj", "gate_proj")),
    ]
    seen: list[torch.Tensor] = []

    def run(call, slots):
        with bank.rows(slots):
            out = call()
        seen.append(out[0] if isinstance(out, tuple) else out)
        return out

    q = bank.acquire("q", lambda: adapters[0])
    k = bank.acquire("k", lambda: adapters[1])
    logits, kv = run(
        lambda: passes.prefill([[2, 7, 8], [2, 11, 12, 13, 14, 15, 16]]), [q, NO_ADAPTER]
    )
    for _ in range(3):
        logits = run(lambda t=logits.argmax(-1): passes.step(kv, t), [q, NO_ADAPTER])
    other, joining = run(lambda: passes.prefill([[2, 30, 31, 32, 33, 34, 35, 36, 37]]), [k])
    kv.join(joining)
    tokens = torch.cat([logits.argmax(-1), other.argmax(-1)])
    for _ in range(3):
        logits = run(lambda t=tokens: passes.step(kv, t), [q, NO_ADAPTER, k])
        tokens = logits.argmax(-1)
    kv.select([2, 0])
    kv.select([0])
    bank.release(q)
    v = bank.acquire("v", lambda: adapters[2])  # evicts q: the stacks are rebuilt
    last, joining = run(lambda: passes.prefill([[2, 5, 6]]), [v])
    kv.join(joining)
    tokens = torch.cat([tokens[[2]], last.argmax(-1)])
    for _ in range(3):
        logits = run(lambda t=tokens: passes.step(kv, t), [k, v])
        tokens = logits.argmax(-1)
    return seen


def test_gemma_passes_through_joins_selections_and_an_eviction_give_transformers_logits():
    def fresh(kind: type) -> tuple[nn.Module, Passes, AdapterBank]:
        model = tiny_gemma3(vocab_size=64)
        bank = AdapterBank(model, capacity=2)
        passes = GemmaPasses(model, bank) if kind is GemmaPasses else TransformersPasses(model)
        return model, passes, bank

    mine = joined_decoding(*fresh(GemmaPasses))
    theirs = joined_decoding(*fresh(TransformersPasses))

    assert len(mine) == len(theirs) == 12
    for step_mine, step_theirs in zip(mine, theirs, strict=True):
        torch.testing.assert_close(step_mine, step_theirs, rtol=1e-4, atol=1e-5)


def test_a_step_with_prompts_prefilled_in_it_gives_the_separate_passes_logits():
    def run(mixed: bool) -> list[torch.Tensor]:
        model = tiny_gemma3(vocab_size=64)
        bank = AdapterBank(model, capacity=2)
        passes = GemmaPasses(model, bank)
        one = bank.acquire("one", lambda: random_adapter(model, "one", 1))
        two = bank.acquire("two", lambda: random_adapter(model, "two", 2, rank=3))
        seen = []
        with bank.rows([one, NO_ADAPTER]):
            logits, kv = passes.prefill([[2, 7, 8], [2, 11, 12, 13, 14, 15, 16]])
            logits = passes.step(kv, logits.argmax(-1))
        tokens = logits.argmax(-1)
        prompts = [[2, 30, 31, 32, 33, 34, 35], [2, 40]]  # the first beyond the window
        if mixed:
            per_token = [one, NO_ADAPTER] + [two] * 7 + [NO_ADAPTER] * 2
            with bank.rows(per_token, flat=True):
                stepped, first, joining = passes.step_and_prefill(kv, tokens, prompts)
        else:
            with bank.rows([one, NO_ADAPTER]):
                stepped = passes.step(kv, tokens)
            with bank.rows([two, NO_ADAPTER]):
                first, joining = passes.prefill(prompts)
        seen += [stepped, first]
        kv.join(joining)
        tokens = torch.cat([stepped.argmax(-1), first.argmax(-1)])
        with bank.rows([one, NO_ADAPTER, two, NO_ADAPTER]):
            for _ in range(4):
                logits = passes.step(kv, tokens)
                seen.append(logits)
                tokens = logits.argmax(-1)
        return seen

    for mine, theirs in zip(run(mixed=True), run(mixed=False), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)


def test_an_adapter_on_the_output_projection_is_refused():
    model = tiny_gemma3(vocab_size=64)
    bank = AdapterBank(model, capacity=2)

    with pytest.raises(AdapterError, match="output projection"):
        bank.acquire("x", lambda: random_adapter(model, "x", 1, names=("q_proj", "lm_head")))
