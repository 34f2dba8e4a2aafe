"""One training forward pass over a packed batch, read top to bottom (as nanoGPT's).

A step's examples are laid back to back in one sequence with no padding; attention never
crosses from one example into another, and each example's positions start at 0, so every
example sees exactly what it would see alone. Logits are computed only at the positions
whose next token is in the loss, through `training.logits.vocab_logits`, the one place
the output projection and the final logit soft-cap live (evaluation and serving use it
too).

Gemma 3 text models run through :class:`GemmaDecoder`, which reads the same weights and
LoRA parameters as the peft-wrapped model but does per layer what transformers does in
about a third of the tensor ops: q/k/v and gate/up are one matmul each, the q and k norms
and rotary embedding run once over both, and the LoRA matmuls of a fused projection are
batched. A model or adapter it cannot run exactly goes through transformers' own decoder:
packed where that decoder honours a packed mask (:data:`PACKED_MODEL_TYPES`), padded
otherwise, one row per example, as before packing.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import AuxiliaryTrainingWrapper
from torch import Tensor

from tunesmith.training import gemma_layer
from tunesmith.training.gemma_layer import LAYER_TYPES, GemmaLayers, attention, packed_mask
from tunesmith.training.logits import vocab_logits
from tunesmith.training.prepacked import Matmul, frozen_matmul, prepackable
from tunesmith.training.recipe import embedding_noise

log = logging.getLogger(__name__)

Pair = tuple[list[int], list[int]]  # (prompt ids, answer ids) of one example
# Architectures whose transformers decoder takes per-token positions and a custom 4-D mask
# (one per layer type where the config has layer types) and uses them as given.
PACKED_MODEL_TYPES = ("gemma3_text", "llama", "qwen2", "qwen3")
MAX_PACKED_TOKENS = 2048  # the most tokens a step packs into one sequence


@dataclass(frozen=True)
class PackedBatch:
    """A step's examples back to back: token i belongs to example segments[i] at position
    positions[i] of it. Target j is predicted by the output at predictors[j] and weighs
    weights[j] in the objective; the first `answers` targets are answer tokens, the rest
    prompt tokens. `width` is the longest example (what padding would pad to)."""

    ids: Tensor
    positions: Tensor
    segments: Tensor
    predictors: Tensor
    targets: Tensor
    weights: Tensor
    answers: int
    rows: int
    width: int


def pack(
    pairs: list[Pair], prompt_weight: float = 0.0, device: torch.device | str = "cpu"
) -> PackedBatch:
    """Each example's answer tokens weigh 1 / (its answer tokens x examples), so the answer
    loss is the mean of the examples' mean answer-token loss; with `prompt_weight`, its
    prompt tokens (all but the first, which nothing predicts) join at that weight alike."""
    ids: list[int] = []
    positions: list[int] = []
    segments: list[int] = []
    answer: tuple[list[int], list[int], list[float]] = ([], [], [])
    prompt: tuple[list[int], list[int], list[float]] = ([], [], [])
    share = 1.0 / len(pairs)
    for example, (prompt_ids, answer_ids) in enumerate(pairs):
        start, seq = len(ids), prompt_ids + answer_ids
        ids += seq
        positions += range(len(seq))
        segments += [example] * len(seq)
        first = max(len(prompt_ids), 1)  # the first answer token the loss can see
        _predict(answer, seq, start, first, len(seq), share)
        if prompt_weight:
            _predict(prompt, seq, start, 1, first, share * prompt_weight)

    def tensor(values: list, dtype: torch.dtype = torch.long) -> Tensor:
        return torch.tensor(values, dtype=dtype, device=device)

    return PackedBatch(
        ids=tensor(ids),
        positions=tensor(positions),
        segments=tensor(segments),
        predictors=tensor(answer[0] + prompt[0]),
        targets=tensor(answer[1] + prompt[1]),
        weights=tensor(answer[2] + prompt[2], torch.float32),
        answers=len(answer[0]),
        rows=len(pairs),
        width=max(len(p) + len(a) for p, a in pairs),
    )


def _predict(into: tuple, seq: list[int], start: int, begin: int, end: int, weight: float) -> None:
    """Adds seq[begin:end] as targets, each predicted by the token before it, sharing
    `weight` equally."""
    count = end - begin
    into[0].extend(range(start + begin - 1, start + end - 1))
    into[1].extend(seq[begin:end])
    into[2].extend([weight / count] * count if count > 0 else [])


def attention_mask(packed: PackedBatch, window: int | None = None) -> Tensor:
    """(T, T) boolean: query i may attend key j (same example, j not after i, and within
    `window` positions when given)."""
    return packed_mask(packed.segments, packed.positions, window)


Decoder = Callable[[PackedBatch, float], Tensor]


def step_loss(
    causal_lm: torch.nn.Module, decode: Decoder, packed: PackedBatch, noise: float = 0.0
) -> tuple[Tensor, Tensor]:
    """(what a step minimises, the answer loss it reports): the answer loss is the mean over
    the batch's examples of each example's mean answer-token loss; the objective adds the
    prompt tokens' loss as `pack` weighed it. `noise` is NEFTune's alpha (0: none)."""
    logits = vocab_logits(causal_lm, decode(packed, noise), _output_matmul(causal_lm))
    token_loss = F.cross_entropy(logits, packed.targets, reduction="none") * packed.weights
    answer = token_loss[: packed.answers].sum()
    objective = token_loss.sum() if len(packed.targets) > packed.answers else answer
    return objective, answer


def _output_matmul(causal_lm: torch.nn.Module) -> Matmul | None:
    """The output projection prepacked, where it is a frozen plain linear layer that
    `prepackable` takes (None: the module itself)."""
    module = causal_lm.get_output_embeddings()
    if type(module) is not torch.nn.Linear or module.bias is not None:
        return None
    return frozen_matmul(module.weight) if prepackable(module.weight) else None


def warm_up(causal_lm) -> None:
    """Prepares a freshly loaded base model for its first training job: builds the decoder's
    per-model caches and runs one short forward pass, so the job does not pay for them."""
    with torch.no_grad():
        packed = pack([([0, 1], [2])], device=causal_lm.device)
        step_loss(causal_lm, decoder_for(causal_lm), packed)


def decoder_for(causal_lm: torch.nn.Module) -> Decoder:
    """A function from a packed batch (and NEFTune's alpha) to the final hidden states
    (after the last norm) at its predictor positions, for the model as it is now."""
    padded = PaddedTransformersDecoder(causal_lm)
    if GemmaDecoder.supports(causal_lm):
        return LengthRouted(GemmaDecoder(causal_lm), padded)
    if PackedTransformersDecoder.supports(causal_lm):
        return LengthRouted(PackedTransformersDecoder(causal_lm), padded)
    log.debug("%s trains on padded rows", causal_lm.config.model_type)
    return padded


@dataclass
class LengthRouted:
    """`packed` for a step of at most MAX_PACKED_TOKENS tokens, `padded` (one row per
    example) beyond: packed attention's masks and scores grow with the square of the
    step's tokens, padded attention with each example's own length squared."""

    packed: Decoder
    padded: Decoder

    def __call__(self, batch: PackedBatch, noise: float) -> Tensor:
        decode = self.packed if len(batch.ids) <= MAX_PACKED_TOKENS else self.padded
        return decode(batch, noise)


def _embed(causal_lm, ids: Tensor, noise: float, length: int) -> Tensor:
    """The input embeddings (through the model's own module: scale and any LoRA included),
    with NEFTune noise sized for examples of `length` tokens."""
    return embedding_noise(causal_lm.get_input_embeddings()(ids), noise, length)


class PackedTransformersDecoder:
    """A transformers decoder fed the packed sequence with per-example positions and a 4-D
    mask (per layer type) that keeps examples apart."""

    @staticmethod
    def supports(causal_lm) -> bool:
        config = causal_lm.config
        types = set(getattr(config, "layer_types", None) or ())
        return (
            config.model_type in PACKED_MODEL_TYPES
            # eager attention would add a boolean 4-D mask to the scores, not apply it
            and config._attn_implementation == "sdpa"
            and not getattr(config, "use_bidirectional_attention", False)
            and types <= LAYER_TYPES
            and bool(types or not getattr(config, "sliding_window", None))
        )

    def __init__(self, causal_lm) -> None:
        self.causal_lm = causal_lm
        self.decoder = causal_lm.get_decoder()
        config = causal_lm.config
        self.types = set(getattr(config, "layer_types", None) or ())
        self.window = getattr(config, "sliding_window", None)

    def __call__(self, packed: PackedBatch, noise: float) -> Tensor:
        full = attention_mask(packed)[None, None]
        mask: Tensor | dict[str, Tensor] = full
        if self.types:
            masks = {"full_attention": full}
            if "sliding_attention" in self.types:
                masks["sliding_attention"] = attention_mask(packed, self.window)[None, None]
            mask = {t: masks[t] for t in self.types}
        out = self.decoder(
            inputs_embeds=_embed(self.causal_lm, packed.ids, noise, packed.width)[None],
            position_ids=packed.positions[None],
            attention_mask=mask,
        )
        return out.last_hidden_state[0, packed.predictors]


class PaddedTransformersDecoder:
    """Any transformers decoder on right-padded rows, one per example, with a 2-D mask the
    model turns into its own causal (and windowed) attention."""

    def __init__(self, causal_lm) -> None:
        self.causal_lm = causal_lm
        self.decoder = causal_lm.get_decoder()

    def __call__(self, packed: PackedBatch, noise: float) -> Tensor:
        where = (packed.segments, packed.positions)
        ids = packed.ids.new_zeros(packed.rows, packed.width).index_put_(where, packed.ids)
        mask = torch.zeros_like(ids).index_put_(where, torch.ones_like(packed.ids))
        embedded = _embed(self.causal_lm, ids, noise, packed.width)
        hidden = self.decoder(inputs_embeds=embedded, attention_mask=mask).last_hidden_state
        at = packed.predictors
        return hidden[packed.segments[at], packed.positions[at]]


@dataclass(frozen=True)
class _Lora:
    a: Tensor  # (rank, in) trainable
    b: Tensor  # (out, rank) trainable
    scale: float
    dropout: torch.nn.Module  # Identity or Dropout, applied to the input of `a`


def _plain_lora(module) -> _Lora | bool | None:
    """The module's one plain LoRA adapter, None if it has none, False if it has one this
    decoder cannot run (DoRA or another variant, several adapters, a bias, merged)."""
    base = getattr(module, "base_layer", module)
    if not isinstance(base, torch.nn.Linear) or base.bias is not None:
        return False
    if base is module:
        return None
    if getattr(module, "merged", False) or getattr(module, "disable_adapters", False):
        return False
    names = [n for n in module.active_adapters if n in module.lora_A]
    if not names:
        return None
    name = names[0]
    variants = getattr(module, "lora_variant", {})
    if len(names) > 1 or name in variants or module.lora_B[name].bias is not None:
        return False
    dropout = module.lora_dropout[name]
    if not isinstance(dropout, torch.nn.Identity | torch.nn.Dropout):
        return False
    return _Lora(
        module.lora_A[name].weight, module.lora_B[name].weight, module.scaling[name], dropout
    )


def _drops(dropout: torch.nn.Module) -> bool:
    return isinstance(dropout, torch.nn.Dropout) and dropout.training and dropout.p > 0


class _Projection:
    """Several linear layers that read the same input, as one matmul on their concatenated
    frozen weights, plus their LoRA deltas as two batched matmuls (float32, as peft). With
    LoRA dropout active, each layer's A reads its own dropped input, in peft's order."""

    def __init__(self, modules: list) -> None:
        self.weight = _frozen_concat([getattr(m, "base_layer", m) for m in modules])
        self.loras = [_plain_lora(m) for m in modules]
        self.sizes = [getattr(m, "base_layer", m).weight.shape[0] for m in modules]
        self.scale: Tensor | None = None
        if any(self.loras):
            dtype = next(lo.a.dtype for lo in self.loras if lo)
            self.scale = torch.cat(
                [
                    torch.full((n,), lo.scale if lo else 0.0, dtype=dtype)
                    for n, lo in zip(self.sizes, self.loras, strict=True)
                ]
            ).to(self.weight.device)

    def __call__(self, x: Tensor) -> Tensor:
        y = F.linear(x, self.weight)
        if self.scale is None:
            return y
        present = [lo for lo in self.loras if lo]
        xf = x.to(present[0].a.dtype)
        if any(_drops(lo.dropout) for lo in present):
            xa = torch.cat([F.linear(lo.dropout(xf), lo.a) for lo in present], dim=-1)
        else:
            a = present[0].a if len(present) == 1 else torch.cat([lo.a for lo in present])
            xa = F.linear(xf, a)
        blocks = [lo.b if lo else None for lo in self.loras]
        b = _stack_b(blocks, self.sizes, xf.dtype, x.device)
        return (y + F.linear(xa, b) * self.scale).to(y.dtype)


_concatenated: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _frozen_concat(linears: list[torch.nn.Linear]) -> Tensor:
    """The frozen weights of `linears` stacked, built once per loaded base model (about
    0.1 s for Gemma 3 270M) and kept while its first layer lives. Each layer's weight then
    becomes a view of its rows of the stack, so the weights are in memory once."""
    if len(linears) == 1:
        return linears[0].weight.detach()
    cached = _concatenated.get(linears[0])
    if cached is None or not _views_of(cached, linears):
        stacked = torch.cat([m.weight.detach() for m in linears])
        offset = 0
        for m in linears:
            rows = m.weight.shape[0]
            m.weight.data = stacked[offset : offset + rows]
            offset += rows
        cached = ([id(m) for m in linears], stacked)
        _concatenated[linears[0]] = cached
    return cached[1]


def _views_of(cached: tuple[list[int], Tensor], linears: list[torch.nn.Linear]) -> bool:
    """Whether the cached stack is still what `linears` read (nobody replaced a weight)."""
    ids, stacked = cached
    if ids != [id(m) for m in linears]:
        return False
    offset = 0
    for m in linears:
        if m.weight.data_ptr() != stacked[offset].data_ptr():
            return False
        offset += m.weight.shape[0]
    return True


def _stack_b(blocks: list[Tensor | None], sizes: list[int], dtype, device) -> Tensor:
    """The B matrices as one block-diagonal (sum out, sum rank) matrix; a layer without
    LoRA contributes zero rows."""
    if len(blocks) == 1:
        return blocks[0]
    parts = [
        b if b is not None else torch.zeros(n, 0, dtype=dtype, device=device)
        for b, n in zip(blocks, sizes, strict=True)
    ]
    return torch.block_diag(*parts)


def _layer_linears(layer) -> list:
    attn, mlp = layer.self_attn, layer.mlp
    return [
        *(getattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")),
        *(getattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")),
    ]


class GemmaDecoder:
    """Gemma 3's text decoder over a packed batch (`training.gemma_layer`, the layer serving
    runs too) with peft's LoRA (float32 deltas) on the frozen weights."""

    @classmethod
    def supports(cls, causal_lm) -> bool:
        """Whether this decoder computes exactly what transformers' would: the config's
        features it implements, and adapters only where it applies them."""
        if not gemma_layer.supported(causal_lm.config):
            return False
        decoder = causal_lm.get_decoder()
        linears = [m for layer in decoder.layers for m in _layer_linears(layer)]
        handled = {id(m) for m in linears} | {id(decoder.embed_tokens)}
        # a trained copy of another module (modules_to_save) would be read past
        wrapped = (BaseTunerLayer, AuxiliaryTrainingWrapper)
        adapted = {id(m) for m in decoder.modules() if isinstance(m, wrapped)}
        return adapted <= handled and all(_plain_lora(m) is not False for m in linears)

    def __init__(self, causal_lm) -> None:
        self.causal_lm = causal_lm
        self.gemma = GemmaLayers(causal_lm.get_decoder(), causal_lm.config)
        self.layers = [
            self.gemma.weights(layer, lambda *modules: _Projection(list(modules)))
            for layer in self.gemma.decoder.layers
        ]

    def __call__(self, packed: PackedBatch, noise: float) -> Tensor:
        gemma = self.gemma
        x = _embed(self.causal_lm, packed.ids, noise, packed.width)[None]
        rotary = gemma.rotary(x, packed.positions[None])
        # 4-D, or CPU SDPA falls back from its flash kernel to materialised attention
        masks = {
            "full_attention": attention_mask(packed)[None, None],
            "sliding_attention": attention_mask(packed, gemma.window)[None, None],
        }
        for weights, kind in zip(self.layers, gemma.layer_types, strict=True):

            def attend(q: Tensor, k: Tensor, v: Tensor, mask=masks[kind]) -> Tensor:
                return attention(q, k, v, mask, gemma.scaling)

            x = gemma.layer(x, weights, rotary[kind], attend)
        return gemma.norm(x[0, packed.predictors], gemma.final_norm)
