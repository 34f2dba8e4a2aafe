from __future__ import annotations

import math

import pytest
import torch

from tunesmith.serving.sampling import (
    BLOCK,
    SamplingParams,
    first_largest,
    largest,
    next_tokens,
    top_k_filter,
    top_p_filter,
)

INF = float("-inf")


def log_probs(*rows: list[float]) -> torch.Tensor:
    return torch.tensor([[math.log(p) for p in row] for row in rows])


def kept(logits: torch.Tensor) -> list[list[int]]:
    return [torch.isfinite(row).nonzero().flatten().tolist() for row in logits]


def params(**overrides) -> SamplingParams:
    values = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_output_tokens": 1}
    return SamplingParams(**{**values, **overrides})


def test_top_k_keeps_the_k_largest_of_each_row():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [5.0, -1.0, 0.0, 4.0]])

    filtered = top_k_filter(logits, 2)

    assert filtered.tolist() == [[INF, 3.0, 2.0, INF], [5.0, INF, INF, 4.0]]


def test_top_k_zero_or_beyond_vocab_is_off():
    logits = torch.tensor([[1.0, 3.0, 2.0]])

    assert torch.equal(top_k_filter(logits, 0), logits)
    assert torch.equal(top_k_filter(logits, 5), logits)


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = log_probs([0.05, 0.5, 0.15, 0.3], [0.3, 0.15, 0.05, 0.5])

    assert kept(top_p_filter(logits, 0.75)) == [[1, 3], [0, 3]]
    assert kept(top_p_filter(logits, 0.9)) == [[1, 2, 3], [0, 1, 3]]


def test_top_p_always_keeps_the_most_likely_token():
    logits = log_probs([0.1, 0.6, 0.3])

    assert kept(top_p_filter(logits, 0.0)) == [[1]]


def test_top_p_one_is_off():
    logits = log_probs([0.1, 0.6, 0.3])

    assert torch.equal(top_p_filter(logits, 1.0), logits)


def test_zero_temperature_is_argmax():
    logits = torch.tensor([[0.1, 2.0, 1.0], [3.0, 0.0, 1.0]])

    tokens = next_tokens(logits, params(temperature=0.0), torch.Generator())

    assert tokens.tolist() == [1, 0]


def test_samples_only_tokens_that_survive_the_filters():
    logits = log_probs([0.05, 0.5, 0.15, 0.3]).expand(500, -1)
    generator = torch.Generator().manual_seed(0)

    only_top_k = next_tokens(logits, params(top_k=2), generator)
    only_top_p = next_tokens(logits, params(top_p=0.75), generator)

    assert set(only_top_k.tolist()) == {1, 3}
    assert set(only_top_p.tolist()) == {1, 3}


def test_same_seed_same_samples():
    logits = torch.zeros(8, 100)

    first = next_tokens(logits, params(), torch.Generator().manual_seed(7))
    second = next_tokens(logits, params(), torch.Generator().manual_seed(7))

    assert torch.equal(first, second)


def test_top_p_on_a_wide_vocabulary_matches_a_full_sort():
    logits = torch.randn(4, 5000, generator=torch.Generator().manual_seed(0)) * 0.5

    for p in (0.3, 0.9, 0.999):
        assert torch.equal(top_p_filter(logits, p), top_p_by_full_sort(logits, p))


def top_p_by_full_sort(logits: torch.Tensor, p: float) -> torch.Tensor:
    result = torch.full_like(logits, INF)
    for row, values in enumerate(logits):
        probs = torch.softmax(values, dim=-1)
        mass = 0.0
        for token in torch.argsort(values, descending=True).tolist():
            result[row, token] = values[token]
            mass += probs[token].item()
            if mass >= p:
                break
    return result


def screened_logits(vocab: int) -> torch.Tensor:
    """Rows that make a block screen work: bf16-rounded values (many ties), a row whose
    largest values crowd into one block, a row mostly -inf, the maximum in the tail."""
    torch.manual_seed(0)
    logits = (torch.randn(6, vocab) * 3).bfloat16().float()
    crowd = min(5 * BLOCK, vocab - 60)
    logits[1, crowd : crowd + 60] = 50.0 + torch.arange(60.0)  # one block wins
    logits[2] = float("-inf")
    logits[2, [3, vocab // 2, vocab - 1]] = torch.tensor([1.0, 2.0, 1.0])
    logits[3, -1] = 99.0  # in the tail when vocab is not a whole number of blocks
    logits[4, 7] = logits[4, vocab - 3] = 80.0  # equal maxima: argmax names the first
    return logits


@pytest.mark.parametrize("vocab", [64 * BLOCK, 64 * BLOCK + 37, 3000])
@pytest.mark.parametrize("k", [1, 5, 40, 80])
def test_largest_gives_topks_values_and_their_ids(vocab, k):
    logits = screened_logits(vocab)

    values, ids = largest(logits, k)

    assert torch.equal(values, torch.topk(logits, k).values)
    assert torch.equal(logits.gather(-1, ids), values)
    assert all(len(set(row)) == k for row in ids.tolist())


@pytest.mark.parametrize("vocab", [64 * BLOCK, 64 * BLOCK + 37, 3000, BLOCK - 1])
def test_first_largest_is_argmax(vocab):
    logits = screened_logits(vocab)
    strided = torch.cat([logits, logits], dim=1)[:, ::2]  # not contiguous

    assert torch.equal(first_largest(logits), logits.argmax(dim=-1))
    assert torch.equal(first_largest(strided), strided.argmax(dim=-1))


def test_first_largest_counts_nan_largest_as_argmax_does():
    logits = screened_logits(64 * BLOCK)
    logits[5, 900] = float("nan")

    assert torch.equal(first_largest(logits), logits.argmax(dim=-1))
