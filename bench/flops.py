"""Model FLOPs of a LoRA training job, and this machine's measured bf16 matmul peak.

The FLOPs are the arithmetic a LoRA step cannot avoid, counted the same for every loop that
trains the same job, so FLOP/s compare loops as their wall times do:
- every frozen linear layer: 2 FLOPs per weight per token forward, 2 more backward for the
  input gradient (frozen weights need no weight gradient);
- every LoRA matrix: 2 forward, 2 input-gradient and 2 weight-gradient FLOPs per weight
  per token;
- attention: QK^T and AV over the causal pairs of each example, forward and backward
  (2 + 4 FLOPs per pair, head and head dimension, each);
- the output projection at the positions that predict answer tokens only, forward and
  input gradient. Logits a loop computes at other positions are not counted: they are
  waste the loss never reads.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

Pair = tuple[list[int], list[int]]


def linear_weights(config) -> int:
    """Weights in one decoder layer's linear layers (attention and MLP)."""
    d, heads, kv = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    attention = d * head_dim * (2 * heads + 2 * kv)
    return attention + 3 * d * config.intermediate_size


def lora_weights(config, rank: int, targets: tuple[str, ...]) -> int:
    d, heads, kv = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    inner = config.intermediate_size
    shapes = {
        "q_proj": (d, heads * head_dim),
        "k_proj": (d, kv * head_dim),
        "v_proj": (d, kv * head_dim),
        "o_proj": (heads * head_dim, d),
        "gate_proj": (d, inner),
        "up_proj": (d, inner),
        "down_proj": (inner, d),
    }
    return sum(rank * sum(shapes[t]) for t in targets)


def step_flops(config, pairs: list[Pair], rank: int, targets: tuple[str, ...]) -> int:
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    tokens = sum(len(p) + len(a) for p, a in pairs)
    answers = sum(len(a) for _, a in pairs)
    per_token = layers * (4 * linear_weights(config) + 6 * lora_weights(config, rank, targets))
    window = getattr(config, "sliding_window", None) or 1 << 30
    pairs_attended = sum(sum(min(i + 1, window) for i in range(len(p) + len(a))) for p, a in pairs)
    attention = layers * pairs_attended * heads * head_dim * 2 * (2 + 4)
    output = answers * 4 * config.vocab_size * config.hidden_size
    return tokens * per_token + attention + output


def matmul_peak(seconds: float = 0.5) -> dict[str, float]:
    """Best bf16 GFLOP/s torch reaches with the current thread count: on square matrices,
    and on the shapes a 1,024-token Gemma 3 270M step multiplies (which can run faster on
    CPUs with AMX). The best of any timed run counts, so contention lowers it least."""

    def best(m: int, k: int, n: int) -> float:
        a = torch.randn(m, k, dtype=torch.bfloat16)
        w = torch.randn(n, k, dtype=torch.bfloat16)
        F.linear(a, w)
        fastest = float("inf")
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            start = time.perf_counter()
            F.linear(a, w)
            fastest = min(fastest, time.perf_counter() - start)
        return 2 * m * k * n / fastest / 1e9

    square = max(best(n, n, n) for n in (2048, 4096))
    shaped = max(best(1024, k, n) for k, n in ((640, 1536), (640, 4096), (2048, 640)))
    return {"square": square, "model_shapes": shaped, "peak": max(square, shaped)}
