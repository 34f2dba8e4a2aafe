"""Linear layers whose weights are prepacked in oneDNN's own layout, for decoding on a CPU.

A decoding step multiplies a few rows by every weight of the model, so it is bound by
reading weights. Handed a plain bf16 weight, oneDNN first reorders it into its blocked
layout on every call; packed once when the model is loaded, each step reads the packed
copy alone. For Gemma 3 270M that took a batch-1 step from about 49 ms to 37 ms with the
same greedy tokens (docs/PERFORMANCE.md). Packing is for inference only (no gradients),
and only in bf16 on a CPU whose oneDNN supports it: in float32 oneDNN would sum in
another order than torch's own matmul, and the serving tests compare float32 outputs
token for token with the serialised algorithm.
"""

from __future__ import annotations

import torch
from torch import nn

from tunesmith.training.prepacked import onednn_bf16


class PackedLinear(nn.Module):
    """`x W^T (+ b)` on a weight W packed for oneDNN."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 1)
        self.bias = bias

    @classmethod
    def of(cls, linear: nn.Linear) -> PackedLinear:
        return cls(linear.weight, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed"


def can_pack(model: nn.Module) -> bool:
    """Whether `model` runs in bf16 on a CPU where oneDNN has bf16 kernels."""
    return onednn_bf16(next(model.parameters()))


def pack_linear_layers(model: nn.Module) -> int:
    """Replaces every `nn.Linear` in `model` (the output projection too) by a
    `PackedLinear`, if `can_pack(model)`; the number replaced. The plain weights of
    decoder layers are freed; a weight tied to the input embeddings stays for them."""
    if not can_pack(model):
        return 0
    found = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear)
    ]
    for parent, name, linear in found:
        setattr(parent, name, PackedLinear.of(linear))
    return len(found)


def pack_output_projection(causal_lm) -> bool:
    """Packs the model's output projection alone, if `can_pack`; whether it did."""
    projection = causal_lm.get_output_embeddings()
    if not can_pack(causal_lm) or not isinstance(projection, nn.Linear):
        return False
    causal_lm.set_output_embeddings(PackedLinear.of(projection))
    return True
