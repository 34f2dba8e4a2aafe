"""Drawing every row of a batch at once gives what each request's rows give alone."""

from __future__ import annotations

import pytest
import torch

from tunesmith.serving.batch_sampling import RowGroup, draw_rows
from tunesmith.serving.sampling import SamplingParams, next_tokens

KINDS = [
    SamplingParams(0.0, 1.0, 0, 8),  # greedy
    SamplingParams(1.0, 1.0, 40, 8, seed=1),  # top-k
    SamplingParams(0.7, 0.8, 64, 8, seed=2),  # top-k and top-p
    SamplingParams(1.3, 0.9, 0, 8, seed=3),  # top-p alone: the whole vocabulary
    SamplingParams(1.0, 1.0, 9000, 8, seed=5),  # top-k beyond the vocabulary: off
]
COUNTS = [2, 2, 2, 2, 1]


def generator(seed: int | None) -> torch.Generator:
    made = torch.Generator()
    made.manual_seed(seed or 0)
    return made


def groups() -> list[RowGroup]:
    made, start = [], 0
    for params, count in zip(KINDS, COUNTS, strict=True):
        made.append(RowGroup(start, count, params, generator(params.seed)))
        start += count
    return made


@pytest.mark.parametrize("vocab", [5000, 65536])  # torch.topk's path, then the block search
def test_batch_draws_match_each_request_drawn_alone(vocab):
    torch.manual_seed(0)
    logits = torch.randn(sum(COUNTS), vocab) * 3
    batch, alone = groups(), groups()

    for _ in range(20):
        together = draw_rows(logits, batch)
        separately = [next_tokens(logits[g.rows], g.params, g.generator).tolist() for g in alone]
        assert together == [token for tokens in separately for token in tokens]
        logits = torch.roll(logits, 7, dims=-1)


def test_sampled_rows_stay_within_their_top_k():
    logits = torch.arange(1000.0).repeat(3, 1)
    params = SamplingParams(5.0, 1.0, 3, 8, seed=1)

    drawn = {
        t for _ in range(30) for t in draw_rows(logits, [RowGroup(0, 3, params, generator(1))])
    }

    assert drawn <= {997, 998, 999}


def test_top_k_ties_are_all_kept_as_next_tokens_keeps_them():
    """Ties at the top-k boundary all stay candidates (in the window or beyond it); which
    of equal logits a draw names may differ from next_tokens, never the distribution."""
    logits = torch.randn(2, 5000)
    logits[0, 100:140] = 10.0  # 40 ties, inside the window of top-k 5
    logits[1, 200:400] = 10.0  # 200 ties, beyond it
    params = SamplingParams(1.0, 1.0, 5, 8, seed=1)
    groups = [RowGroup(0, 1, params, generator(1)), RowGroup(1, 1, params, generator(2))]

    drawn = [draw_rows(logits, groups) for _ in range(200)]

    assert {first for first, _ in drawn} <= set(range(100, 140))
    assert len({first for first, _ in drawn}) > 30
    assert {second for _, second in drawn} <= set(range(200, 400))
    assert len({second for _, second in drawn}) > 40


def test_a_rows_draws_do_not_depend_on_the_other_rows_in_its_batch():
    """bf16 logits have many equal values near the top; a seed's tokens stay the same
    whoever shares the batch (here a row asking for a wider top-k)."""
    torch.manual_seed(0)
    logits = (torch.randn(2, 65536) * 3).bfloat16().float()
    mine = SamplingParams(1.0, 0.9, 40, 8, seed=7)
    wider = SamplingParams(1.0, 1.0, 200, 8, seed=8)

    for seed in range(40):
        alone = draw_rows(logits[:1], [RowGroup(0, 1, mine, generator(seed))])
        shared = draw_rows(
            logits, [RowGroup(0, 1, mine, generator(seed)), RowGroup(1, 1, wider, generator(1))]
        )
        serial = next_tokens(logits[:1], mine, generator(seed)).tolist()
        assert alone == shared[:1] == serial
