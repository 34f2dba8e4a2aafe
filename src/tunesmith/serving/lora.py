"""LoRA adapters served side by side: every row of a batch may use a different adapter.

The base model is never wrapped or changed. Each linear layer that a resident adapter
adapts gets a forward hook adding `B (A x) * scale` for the rows' adapters. All resident
adapters' A matrices are concatenated along the rank (`A_cat`, [R, in]), their B matrices
with the scale folded in likewise (`B_cat`, [out, R]), and a [rows, R] mask of ones picks
each row's own block: `((x A_cat^T) * mask) B_cat^T`. That is two small matmuls per layer
whatever the mix of adapters in the batch, with no per-row gather. A row without an adapter
has an all-zero mask row and gets exactly the base layer's output. When every row of a pass
uses one adapter (a client alone, or many on one tuned model), that adapter's own columns
are used with no mask: with 8 adapters resident, a one-row step reads an eighth of the
adapter matrices. A forward pass that runs several layers reading the same input as one
matmul (q/k/v, gate/up) adds their deltas with `AdapterBank.adapted`, never calling the
layers' modules (their hooks then stay idle): A matrices stacked, B matrices
block-diagonal, still two matmuls. The stacks are copies, and a block-diagonal B is mostly
zeros: for 8 rank-8 adapters on every projection of Gemma 3 270M, about 135 MB of adapter
matrices instead of 61, and up to about 9 MB more per adapter once a pass has used it
alone (until the next adapter loads).

Adapters are read with safetensors, never with peft: a config can make peft rewrite base
weights on load (`init_lora_weights: "pissa"`), and serving needs none of that machinery.
"""

from __future__ import annotations

import json
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from tunesmith.serving.packed import PackedLinear
from tunesmith.training.model_builds import check_stored_config

NO_ADAPTER = 0  # the slot of rows that use the base model alone
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
LORA_KEY = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<matrix>[AB])\.weight")
PEFT_DEFAULT_RANK = PEFT_DEFAULT_ALPHA = 8  # LoraConfig's, for configs that leave them out
# Options that change the computation beyond `B (A x) * scale` on linear layers.
UNSERVABLE_OPTIONS = {
    "use_dora": "DoRA adapters",
    "lora_bias": "adapters with LoRA biases",
    "modules_to_save": "adapters that also save whole modules (modules_to_save)",
    "trainable_token_indices": "adapters that train token embeddings",
    "target_parameters": "adapters on parameters rather than modules",
    "layer_replication": "adapters that replicate layers",
    "fan_in_fan_out": "adapters with transposed (fan_in_fan_out) weights",
}


Linear = nn.Linear | PackedLinear  # a base model's linear layer, its weight packed or not


class AdapterError(ValueError):
    """An adapter folder the engine cannot serve."""


@dataclass(frozen=True)
class AdapterWeights:
    """One adapter read from disk: per module, A [r, in] and B * scale [out, r], float32."""

    key: str
    rank: int
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]]


def adapter_key(folder: Path) -> str:
    """Identifies an adapter's content: its folder, and its weights file's size and time (a
    folder rewritten in place is a new adapter)."""
    stat = (folder / ADAPTER_WEIGHTS).stat()
    return f"{folder.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def read_adapter(folder: Path) -> AdapterWeights:
    """The adapter in `folder` (peft's layout), with scales as peft computes them."""
    try:
        # Configs are allow-listed at import; this also refuses one stored before that was.
        check_stored_config(folder)
        key = adapter_key(folder)
        config = json.loads((folder / ADAPTER_CONFIG).read_text())
        tensors = load_file(folder / ADAPTER_WEIGHTS)
    except (OSError, ValueError) as error:  # InvalidAdapter is a ValueError
        raise AdapterError(f"the adapter in {folder.name} cannot be read: {error}") from None
    for option, what in UNSERVABLE_OPTIONS.items():
        if config.get(option):
            raise AdapterError(f"{what} cannot be served")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        match = LORA_KEY.fullmatch(name)
        if match is None:
            raise AdapterError(f"tensor {name!r} is not a LoRA A or B weight")
        pairs.setdefault(match["module"], {})[match["matrix"]] = tensor
    modules = {module: _scaled(config, module, pair) for module, pair in pairs.items()}
    rank = max(a.shape[0] for a, _ in modules.values())
    return AdapterWeights(key, rank, modules)


def _scaled(config: dict, module: str, pair: dict[str, torch.Tensor]):
    if set(pair) != {"A", "B"}:
        raise AdapterError(f"{module!r} needs both lora_A and lora_B weights")
    a, b = pair["A"].float(), pair["B"].float()
    rank = _pattern_value(
        config.get("rank_pattern") or {}, module, config.get("r", PEFT_DEFAULT_RANK)
    )
    alpha = _pattern_value(
        config.get("alpha_pattern") or {}, module, config.get("lora_alpha", PEFT_DEFAULT_ALPHA)
    )
    if rank != a.shape[0] or a.dim() != 2 or b.shape[1:] != a.shape[:1]:
        raise AdapterError(f"{module!r}: weights of rank {a.shape[0]}, config rank {rank}")
    if not isinstance(alpha, int | float) or not math.isfinite(alpha):
        raise AdapterError(f"{module!r}: lora_alpha must be a finite number")
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    return a.contiguous(), (b * scale).contiguous()


def _pattern_value(pattern: dict, module: str, default):
    """peft's rank_pattern/alpha_pattern lookup: a key matches a module name's end."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


class _LoraLayer:
    """The hook on one adapted linear layer, and the resident adapters' matrices for it."""

    def __init__(self, bank: AdapterBank, name: str, linear: Linear) -> None:
        self.bank = bank
        self.name = name
        self.linear = linear
        self.a_cat = self.b_cat = None
        self.handle = linear.register_forward_hook(self._hook)

    def _hook(self, _module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return self.bank.adapted((self.name,), args[0], output)

    def rebuild(self, slots: list[AdapterWeights | None], ranks: list[int], device) -> None:
        out_features, in_features = self.linear.out_features, self.linear.in_features
        blocks_a, blocks_b = [], []
        for weights, rank in zip(slots, ranks, strict=True):
            pair = weights.modules.get(self.name) if weights else None
            if pair is None:
                blocks_a.append(torch.zeros(rank, in_features))
                blocks_b.append(torch.zeros(out_features, rank))
            else:
                blocks_a.append(nn.functional.pad(pair[0], (0, 0, 0, rank - pair[0].shape[0])))
                blocks_b.append(nn.functional.pad(pair[1], (0, rank - pair[1].shape[1])))
        self.a_cat = torch.cat(blocks_a).to(device)
        self.b_cat = torch.cat(blocks_b, dim=1).to(device)


class AdapterBank:
    """Up to `capacity` adapters resident on one base model, least recently used evicted
    first, never one that a running request has pinned. Used from one thread only (the
    base model's scheduler)."""

    def __init__(
        self,
        model: nn.Module,
        capacity: int,
        on_load: Callable[[], None] = lambda: None,
        on_evict: Callable[[], None] = lambda: None,
    ) -> None:
        self._model = model
        self._capacity = capacity
        self._on_load, self._on_evict = on_load, on_evict
        self._slots: list[AdapterWeights | None] = [None]  # slot 0: no adapter
        self._by_key: dict[str, int] = {}
        self._pins: dict[int, int] = {}
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._layers: dict[str, _LoraLayer] = {}
        self._stacks: dict[
            tuple[tuple[str, ...], int | None], tuple[torch.Tensor, torch.Tensor, int] | None
        ] = {}
        self._offsets: list[tuple[int, int]] = [(0, 0)]  # each slot's columns of A_cat
        self._width = 0  # R: the resident adapters' ranks summed
        # set around each pass by `rows`: the row mask, or the one slot every row uses, and
        # the mask repeated for stacked layers
        self._mask: torch.Tensor | None = None
        self._only: int | None = None
        self._repeated: dict[int, torch.Tensor | None] = {}

    def resident(self, key: str) -> bool:
        return key in self._by_key

    def pinned(self) -> int:
        return len([slot for slot, count in self._pins.items() if count])

    def can_acquire(self, key: str | None) -> bool:
        return (
            key is None
            or key in self._by_key
            or len(self._by_key) < self._capacity
            or any(not self._pins.get(slot) for slot in self._by_key.values())
        )

    def acquire(self, key: str | None, load: Callable[[], AdapterWeights]) -> int:
        """The slot of adapter `key` (loading it, evicting an unpinned one if full), pinned
        until `release`. Call `can_acquire` first."""
        if key is None:
            return NO_ADAPTER
        slot = self._by_key.get(key)
        if slot is None:
            slot = self._install(load())
        self._recent[key] = None
        self._recent.move_to_end(key)
        self._pins[slot] = self._pins.get(slot, 0) + 1
        return slot

    def release(self, slot: int) -> None:
        if slot != NO_ADAPTER:
            self._pins[slot] -= 1

    @contextmanager
    def rows(self, slots: list[int], flat: bool = False) -> Iterator[None]:
        """Each row's adapter slot for the passes run inside: one slot per row, or one per
        token of a flat pass (a single sequence). Not nested: leaving it clears the rows."""
        used = set(slots)
        self._only = used.pop() if len(used) == 1 and NO_ADAPTER not in used else None
        mask = self._row_mask(slots) if self._only is None else None
        self._mask = mask.transpose(0, 1) if flat and mask is not None else mask
        self._repeated = {1: self._mask}
        try:
            yield
        finally:
            self._mask, self._only, self._repeated = None, None, {}

    def adapted(
        self, names: tuple[str, ...], x: torch.Tensor, output: torch.Tensor
    ) -> torch.Tensor:
        """The `output` of linear layers `names` for input `x` (their outputs side by side,
        in that order), plus each row's adapter deltas, added in place (computed in
        float32, rounded once to output's dtype)."""
        if self._only is not None:  # every row on one adapter: its own columns, no mask
            stack = self._stack(names, self._only)
            if stack is None:
                return output
            a_t, b_t, _ = stack
            return output.add_(torch.matmul(torch.matmul(x.to(a_t.dtype), a_t), b_t))
        stack = self._stack(names) if self._mask is not None else None
        if stack is None:
            return output
        a_t, b_t, count = stack
        mask = self._repeated.get(count)
        if mask is None:
            mask = self._repeated[count] = self._mask.repeat(1, 1, count)
        hidden = torch.matmul(x.to(a_t.dtype), a_t).mul_(mask)
        return output.add_(torch.matmul(hidden, b_t))

    def _stack(
        self, names: tuple[str, ...], slot: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, int] | None:
        """The adapted ones of `names`' A matrices stacked, their B matrices block-diagonal
        (a layer not adapted adds zero rows), both transposed for `x @ A^T @ B^T`, and how
        many are adapted; None if none is. Every resident adapter's columns, or `slot`'s
        alone (the layers its adapter adapts). Built once per set of resident adapters:
        views for one layer, copies for stacked layers (for one rank-8 adapter on every
        projection of Gemma 3 270M, about 9 MB)."""
        key = (names, slot)
        if key not in self._stacks:
            adapted = self._slots[slot].modules if slot is not None else self._layers
            layers = [self._layers.get(name) if name in adapted else None for name in names]
            present = [layer for layer in layers if layer]
            start, end = self._offsets[slot] if slot is not None else (0, self._width)
            stack = None
            if len(names) == 1 and present:  # views of the layer's own matrices
                layer = present[0]
                stack = (layer.a_cat[start:end].T, layer.b_cat[:, start:end].T, 1)
            elif present:
                device = self._model.device
                blocks = [
                    layer.b_cat[:, start:end]
                    if layer
                    else torch.zeros(self._linear(n).out_features, 0, device=device)
                    for n, layer in zip(names, layers, strict=True)
                ]
                a = torch.cat([layer.a_cat[start:end] for layer in present])
                b = torch.block_diag(*blocks)
                stack = (a.T.contiguous(), b.T.contiguous(), len(present))
            self._stacks[key] = stack
        return self._stacks[key]

    def _row_mask(self, slots: list[int]) -> torch.Tensor | None:
        """The [rows, 1, R] mask selecting each row's adapter; None if no row has one."""
        if not any(slots):
            return None
        mask = torch.zeros(len(slots), 1, self._width, device=self._model.device)
        for row, slot in enumerate(slots):
            start, end = self._offsets[slot]
            mask[row, 0, start:end] = 1.0
        return mask

    def _install(self, weights: AdapterWeights) -> int:
        for name, (a, b) in weights.modules.items():
            self._check_layer(name, a, b)
        if len(self._by_key) >= self._capacity:
            self._evict_one()
        slot = next((i for i, s in enumerate(self._slots) if i and s is None), len(self._slots))
        if slot == len(self._slots):
            self._slots.append(None)
        self._slots[slot] = weights
        self._by_key[weights.key] = slot
        self._pins[slot] = 0
        self._rebuild()
        self._on_load()
        return slot

    def _evict_one(self) -> None:
        victim = next(k for k in self._recent if not self._pins.get(self._by_key[k]))
        slot = self._by_key.pop(victim)
        del self._recent[victim]
        self._slots[slot] = None
        self._pins.pop(slot, None)
        self._on_evict()

    def _rebuild(self) -> None:
        """Recomputes every adapted layer's concatenated matrices and the slots' offsets."""
        ranks = [w.rank if w else 0 for w in self._slots]
        self._offsets, self._width = [], 0
        for rank in ranks:
            self._offsets.append((self._width, self._width + rank))
            self._width += rank
        wanted = {name for w in self._slots if w for name in w.modules}
        for name in list(self._layers):
            if name not in wanted:
                self._layers.pop(name).handle.remove()
        for name in wanted:
            layer = self._layers.get(name)
            if layer is None:
                layer = self._layers[name] = _LoraLayer(self, name, self._linear(name))
            layer.rebuild(self._slots, ranks, self._model.device)
        self._stacks.clear()

    def _linear(self, name: str) -> Linear:
        try:
            linear = self._model.get_submodule(name)
        except AttributeError:
            linear = None
        if not isinstance(linear, Linear):
            raise AdapterError(f"the base model has no linear layer {name!r}")
        return linear

    def _check_layer(self, name: str, a: torch.Tensor, b: torch.Tensor) -> None:
        linear = self._linear(name)
        if linear is self._model.get_output_embeddings():  # refused at import too
            raise AdapterError(f"adapters on the output projection {name!r} cannot be served")
        out_features, in_features = linear.out_features, linear.in_features
        if a.shape[1] != in_features or b.shape[0] != out_features:
            raise AdapterError(
                f"{name!r}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not fit the "
                f"layer's ({out_features}, {in_features}) weight"
            )
