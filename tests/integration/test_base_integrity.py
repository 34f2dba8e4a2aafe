"""The shared base model is never modified by serving an adapter or by an imported one: its
weights hash the same before and after (issue 14: a PiSSA config rewrote them)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from tunesmith.domain.errors import Code, ServiceError
from tunesmith.domain.resources import Turn
from tunesmith.serving.engine import Engine
from tunesmith.serving.sampling import SamplingParams
from tunesmith.training.adapter_config import InvalidAdapter
from tunesmith.training.base_models import BaseModelSpec, LoadedBaseModel, Source, load_base_model
from tunesmith.training.export import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    read_adapter_config,
    store_imported_adapter,
)

TURNS = [Turn("user", "Count on: 1, 2, 3")]
GREEDY = SamplingParams(temperature=0.0, top_p=1.0, top_k=0, max_output_tokens=8)


@pytest.fixture(scope="module")
def spec(tiny_model_dir: Path) -> BaseModelSpec:
    return BaseModelSpec(
        name="models/tiny-integrity", display_name="Tiny", description="", version="001",
        license="Apache-2.0", context_length=2048, output_token_limit=512, temperature=1.0,
        top_p=0.95, top_k=64, locate=lambda _scratch: Source(tiny_model_dir),
    )  # fmt: skip


@pytest.fixture(scope="module")
def served(spec, tmp_path_factory) -> tuple[Engine, list[LoadedBaseModel]]:
    loaded: list[LoadedBaseModel] = []
    cache = tmp_path_factory.mktemp("cache")

    def load(s: BaseModelSpec) -> LoadedBaseModel:
        loaded.append(load_base_model(s, cache))
        return loaded[-1]

    return Engine(load), loaded


@pytest.fixture(scope="module")
def upload(tiny_model_dir: Path, tmp_path_factory) -> Path:
    """An adapter as a client uploads it (peft's own save, random nonzero weights)."""
    out = tmp_path_factory.mktemp("upload") / "adapter"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(5)
    config = LoraConfig(
        r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    get_peft_model(model, config).save_pretrained(out)
    return out


def base_digest(model: torch.nn.Module) -> str:
    """A hash of the base model's own tensors, under their names before peft wrapped them."""
    digest = hashlib.sha256()
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    for name in sorted(tensors):
        if "lora_" in name:
            continue
        tensor = tensors[name].detach().contiguous().reshape(-1)
        digest.update(name.replace(".base_layer", "").encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def imported(upload: Path, tiny_model_dir: Path, dest: Path, **changes) -> Path:
    """What importAdapter stores for the uploaded adapter with its config changed."""
    raw = json.loads((upload / ADAPTER_CONFIG).read_text())
    config = read_adapter_config(json.dumps({**raw, **changes}).encode())
    store_imported_adapter(config, upload / ADAPTER_WEIGHTS, tiny_model_dir, "models/tiny", dest)
    return dest


def test_serving_an_imported_adapter_leaves_the_base_bit_identical(
    served, spec, upload, tiny_model_dir, tmp_path
):
    engine, loaded = served
    plain = engine.generate(spec, None, TURNS, GREEDY)
    before = base_digest(loaded[0].model)

    adapter = imported(upload, tiny_model_dir, tmp_path / "adapter")
    tuned = engine.generate(spec, adapter, TURNS, GREEDY)

    assert tuned != plain  # the adapter was applied...
    assert base_digest(loaded[0].model) == before  # ...and the base is untouched
    assert engine.generate(spec, None, TURNS, GREEDY) == plain


@pytest.mark.parametrize("init", ["pissa", "olora", "corda", "eva", "loftq"])
def test_an_adapter_that_rewrites_base_weights_is_refused_at_import(
    init, upload, tiny_model_dir, tmp_path
):
    with pytest.raises(InvalidAdapter) as refused:
        imported(upload, tiny_model_dir, tmp_path / "adapter", init_lora_weights=init)
    assert refused.value.where == f"{ADAPTER_CONFIG}.init_lora_weights"
    assert not (tmp_path / "adapter").exists()


def test_a_stored_pissa_adapter_is_never_loaded_onto_the_served_base(
    served, spec, upload, tmp_path
):
    """An adapter stored before imports were checked: serving checks the config again."""
    engine, loaded = served
    engine.generate(spec, None, TURNS, GREEDY)
    before = base_digest(loaded[0].model)
    stored = tmp_path / "legacy"
    shutil.copytree(upload, stored)
    config = json.loads((stored / ADAPTER_CONFIG).read_text())
    (stored / ADAPTER_CONFIG).write_text(json.dumps({**config, "init_lora_weights": "pissa"}))

    with pytest.raises(ServiceError, match="init_lora_weights 'pissa' cannot be imported") as e:
        engine.generate(spec, stored, TURNS, GREEDY)
    assert e.value.code is Code.FAILED_PRECONDITION

    assert base_digest(loaded[0].model) == before
