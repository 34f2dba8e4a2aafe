"""Frozen bf16 weights prepacked in oneDNN's layout, for training's matmuls on a CPU.

A training step multiplies a few dozen rows by every frozen weight twice: forward, and
backward for the input gradient (a frozen weight has no gradient of its own). Handed a
plain bf16 weight, oneDNN reorders it into its blocked layout on every call; at 13 rows
that is about half of each 15 ms product with Gemma 3 270M's 262k x 640 output projection.
Here a weight is packed once per loaded base model, and its transpose is packed too for
the backward pass: two more copies of the weight in memory. Only in bf16 on a CPU whose
oneDNN has bf16 kernels: in float32, torch's own matmul stays, and the exactness tests
compare its sums.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

Matmul = Callable[[Tensor], Tensor]


def onednn_bf16(tensor: Tensor) -> bool:
    """Whether `tensor` is bf16 on a CPU whose oneDNN has bf16 kernels."""
    return (
        tensor.device.type == "cpu"
        and tensor.dtype == torch.bfloat16
        and torch.backends.mkldnn.is_available()
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def prepackable(weight: Tensor) -> bool:
    """Whether `weight` is a frozen 2-D weight oneDNN can pack."""
    return weight.dim() == 2 and not weight.requires_grad and onednn_bf16(weight)


@dataclass(frozen=True)
class _Packed:
    forward: Tensor  # the weight in oneDNN's layout
    backward: Tensor  # its transpose in oneDNN's layout
    source: tuple[int, int]  # the weight's data pointer and version when packed

    def __call__(self, x: Tensor) -> Tensor:
        return _PackedMatmul.apply(x, self)


def _linear(x: Tensor, packed: Tensor) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, None, "none", [], "")


class _PackedMatmul(torch.autograd.Function):
    """x @ weight^T, differentiated with respect to x only."""

    @staticmethod
    def forward(ctx, x: Tensor, packed: _Packed) -> Tensor:
        ctx.packed = packed
        return _linear(x, packed.forward)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return _linear(grad, ctx.packed.backward), None


_packs: dict[int, _Packed] = {}  # by id of a weight still alive (tensors compare by value)


def _source(weight: Tensor) -> tuple[int, int]:
    return weight.data_ptr(), weight._version


def frozen_matmul(weight: Tensor) -> Matmul:
    """x -> x @ weight^T for a weight nothing trains: prepacked where `prepackable`, packed
    once while the weight lives and again if it is changed in place, else F.linear."""
    if not prepackable(weight):
        return partial(F.linear, weight=weight)
    packed = _packs.get(id(weight))
    if packed is None or packed.source != _source(weight):
        if packed is None:
            weakref.finalize(weight, _packs.pop, id(weight), None)
        reorder = torch.ops.mkldnn._reorder_linear_weight
        transposed = reorder(weight.t().contiguous(), 1)
        packed = _Packed(reorder(weight, 1), transposed, _source(weight))
        _packs[id(weight)] = packed
    return packed
