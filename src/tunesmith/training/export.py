"""Adapters in and out of Tunesmith.

Out: a tuned model as a PEFT adapter folder (what `peft` loads onto the base model) or as
the base model with the adapter merged in (what `transformers` loads alone). Both carry the
base model's tokenizer with a chat template that renders Tunesmith's own prompt frame, so
`apply_chat_template` gives the exact token ids the server generates from.

In: a PEFT LoRA adapter from anywhere, checked against the base model's layer shapes
before it is stored where the worker stores the adapters it trains.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tunesmith.domain.resources import Turn
from tunesmith.training.adapter_config import (
    ADAPTER_CONFIG,
    MAX_RANK,
    InvalidAdapter,
    allowed_config,
    check_targets,
    parse_config,
    targets_layer,
)
from tunesmith.training.model_builds import building_models, check_stored_config
from tunesmith.training.prompt import PromptCodec, detect_prompt_format

ADAPTER_WEIGHTS = "adapter_model.safetensors"
LORA_KEY = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<matrix>[AB])\.weight")
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_WEIGHT = 1000.0  # |value| of any imported LoRA weight; trained ones stay near 1


@dataclass(frozen=True)
class SamplingDefaults:
    temperature: float
    top_p: float
    top_k: int


# ---------------------------------------------------------------- export


def chat_template(codec: PromptCodec) -> str:
    """A Jinja chat template rendering `codec`'s prompt frame, BOS token included exactly
    when the codec adds one."""
    fmt = codec.format

    def literal(text: str) -> str:
        return "{{ " + json.dumps(text) + " }}"

    bare = codec.tokenizer(fmt.render([Turn("user", "")]), add_special_tokens=False)["input_ids"]
    adds_bos = len(codec.encode_prompt([Turn("user", "")])) > len(bare)
    return (
        ("{{ bos_token }}" if adds_bos else "")
        + "{% for message in messages %}{% if message['role'] == 'user' %}"
        + literal(fmt.user_open)
        + "{{ message['content'] }}"
        + literal(fmt.user_close)
        + "{% else %}"
        + literal(fmt.model_open)
        + "{{ message['content'] }}"
        + literal(fmt.model_close)
        + "{% endif %}{% endfor %}{% if add_generation_prompt %}"
        + literal(fmt.model_open)
        + "{% endif %}"
    )


def _save_tokenizer(base_folder: Path, out: Path) -> PromptCodec:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_folder)
    codec = PromptCodec(tokenizer, detect_prompt_format(tokenizer))
    tokenizer.chat_template = chat_template(codec)
    tokenizer.save_pretrained(out)
    return codec


def export_peft(adapter: Path, base_folder: Path, base_name: str, out: Path) -> None:
    """The adapter as trained, its config naming the catalog base model rather than a path
    on the server, with the tokenizer beside it."""
    out.mkdir(parents=True, exist_ok=True)
    config = json.loads((adapter / ADAPTER_CONFIG).read_text())
    config["base_model_name_or_path"] = base_name
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    shutil.copyfile(adapter / ADAPTER_WEIGHTS, out / ADAPTER_WEIGHTS)
    _save_tokenizer(base_folder, out)


def export_merged(adapter: Path, base_folder: Path, out: Path, defaults: SamplingDefaults) -> None:
    """The base model's float32 weights with the adapter merged in. Its generation config
    stops where the server stops and samples with the tuned model's defaults."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    check_stored_config(adapter)
    with building_models():
        base = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
        merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    codec = _save_tokenizer(base_folder, out)
    generation = merged.generation_config
    generation.eos_token_id = codec.stop_token_ids
    generation.do_sample = defaults.temperature > 0
    generation.temperature = defaults.temperature
    generation.top_p = defaults.top_p
    generation.top_k = defaults.top_k
    merged.save_pretrained(out)


# ---------------------------------------------------------------- import


def linear_shapes(base_folder: Path) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of every linear layer of the base model that an adapter
    may adapt (all but the output projection: see `output_projection`)."""
    return _linear_layers(base_folder)[0]


def output_projection(base_folder: Path) -> str:
    """The name of the base model's output projection. Adapters on it are refused: serving
    computes the logits of a batch's rows through it in other groupings than the decoder's
    tokens (a step's rows with new prompts' last tokens), which a per-row adapter cannot
    follow."""
    return _linear_layers(base_folder)[1]


@lru_cache(maxsize=8)
def _linear_layers(base_folder: Path) -> tuple[dict[str, tuple[int, int]], str]:
    """`linear_shapes` and `output_projection`, read from one weightless copy of the model."""
    module = _skeleton(base_folder)
    output = module.get_output_embeddings()
    shapes, output_name = {}, ""
    for name, layer in module.named_modules():
        if layer is output:
            output_name = name
        elif isinstance(layer, torch.nn.Linear):
            shapes[name] = (layer.in_features, layer.out_features)
    return shapes, output_name


def _skeleton(base_folder: Path):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base_folder)
    with building_models(), torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def read_adapter_config(raw: bytes) -> dict[str, Any]:
    """adapter_config.json's allow-listed fields, if it describes a plain LoRA adapter for
    causal LMs (see adapter_config.py)."""
    return allowed_config(parse_config(raw))


def read_adapter_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise InvalidAdapter(
            ADAPTER_WEIGHTS, f"{ADAPTER_WEIGHTS} is not a readable safetensors file: {error}"
        ) from None
    if not tensors:
        raise InvalidAdapter(ADAPTER_WEIGHTS, f"{ADAPTER_WEIGHTS} holds no tensors")
    return tensors


def check_weights(
    config: dict[str, Any], tensors: dict[str, torch.Tensor], shapes: dict[str, tuple[int, int]]
) -> None:
    """Every tensor is the A or B matrix of a LoRA on a targeted linear layer of the base
    model, with the layer's shapes and one rank, in floating point and finite."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = LORA_KEY.fullmatch(key)
        if match is None:
            raise InvalidAdapter(
                ADAPTER_WEIGHTS,
                f"tensor {key!r} is not a LoRA weight (base_model.model.<module>.lora_A.weight "
                "or .lora_B.weight)",
            )
        if tensor.dtype not in FLOAT_DTYPES or not _bounded(tensor):
            raise InvalidAdapter(
                ADAPTER_WEIGHTS,
                f"tensor {key!r} must be finite float32, float16 or bfloat16 with values "
                f"within ±{MAX_WEIGHT:g} ({tensor.dtype})",
            )
        pairs.setdefault(match["module"], {})[match["matrix"]] = tensor
    for module, pair in pairs.items():
        _check_module(config, module, pair, shapes)


def _bounded(tensor: torch.Tensor) -> bool:
    if tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor)
    finite = bool(torch.isfinite(tensor).all())
    return finite and float(low) >= -MAX_WEIGHT and float(high) <= MAX_WEIGHT


def _check_module(
    config: dict[str, Any],
    module: str,
    pair: dict[str, torch.Tensor],
    shapes: dict[str, tuple[int, int]],
) -> None:
    if module not in shapes:
        raise InvalidAdapter(
            ADAPTER_WEIGHTS, f"the base model has no linear layer {module!r} for the adapter"
        )
    if not targets_layer(config["target_modules"], module):
        raise InvalidAdapter(
            f"{ADAPTER_CONFIG}.target_modules",
            f"the weights adapt {module!r}, which target_modules does not name",
        )
    if set(pair) != {"A", "B"}:
        raise InvalidAdapter(ADAPTER_WEIGHTS, f"{module!r} needs both lora_A and lora_B weights")
    a, b = pair["A"], pair["B"]
    rank = a.shape[0] if a.dim() == 2 else 0
    in_features, out_features = shapes[module]
    if (
        not 0 < rank <= MAX_RANK
        or tuple(a.shape) != (rank, in_features)
        or tuple(b.shape) != (out_features, rank)
    ):
        raise InvalidAdapter(
            ADAPTER_WEIGHTS,
            f"{module!r} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}; the base "
            f"model's layer needs (r, {in_features}) and ({out_features}, r) with r <= {MAX_RANK}",
        )
    if rank != config["r"]:
        raise InvalidAdapter(
            f"{ADAPTER_CONFIG}.r", f"r is {config['r']} but {module!r} has rank {rank}"
        )


def store_imported_adapter(
    config: dict[str, Any], weights: Path, base_folder: Path, base_name: str, out: Path
) -> None:
    """Checks an adapter (its config read by `read_adapter_config`) against the base model
    and writes it to `out` in the layout the worker writes."""
    config = dict(config)
    shapes = linear_shapes(base_folder)
    output = output_projection(base_folder)
    if targets_layer(config["target_modules"], output):
        raise InvalidAdapter(
            f"{ADAPTER_CONFIG}.target_modules",
            f"target_modules names {output!r}, the output projection: adapters on it "
            "cannot be served",
        )
    check_targets(config["target_modules"], set(shapes))
    tensors = read_adapter_weights(weights)
    check_weights(config, tensors, shapes)
    config["base_model_name_or_path"] = base_name
    config["inference_mode"] = True
    out.mkdir(parents=True, exist_ok=True)
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    save_file({k: t.contiguous() for k, t in tensors.items()}, out / ADAPTER_WEIGHTS)
    _check_peft_loads(base_folder, out)


def _check_peft_loads(base_folder: Path, adapter: Path) -> None:
    """peft itself reads the stored adapter onto a weightless base model, as serving will."""
    from peft import PeftModel

    try:
        with building_models():
            PeftModel.from_pretrained(_skeleton(base_folder), adapter, low_cpu_mem_usage=True)
    except Exception as error:  # peft raises many kinds; each means the adapter is unusable
        raise InvalidAdapter(ADAPTER_CONFIG, f"peft cannot load the adapter: {error}") from None
