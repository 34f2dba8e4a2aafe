"""The model passes of continuous batching: prompts prefilled together, then one decoding
step for every running row together.

Rows join with KV caches of different lengths. They are kept left-padded to one length in
one cache (transformers' `DynamicCache`, or the Gemma passes' `GrowingCache`), with a mask
of which positions are real and each row's own next position: the padding is masked out of
attention and costs nothing but its share of the attention reads. The cache has only full
(not sliding-window) layers, so that rows can be padded, selected and joined alike; the
model's sliding-window mask still limits what those layers attend to (and the Gemma
passes' decoding steps read only the window's columns).

`TransformersPasses` runs any causal LM through its transformers decoder; Gemma 3 has a
leaner path of its own (`serving.gemma`). Both keep their rows in a `KVBatch`.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch.nn import functional
from transformers import DynamicCache

from tunesmith.serving.kv_cache import GrowingCache
from tunesmith.serving.packed import pack_linear_layers
from tunesmith.training.logits import vocab_logits


class KVBatch:
    """Rows' KV caches left-padded to one length, which positions are real, and each row's
    position of its next token."""

    def __init__(
        self, cache: DynamicCache | GrowingCache, mask: torch.Tensor, positions: torch.Tensor
    ) -> None:
        self.cache = cache
        self.mask = mask  # bool [rows, length]
        self.positions = positions  # long [rows]

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    @property
    def length(self) -> int:
        return self.mask.shape[1]

    def select(self, rows: list[int]) -> None:
        """Keeps only `rows` (in that order, a row repeated to copy it), then drops padding
        no row needs any more."""
        index = torch.tensor(rows, device=self.mask.device)
        self.mask = self.mask[index]
        self.positions = self.positions[index]
        real = self.mask.any(dim=0).nonzero()
        start = int(real[0]) if len(real) else self.length
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, start:]
            layer.values = layer.values[index, :, start:]
        self.mask = self.mask[:, start:]

    def join(self, other: KVBatch) -> None:
        """Appends `other`'s rows after these, padding whichever is shorter on the left."""
        length = max(self.length, other.length)
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat([_pad(mine.keys, length), _pad(theirs.keys, length)])
            mine.values = torch.cat([_pad(mine.values, length), _pad(theirs.values, length)])
        self.mask = torch.cat([_pad_mask(self.mask, length), _pad_mask(other.mask, length)])
        self.positions = torch.cat([self.positions, other.positions])

    def next_mask(self) -> torch.Tensor:
        """The mask once each row has fed one more (real) token."""
        real = torch.ones(self.rows, 1, dtype=torch.bool, device=self.mask.device)
        return torch.cat([self.mask, real], dim=1)

    def advance(self, mask: torch.Tensor) -> None:
        """Records that each row fed one more token (its cache holds it now)."""
        self.mask = mask
        self.positions = self.positions + 1


class Passes(Protocol):
    """A served model's two passes."""

    def prefill(self, prompts: list[list[int]]) -> tuple[torch.Tensor, KVBatch]:
        """Runs prompts together, left-padded to the longest; their last logits (one row
        each, float32), and a batch of one row each holding their KV caches."""
        ...

    def step(self, kv: KVBatch, tokens: torch.Tensor) -> torch.Tensor:
        """Feeds each row its last token; the float32 logits (rows, vocab) of each row's
        next one."""
        ...


class TransformersPasses:
    """Any causal LM through its transformers decoder, its linear layers packed for oneDNN
    where they can be."""

    def __init__(self, model) -> None:
        self.model = model
        pack_linear_layers(model)

    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]]) -> tuple[torch.Tensor, KVBatch]:
        ids, mask = left_padded(prompts, self.model.device)
        padded = not bool(mask.all())
        cache = DynamicCache()
        out = self.model.get_decoder()(
            input_ids=ids,
            attention_mask=mask if padded else None,
            position_ids=first_positions(mask) if padded else None,
            past_key_values=cache,
            use_cache=True,
        )
        logits = last_logits(self.model, out.last_hidden_state)
        return logits, KVBatch(cache, mask, mask.sum(dim=1))

    @torch.inference_mode()
    def step(self, kv: KVBatch, tokens: torch.Tensor) -> torch.Tensor:
        mask = kv.next_mask()
        out = self.model.get_decoder()(
            input_ids=tokens[:, None],
            # without padding, no mask: attention then takes its plain (faster) path
            attention_mask=None if bool(mask.all()) else mask,
            position_ids=kv.positions[:, None],
            past_key_values=kv.cache,
            use_cache=True,
        )
        kv.advance(mask)
        return last_logits(self.model, out.last_hidden_state)


def left_padded(prompts: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts as (rows, longest) ids, padded on the left, and the mask of real tokens."""
    length = max(len(prompt) for prompt in prompts)
    ids = torch.zeros(len(prompts), length, dtype=torch.long)
    mask = torch.zeros(len(prompts), length, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        ids[row, length - len(prompt) :] = torch.tensor(prompt)
        mask[row, length - len(prompt) :] = True
    return ids.to(device), mask.to(device)


def first_positions(mask: torch.Tensor) -> torch.Tensor:
    """Each left-padded row's positions, counting from its first real token."""
    return (mask.long().cumsum(dim=1) - 1).clamp(min=0)


def last_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """Float32 logits (rows, vocab) of each row's last position."""
    return vocab_logits(model, hidden[:, -1])


def _pad(states: torch.Tensor, length: int) -> torch.Tensor:
    """[rows, heads, n, dim] padded with zeros on the left of n to `length`."""
    return functional.pad(states, (0, 0, length - states.shape[2], 0))


def _pad_mask(mask: torch.Tensor, length: int) -> torch.Tensor:
    return functional.pad(mask, (length - mask.shape[1], 0), value=False)
