"""Gemma 3's text decoder layer, written once for training and serving.

The arithmetic of transformers' Gemma3TextModel (float32 RMS norms scaling by 1 + weight,
bf16 residual stream, rotary embedding from the model's own module, q and k norms) in
about a third of its tensor ops: q/k/v and gate/up are one projection each, and the q and
k norms and rotary embedding run once over both. What differs between training and
serving is passed in: the projections (peft's LoRA on frozen weights, or packed weights
with served adapters) and attention (over a packed sequence, or against a KV cache).
No peft here: the API process imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LAYER_TYPES = {"full_attention", "sliding_attention"}
Projection = Callable[[Tensor], Tensor]
# (queries (rows, heads, new, dim), keys and values (rows, kv heads, new, dim)) -> the
# attended values (rows, heads, new, dim)
Attention = Callable[[Tensor, Tensor, Tensor], Tensor]


def supported(config: Any) -> bool:
    """Whether a text config is a Gemma 3 whose every feature this layer implements."""
    return (
        config.model_type == "gemma3_text"
        and not config.attn_logit_softcapping
        and not getattr(config, "attention_dropout", 0.0)
        and not getattr(config, "use_bidirectional_attention", False)
        and not getattr(config, "attention_bias", False)
        and config.hidden_activation == "gelu_pytorch_tanh"
        and set(config.layer_types) <= LAYER_TYPES
    )


def norm_weight(norm: nn.Module) -> Tensor:
    """Gemma's RMSNorm scales by (1 + weight), in float32."""
    return 1.0 + norm.weight.detach().float()


@dataclass(frozen=True)
class LayerWeights:
    """One layer's norms (float32 scales) and projections."""

    input: Tensor
    qkv: Projection
    qk_norm: Tensor  # one row per query head, then one per key head
    o: Projection
    post_attention: Tensor
    pre_feedforward: Tensor
    gate_up: Projection
    down: Projection
    post_feedforward: Tensor


def packed_mask(segments: Tensor, positions: Tensor, window: int | None = None) -> Tensor:
    """(T, T) boolean for sequences laid back to back (token i of sequence segments[i] at
    position positions[i]): query i may attend key j in the same sequence, not after i,
    and within `window` positions when given."""
    same = segments[:, None] == segments[None, :]
    behind = positions[:, None] - positions[None, :]
    allowed = same & (behind >= 0)
    return allowed & (behind < window) if window else allowed


def attention(q: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    """Grouped-query attention of q (rows, heads, new, dim) over keys and values (rows, kv
    heads, length, dim); `mask` (rows, 1, new, length), True where a query may see a key.

    Decoding one token, each key head's query heads attend as one head's queries, with no
    copy of the keys and values per query head: 3-4x faster for 16 rows. Over many new
    tokens (training, prefill) that layout makes SDPA slower than copying the keys and
    values per head (84 against 57 ms forward and backward at 2,048 tokens), so they are
    copied; SDPA's own enable_gqa takes a CPU path about 3x slower still at 1k tokens."""
    rows, heads, new, dim = q.shape
    groups = heads // keys.shape[1]
    if new == 1 and groups > 1:
        queries = q.reshape(rows, keys.shape[1], groups, dim)
        attended = F.scaled_dot_product_attention(
            queries, keys, values, attn_mask=mask, scale=scale
        )
        return attended.reshape(rows, heads, 1, dim)
    if groups > 1:
        keys, values = (t.repeat_interleave(groups, dim=1) for t in (keys, values))
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale)


class GemmaLayers:
    """The decoder's shape, norms and rotary embedding, and its layer computation."""

    def __init__(self, decoder: nn.Module, config: Any) -> None:
        self.decoder = decoder
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scaling = config.query_pre_attn_scalar**-0.5
        self.eps = config.rms_norm_eps
        self.window = config.sliding_window
        self.layer_types = list(config.layer_types)
        self.final_norm = norm_weight(decoder.norm)

    def weights(self, layer: nn.Module, projection: Callable[..., Projection]) -> LayerWeights:
        """A layer's weights, its projections made by `projection(*linear layers)`."""
        attn, mlp = layer.self_attn, layer.mlp
        qk_norm = torch.cat(
            [
                norm_weight(attn.q_norm).expand(self.heads, -1),
                norm_weight(attn.k_norm).expand(self.kv_heads, -1),
            ]
        )
        return LayerWeights(
            input=norm_weight(layer.input_layernorm),
            qkv=projection(attn.q_proj, attn.k_proj, attn.v_proj),
            qk_norm=qk_norm,
            o=projection(attn.o_proj),
            post_attention=norm_weight(layer.post_attention_layernorm),
            pre_feedforward=norm_weight(layer.pre_feedforward_layernorm),
            gate_up=projection(mlp.gate_proj, mlp.up_proj),
            down=projection(mlp.down_proj),
            post_feedforward=norm_weight(layer.post_feedforward_layernorm),
        )

    def norm(self, x: Tensor, weight: Tensor) -> Tensor:
        """RMS norm over the last dimension in float32; `weight` may hold one row per head."""
        if weight.dim() == 1:
            return F.rms_norm(x.float(), weight.shape, weight, self.eps).to(x.dtype)
        return (F.rms_norm(x.float(), weight.shape[-1:], None, self.eps) * weight).to(x.dtype)

    def rotary(self, x: Tensor, positions: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        """cos and signed sin (rows, tokens, 1, dim) per layer type for `positions` (rows,
        tokens): x * cos + roll(x) * sin is transformers' rotate_half form."""
        out = {}
        for kind in set(self.layer_types):
            cos, sin = self.decoder.rotary_emb(x, positions, kind)
            half = sin.shape[-1] // 2
            signed = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)
            out[kind] = (cos[:, :, None], signed[:, :, None])
        return out

    def layer(
        self, x: Tensor, w: LayerWeights, rotary: tuple[Tensor, Tensor], attend: Attention
    ) -> Tensor:
        """One decoder layer on x (rows, tokens, hidden)."""
        rows, tokens = x.shape[:2]
        heads, kv, dim = self.heads, self.kv_heads, self.head_dim
        qkv = w.qkv(self.norm(x, w.input))
        qk, v = qkv.split([(heads + kv) * dim, kv * dim], dim=-1)
        qk = self.norm(qk.view(rows, tokens, heads + kv, dim), w.qk_norm)
        cos, sin = rotary
        qk = qk * cos + qk.roll(dim // 2, dims=-1) * sin
        q, k = qk.transpose(1, 2).split([heads, kv], dim=1)
        attended = attend(q, k, v.view(rows, tokens, kv, dim).transpose(1, 2))
        out = w.o(attended.transpose(1, 2).reshape(rows, tokens, heads * dim))
        x = x + self.norm(out, w.post_attention)
        gate, up = w.gate_up(self.norm(x, w.pre_feedforward)).chunk(2, dim=-1)
        hidden = F.gelu(gate, approximate="tanh") * up
        return x + self.norm(w.down(hidden), w.post_feedforward)
