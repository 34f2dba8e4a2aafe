"""The model passes of continuous batching: a request's prompt alone, then one decoding
step for every running row together.

Rows join with KV caches of different lengths. They are kept left-padded to one length in
one transformers `DynamicCache`, with a mask of which positions are real and each row's
own next position: the padding is masked out of attention and costs nothing but its share
of the attention reads. The cache has only full (not sliding-window) layers, so that rows
can be padded, selected and joined alike; the model's sliding-window mask still limits what
those layers attend to.
"""

from __future__ import annotations

import torch
from torch.nn import functional
from transformers import DynamicCache

from tunesmith.training.logits import vocab_logits


class KVBatch:
    """Rows' KV caches left-padded to one length, which positions are real, and each row's
    position of its next token."""

    def __init__(self, cache: DynamicCache, mask: torch.Tensor, positions: torch.Tensor) -> None:
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

    @torch.inference_mode()
    def step(self, model, tokens: torch.Tensor) -> torch.Tensor:
        """Feeds each row its last token; the logits (rows, vocab) of each row's next one."""
        real = torch.ones(self.rows, 1, dtype=torch.bool, device=self.mask.device)
        mask = torch.cat([self.mask, real], dim=1)
        out = model.get_decoder()(
            input_ids=tokens[:, None],
            # without padding, no mask: attention then takes its plain (faster) path
            attention_mask=None if bool(mask.all()) else mask,
            position_ids=self.positions[:, None],
            past_key_values=self.cache,
            use_cache=True,
        )
        self.mask = mask
        self.positions = self.positions + 1
        return last_logits(model, out.last_hidden_state)


@torch.inference_mode()
def prefill(model, prompts: list[list[int]]) -> tuple[torch.Tensor, KVBatch]:
    """Runs prompts together, left-padded to the longest; their last logits (one row each),
    and a batch of one row each holding their KV caches."""
    length = max(len(prompt) for prompt in prompts)
    ids = torch.zeros(len(prompts), length, dtype=torch.long)
    mask = torch.zeros(len(prompts), length, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        ids[row, length - len(prompt) :] = torch.tensor(prompt)
        mask[row, length - len(prompt) :] = True
    ids, mask = ids.to(model.device), mask.to(model.device)
    padded = not bool(mask.all())
    cache = DynamicCache()
    out = model.get_decoder()(
        input_ids=ids,
        attention_mask=mask if padded else None,
        # each row's positions count from its first real token
        position_ids=(mask.long().cumsum(dim=1) - 1).clamp(min=0) if padded else None,
        past_key_values=cache,
        use_cache=True,
    )
    positions = mask.sum(dim=1)
    return last_logits(model, out.last_hidden_state), KVBatch(cache, mask, positions)


def last_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """Float32 logits (rows, vocab) of each row's last position."""
    return vocab_logits(model, hidden[:, -1])


def _pad(states: torch.Tensor, length: int) -> torch.Tensor:
    """[rows, heads, n, dim] padded with zeros on the left of n to `length`."""
    return functional.pad(states, (0, 0, length - states.shape[2], 0))


def _pad_mask(mask: torch.Tensor, length: int) -> torch.Tensor:
    return functional.pad(mask, (length - mask.shape[1], 0), value=False)
