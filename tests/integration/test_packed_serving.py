"""Serving in bf16 on a CPU packs the model's linear layers for oneDNN: the same numbers
as the plain layers, adapters still applied, float32 models left alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from engine_support import save_random_adapter, serial_generate, tiny_spec
from tunesmith.domain.resources import Turn
from tunesmith.serving.engine import Engine
from tunesmith.serving.packed import PackedLinear, can_pack, pack_linear_layers
from tunesmith.serving.sampling import SamplingParams
from tunesmith.training.base_models import load_base_model

pytestmark = pytest.mark.skipif(
    not can_pack(nn.Linear(2, 2, dtype=torch.bfloat16)), reason="no oneDNN bf16 kernels here"
)

GREEDY = SamplingParams(temperature=0.0, top_p=1.0, top_k=0, max_output_tokens=24)


@pytest.fixture(scope="module")
def spec(tiny_model_dir: Path):
    return tiny_spec(tiny_model_dir)


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("shape", [(1, 64), (7, 64), (2, 5, 64)])
def test_a_packed_linear_computes_what_the_linear_does(shape):
    torch.manual_seed(0)
    linear = nn.Linear(64, 96, dtype=torch.bfloat16)
    x = torch.randn(*shape, dtype=torch.bfloat16)

    with torch.inference_mode():
        torch.testing.assert_close(PackedLinear.of(linear)(x), linear(x))


def test_float32_models_are_not_packed(spec, cache_root):
    model = load_base_model(spec, cache_root, "float32").model

    assert pack_linear_layers(model) == 0
    assert not any(isinstance(m, PackedLinear) for m in model.modules())


def test_packed_bf16_serving_gives_the_plain_models_tokens(spec, cache_root, tmp_path):
    adapter = save_random_adapter(spec, cache_root, tmp_path / "adapter", 3, ("q_proj", "up_proj"))
    reference = load_base_model(spec, cache_root, "bfloat16")
    engine = Engine(lambda s: load_base_model(s, cache_root, "bfloat16"))
    turns = [Turn("user", "Write a haiku about the sea.")]

    for adapter_dir in (None, adapter):
        served = engine.generate(spec, adapter_dir, turns, GREEDY)
        assert served == serial_generate(reference, adapter_dir, turns, GREEDY)

    model = engine._scheduler(spec).loaded.model
    assert isinstance(model.get_output_embeddings(), PackedLinear)
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
