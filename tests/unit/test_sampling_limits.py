"""Sampling at the edges a request can reach: top-k past the vocabulary, temperatures so
small that logits / temperature overflows, and logits that are not finite."""

from __future__ import annotations

import pytest
import torch

from tunesmith.serving.sampling import SamplingParams, next_tokens, top_k_filter


def params(**overrides) -> SamplingParams:
    values = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_output_tokens": 1}
    return SamplingParams(**{**values, **overrides})


def draw(logits: torch.Tensor, **overrides) -> list[int]:
    generator = torch.Generator().manual_seed(0)
    return next_tokens(logits, params(**overrides), generator).tolist()


@pytest.mark.parametrize("k", [3, 4, 2**31 - 1])
def test_top_k_at_or_past_the_vocabulary_keeps_every_token(k):
    logits = torch.tensor([[1.0, 3.0, 2.0]])
    assert torch.equal(top_k_filter(logits, k), logits)
    tokens = draw(torch.zeros(600, 3), top_k=k)
    assert set(tokens) == {0, 1, 2}


@pytest.mark.parametrize("top_p", [1.0, 0.5])
@pytest.mark.parametrize("temperature", [1e-20, 1e-30, 1e-45, 1e-300, 5e-324])
def test_a_tiny_temperature_is_greedy_not_a_crash(temperature, top_p):
    logits = torch.tensor([[0.1, 30.0, 29.0, -5.0], [50.0, 0.0, 49.9, 1.0]])
    assert draw(logits, temperature=temperature, top_p=top_p) == [1, 0]


def test_candidates_past_the_vocabulary_each_get_a_token():
    logits = torch.tensor([[0.0, 1.0]]).expand(8, -1)
    tokens = draw(logits, top_k=1000, candidate_count=8)
    assert len(tokens) == 8 and set(tokens) <= {0, 1}


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_non_finite_logits_never_crash(temperature):
    nan, inf = float("nan"), float("inf")
    logits = torch.tensor(
        [
            [nan, 1.0, 2.0, nan],  # NaN is never drawn
            [-inf, -inf, 3.0, -inf],  # one finite logit: that one
            [nan, nan, nan, nan],  # nothing finite: any token, no error
            [inf, 0.0, 1.0, 2.0],  # +inf is the most likely
        ]
    )
    tokens = draw(logits, temperature=temperature, top_k=2, top_p=0.9)
    assert tokens[0] in (1, 2) and tokens[1] == 2 and 0 <= tokens[2] < 4 and tokens[3] == 0
