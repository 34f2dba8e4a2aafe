"""What an adapter_config.json may say, whether an import or the server itself wrote it.

A config is allow-listed, never passed through to peft: it names plain LoRA on linear
layers with bounded numbers, and the config the server stores is rebuilt from those fields
alone. peft acts on many more fields when it loads an adapter, some of them on the shared
base model: `init_lora_weights: "pissa"` (or olora, loftq, eva, corda, ...) rewrites the
base weights the first time the adapter is loaded, for every user of that base.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from functools import cache
from typing import Any

ADAPTER_CONFIG = "adapter_config.json"
MAX_RANK = 256
MAX_LORA_ALPHA = 1024
MAX_TARGETS = 64
MODULE_NAME = re.compile(r"[A-Za-z0-9_]{1,100}(?:\.[A-Za-z0-9_]{1,100}){0,15}")
# init_lora_weights values that only initialise the adapter's own matrices (which the stored
# weights then replace); every other value (pissa, olora, loftq, eva, corda, ...) is refused.
SAFE_INITS = (True, False, "gaussian")
# Fields peft writes that say nothing about what the adapter does here; they are dropped.
METADATA = ("auto_mapping", "peft_version", "revision", "inference_mode")
# Friendlier words for options that would need layers or tensors beyond plain A/B matrices.
UNSUPPORTED_OPTIONS = {
    "use_dora": "DoRA adapters",
    "modules_to_save": "adapters that also save whole modules (modules_to_save)",
    "trainable_token_indices": "adapters that train token embeddings",
    "lora_bias": "adapters with LoRA biases",
    "target_parameters": "adapters on parameters rather than modules",
}


class InvalidAdapter(ValueError):
    """An adapter the server cannot serve: `where` names the file or field."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(problem)
        self.where, self.problem = where, problem


def _field(name: str) -> str:
    return f"{ADAPTER_CONFIG}.{name}"


@cache
def lora_defaults() -> dict[str, Any]:
    """peft's LoraConfig defaults: a field at its default changes nothing."""
    from peft import LoraConfig

    defaults: dict[str, Any] = {}
    for spec in dataclasses.fields(LoraConfig):
        if spec.default is not dataclasses.MISSING:
            defaults[spec.name] = spec.default
        elif spec.default_factory is not dataclasses.MISSING:
            defaults[spec.name] = spec.default_factory()
    return defaults


def parse_config(raw: bytes) -> dict[str, Any]:
    """adapter_config.json as a JSON object; NaN and Infinity are not JSON."""

    def refuse_constant(name: str) -> None:
        raise ValueError(f"{name} is not a JSON number")

    try:
        config = json.loads(raw, parse_constant=refuse_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        problem = "it is nested too deeply" if isinstance(error, RecursionError) else error
        raise InvalidAdapter(
            ADAPTER_CONFIG, f"{ADAPTER_CONFIG} is not valid JSON: {problem}"
        ) from None
    if not isinstance(config, dict):
        raise InvalidAdapter(ADAPTER_CONFIG, f"{ADAPTER_CONFIG} must hold a JSON object")
    return config


def allowed_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config to store for a plain LoRA adapter, rebuilt from allow-listed fields;
    InvalidAdapter naming the first field that is not allowed."""
    if config.get("peft_type") != "LORA":
        raise InvalidAdapter(
            _field("peft_type"),
            f"only LoRA adapters can be imported; peft_type is {_shown(config.get('peft_type'))}",
        )
    if config.get("task_type") not in (None, "CAUSAL_LM"):
        raise InvalidAdapter(
            _field("task_type"),
            f"task_type must be CAUSAL_LM, got {_shown(config.get('task_type'))}",
        )
    base = config.get("base_model_name_or_path")
    allowed = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base if isinstance(base, str) and len(base) <= 256 else None,
        "r": _number(config, "r", int, MAX_RANK),
        "lora_alpha": _number(config, "lora_alpha", (int, float), MAX_LORA_ALPHA),
        "target_modules": _targets(config.get("target_modules")),
        "lora_dropout": _dropout(config.get("lora_dropout", 0.0)),
        "bias": _exactly(config, "bias", "none"),
        "fan_in_fan_out": _exactly(config, "fan_in_fan_out", False),
        "use_rslora": _flag(config, "use_rslora"),
        "init_lora_weights": _init(config.get("init_lora_weights", True)),
    }
    for name, value in config.items():
        if name not in allowed and name not in METADATA:
            _check_unset(name, value)
    return allowed


def _number(config: dict[str, Any], name: str, kind, most: int) -> int | float:
    value = config.get(name)
    if (
        isinstance(value, bool)
        or not isinstance(value, kind)
        or (isinstance(value, float) and not math.isfinite(value))
        or not 0 < value <= most
    ):
        raise InvalidAdapter(
            _field(name), f"{name} must be a positive number at most {most}, got {_shown(value)}"
        )
    return value


def _targets(value: Any) -> list[str]:
    if isinstance(value, str):
        raise InvalidAdapter(
            _field("target_modules"),
            "target_modules must be a list of module names; patterns (regular expressions, "
            f"'all-linear') cannot be imported, got {_shown(value)}",
        )
    if (
        not isinstance(value, list)
        or not 0 < len(value) <= MAX_TARGETS
        or not all(isinstance(v, str) and MODULE_NAME.fullmatch(v) for v in value)
    ):
        raise InvalidAdapter(
            _field("target_modules"),
            f"target_modules must be a list of 1 to {MAX_TARGETS} module names (letters, "
            "digits and underscores, dot-separated)",
        )
    return sorted(set(value))


def check_targets(targets: list[str], linear_layers: set[str]) -> None:
    """Every target names linear layers of the base model, as peft matches names: the whole
    module name or its dot-separated end."""
    for target in targets:
        if not any(targets_layer([target], layer) for layer in linear_layers):
            raise InvalidAdapter(
                _field("target_modules"),
                f"target_modules names {target!r}, which is no linear layer of the base model",
            )


def targets_layer(targets: list[str], layer: str) -> bool:
    return any(layer == target or layer.endswith(f".{target}") for target in targets)


def _dropout(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise InvalidAdapter(
            _field("lora_dropout"), f"lora_dropout must be a number in [0, 1), got {_shown(value)}"
        )
    return float(value)


def _exactly(config: dict[str, Any], name: str, only: object) -> object:
    value = config.get(name, only)
    if value != only or type(value) is not type(only):
        raise InvalidAdapter(
            _field(name),
            f"{name} must be {json.dumps(only)} in an imported adapter, got {_shown(value)}",
        )
    return only


def _flag(config: dict[str, Any], name: str) -> bool:
    value = config.get(name, False)
    if not isinstance(value, bool):
        raise InvalidAdapter(_field(name), f"{name} must be true or false, got {_shown(value)}")
    return value


def _init(value: Any) -> bool:
    if not any(value == safe and type(value) is type(safe) for safe in SAFE_INITS):
        raise InvalidAdapter(
            _field("init_lora_weights"),
            f"init_lora_weights {_shown(value)} cannot be imported: only true, false or 'gaussian' "
            "leave the base model's weights untouched",
        )
    return True  # loading replaces the adapter's matrices: its initialisation never shows


def _check_unset(name: str, value: Any) -> None:
    """Any other field must be peft's default or empty: it is then dropped."""
    if value in (None, False, "", [], {}) or (
        name in lora_defaults() and value == lora_defaults()[name]
    ):
        return
    name = name[:100]  # a client's key, named in the error
    what = UNSUPPORTED_OPTIONS.get(name, f"adapters that set {name}")
    raise InvalidAdapter(_field(name), f"{what} cannot be imported; {name} must be unset")


def _shown(value: Any) -> str:
    """A client's value in an error message, cut short."""
    shown = repr(value)
    return shown if len(shown) <= 80 else f"{shown[:77]}..."
