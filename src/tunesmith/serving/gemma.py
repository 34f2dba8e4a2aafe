"""Gemma 3 served without transformers' layer code: prefill and decoding steps with the
arithmetic of transformers' Gemma3TextModel in about a third of the tensor ops.

A decoding step on a CPU is bound by reading weights, and what it does besides is about a
thousand small tensor ops in transformers' layers (norms in float32 and back, rotary
embedding, the cache, masks). Here q/k/v and gate/up are one matmul each on weights
stacked once (and prepacked for oneDNN in bf16 on a CPU), the q and k norms and the rotary
embedding run once over both, and in a decoding step a key head's query heads attend as
one head's queries, with no copy of the keys. For Gemma 3 270M at batch 1 that took a step from
about 27 ms to 23 ms with the same greedy tokens (docs/PERFORMANCE.md).

The passes own the model: the decoder layers' plain weights are freed once stacked, so the
model holds its weights once, and its transformers decoder can no longer run. LoRA rows
come from the adapter bank, applied per layer exactly as its hooks would.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tunesmith.serving.batch import KVBatch, first_positions, last_logits, left_padded
from tunesmith.serving.kv_cache import GrowingCache
from tunesmith.serving.lora import AdapterBank
from tunesmith.serving.packed import PackedLinear, can_pack, pack_output_projection
from tunesmith.training import gemma_layer
from tunesmith.training.gemma_layer import GemmaLayers, attention, packed_mask
from tunesmith.training.logits import vocab_logits


class _Projection:
    """Linear layers that read the same input, as one matmul on their stacked weights, then
    each layer's adapter rows from the bank."""

    def __init__(self, bank: AdapterBank, named: list[tuple[str, nn.Linear]], pack: bool) -> None:
        self.linear = _stacked([linear for _, linear in named], pack)
        self.names = tuple(name for name, _ in named)
        self.bank = bank

    def __call__(self, x: Tensor) -> Tensor:
        return self.bank.adapted(self.names, x, self.linear(x))


_stacks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_stacks_lock = threading.Lock()


def _stacked(linears: list[nn.Linear], pack: bool) -> PackedLinear | _Plain:
    """The layers' weights stacked as one (packed if `pack`), built once per loaded model
    (kept while its first layer lives, so a model can be served again); the layers' own
    weights are freed, and the modules never called again."""
    with _stacks_lock:
        stacked = _stacks.get(linears[0])
        if stacked is None:
            weights = [linear.weight.detach() for linear in linears]
            weight = torch.cat(weights) if len(weights) > 1 else weights[0]
            stacked = _stacks[linears[0]] = PackedLinear(weight) if pack else _Plain(weight)
            for linear in linears:
                linear.weight = None
        return stacked


@dataclass(frozen=True)
class _Plain:
    weight: Tensor

    def __call__(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)


class GemmaPasses:
    """Prefill and decoding steps of a Gemma 3 text model, rows' adapters from `bank`."""

    @staticmethod
    def supports(model: nn.Module) -> bool:
        """Whether these passes compute what transformers' Gemma 3 decoder would."""
        return gemma_layer.supported(model.config)

    def __init__(self, model: nn.Module, bank: AdapterBank) -> None:
        self.model = model
        self.gemma = GemmaLayers(model.get_decoder(), model.config)
        pack = can_pack(model)
        names = {id(m): name for name, m in model.named_modules()}

        def projection(*linears: nn.Linear) -> _Projection:
            return _Projection(bank, [(names[id(m)], m) for m in linears], pack)

        self.layers = [self.gemma.weights(layer, projection) for layer in self.gemma.decoder.layers]
        pack_output_projection(model)

    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]]) -> tuple[Tensor, KVBatch]:
        ids, mask = left_padded(prompts, self.model.device)
        kv = KVBatch(GrowingCache(len(self.layers)), mask, mask.sum(dim=1))
        hidden = self._forward(ids, first_positions(mask), mask, kv.cache)
        return last_logits(self.model, hidden), kv

    @torch.inference_mode()
    def step(self, kv: KVBatch, tokens: Tensor) -> Tensor:
        mask = kv.next_mask()
        hidden = self._forward(tokens[:, None], kv.positions[:, None], mask, kv.cache)
        kv.advance(mask)
        return last_logits(self.model, hidden)

    @torch.inference_mode()
    def step_and_prefill(
        self, kv: KVBatch, tokens: Tensor, prompts: list[list[int]]
    ) -> tuple[Tensor, Tensor, KVBatch]:
        """A decoding step of kv's rows and the prefill of `prompts` in one pass, so that
        the weights are read once for both (a prefill of a few short prompts alone costs
        about a decoding step). The step's logits (rows, vocab), the prompts' last logits,
        and a batch of one row each holding the prompts' caches.

        The pass runs on one flat sequence: each row's new token, then the prompts back to
        back. Attention splits it again: the rows' tokens attend to their caches, each
        prompt's tokens causally to that prompt's."""
        gemma, device = self.gemma, self.model.device
        rows = len(tokens)
        lengths = torch.tensor([len(p) for p in prompts], device=device)
        segments = torch.repeat_interleave(torch.arange(len(prompts), device=device), lengths)
        starts = torch.cumsum(lengths, dim=0) - lengths
        offsets = torch.arange(len(segments), device=device) - starts[segments]
        flat = torch.tensor([t for p in prompts for t in p], device=device)
        ids = torch.cat([tokens, flat])[None]
        positions = torch.cat([kv.positions, offsets])[None]
        real = kv.next_mask()
        step_masks = self._masks(real, 1)
        prompt_masks = {
            kind: packed_mask(segments, offsets, self._window(kind))[None, None]
            for kind in set(gemma.layer_types)
        }
        width = int(lengths.max())
        prompted = KVBatch(GrowingCache(len(self.layers)), left_padded(prompts, device)[1], lengths)
        where = (segments, width - lengths[segments] + offsets)  # (row, column) of each token
        x = gemma.decoder.embed_tokens(ids)
        rotary = gemma.rotary(x, positions)
        for index, (layer, kind) in enumerate(zip(self.layers, gemma.layer_types, strict=True)):

            def attend(q: Tensor, k: Tensor, v: Tensor, index=index, kind=kind) -> Tensor:
                # the rows' tokens: (rows, heads, 1, dim) against their caches
                mine = [t[0, :, :rows].transpose(0, 1)[:, :, None] for t in (q, k, v)]
                keys, values = kv.cache.update(mine[1], mine[2], index)
                seen = _recent(self._window(kind), 1, keys, values, step_masks[kind])
                stepped = attention(mine[0], *seen, gemma.scaling)
                # the prompts' tokens, each prompt causally over its own
                new = [t[:, :, rows:] for t in (q, k, v)]
                prompted.cache.update(
                    *(_scatter(t, where, len(prompts), width) for t in new[1:]), index
                )
                filled = attention(*new, prompt_masks[kind], gemma.scaling)
                return torch.cat([stepped[:, :, 0].transpose(0, 1)[None], filled], dim=2)

            x = gemma.layer(x, layer, rotary[kind], attend)
        kv.advance(real)
        hidden = gemma.norm(x[0], gemma.final_norm)
        last = rows + starts + lengths - 1
        logits = vocab_logits(self.model, torch.cat([hidden[:rows], hidden[last]]))
        return logits[:rows], logits[rows:], prompted

    def _forward(self, ids: Tensor, positions: Tensor, real: Tensor, cache: GrowingCache) -> Tensor:
        """The final hidden states (rows, new tokens, hidden) of `ids` (rows, new tokens) at
        `positions`, appending their keys and values to `cache`; `real` marks the real
        tokens of the cache and the new ones."""
        gemma = self.gemma
        x = gemma.decoder.embed_tokens(ids)
        rotary = gemma.rotary(x, positions)
        masks = self._masks(real, ids.shape[1])
        for index, (layer, kind) in enumerate(zip(self.layers, gemma.layer_types, strict=True)):

            def attend(q: Tensor, k: Tensor, v: Tensor, index=index, kind=kind) -> Tensor:
                keys, values = cache.update(k, v, index)
                seen = _recent(self._window(kind), q.shape[2], keys, values, masks[kind])
                return attention(q, *seen, gemma.scaling)

            x = gemma.layer(x, layer, rotary[kind], attend)
        return gemma.norm(x, gemma.final_norm)

    def _window(self, kind: str) -> int | None:
        return self.gemma.window if kind == "sliding_attention" else None

    def _masks(self, real: Tensor, new: int) -> dict[str, Tensor | None]:
        """Per layer type, which keys each of the `new` last tokens' queries may see (rows,
        1, new, length), or None where every query may see every key. A padding query sees
        itself, so no row is empty."""
        gemma = self.gemma
        length = real.shape[1]
        columns = torch.arange(length, device=real.device)
        behind = columns[-new:, None] - columns[None, :]  # query's position less key's
        allowed = (real[:, None, :] & (behind >= 0)) | (behind == 0)
        masks: dict[str, Tensor | None] = {}
        for kind in set(gemma.layer_types):
            window = self._window(kind)
            mask = allowed & (behind < window) if window else allowed
            masks[kind] = None if bool(mask.all()) else mask[:, None]
        return masks


def _recent(
    window: int | None, new: int, keys: Tensor, values: Tensor, mask: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The keys, values and mask (rows, 1, new, length) a decoding step's query (`new` is 1)
    may see through a sliding `window`: the last `window` columns, since the cache is
    left-padded (its last column is every row's newest token, and a column's distance from
    it is the position's). For a long cache, the sliding layers then read the window alone."""
    if window is None or new != 1 or keys.shape[2] <= window:
        return keys, values, mask
    recent = slice(keys.shape[2] - window, None)
    return (
        keys[:, :, recent],
        values[:, :, recent],
        None if mask is None else mask[..., recent],
    )


def _scatter(states: Tensor, where: tuple[Tensor, Tensor], rows: int, width: int) -> Tensor:
    """Keys or values (1, kv heads, tokens, dim) of prompts laid back to back, as a
    left-padded cache (rows, kv heads, width, dim), zeros in the padding."""
    _, heads, _, dim = states.shape
    padded = states.new_zeros(rows, width, heads, dim)
    padded[where] = states[0].transpose(0, 1)
    return padded.transpose(1, 2)
