"""The growing KV cache holds what appending with torch.cat would, through growth,
selection and joins."""

from __future__ import annotations

import torch

from tunesmith.serving.batch import KVBatch
from tunesmith.serving.kv_cache import GROWTH, GrowingCache


def states(rows: int, new: int, seed: int) -> torch.Tensor:
    return torch.randn(rows, 2, new, 4, generator=torch.Generator().manual_seed(seed))


def test_appends_hold_what_concatenation_holds_through_growth():
    cache = GrowingCache(layers=2)
    expected = [None, None]
    for step, new in enumerate([3, 1, GROWTH, 1, 1, 2 * GROWTH + 5, 1]):
        for layer in range(2):
            keys, values = states(3, new, 2 * step), states(3, new, 2 * step + 1)
            got = cache.update(keys, values, layer)
            before = expected[layer]
            expected[layer] = (
                (keys, values)
                if before is None
                else (torch.cat([before[0], keys], dim=2), torch.cat([before[1], values], dim=2))
            )
            assert torch.equal(got[0], expected[layer][0])
            assert torch.equal(got[1], expected[layer][1])
    assert torch.equal(cache.layers[1].keys, expected[1][0])


def test_rows_selected_and_joined_keep_growing_in_place():
    mask = torch.ones(2, 3, dtype=torch.bool)
    batch = KVBatch(GrowingCache(layers=1), mask, torch.tensor([3, 3]))
    batch.cache.update(states(2, 3, 0), states(2, 3, 1), 0)
    other = KVBatch(GrowingCache(layers=1), torch.ones(1, 5, dtype=torch.bool), torch.tensor([5]))
    other.cache.update(states(1, 5, 2), states(1, 5, 3), 0)

    batch.join(other)
    batch.select([2, 0])
    keys, values = batch.cache.update(states(2, 1, 4), states(2, 1, 5), 0)

    padded = torch.cat([torch.zeros(1, 2, 2, 4), states(2, 3, 0)[:1]], dim=2)
    assert torch.equal(keys[0, :, :5], states(1, 5, 2)[0])
    assert torch.equal(keys[1, :, :5], padded[0])
    assert torch.equal(keys[:, :, 5:], states(2, 1, 4))
    assert torch.equal(values[:, :, 5:], states(2, 1, 5))
