"""Imported adapters: the config allow-list, bounded weights, bounded archives, and adapter
loading that stays sound when imports run at once (issue 14)."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import threading
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tunesmith.api.adapters import MAX_MEMBERS, unpack
from tunesmith.api.archive_reader import MAX_READ, ArchiveRefused, open_tar
from tunesmith.domain.errors import ServiceError
from tunesmith.training.adapter_config import InvalidAdapter, allowed_config, parse_config
from tunesmith.training.export import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    check_weights,
    linear_shapes,
    read_adapter_config,
    store_imported_adapter,
)

Q_PROJ = "base_model.model.model.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def peft_adapter(tiny_model_dir: Path, tmp_path_factory) -> Path:
    """An adapter as peft saves it: every LoraConfig field written out."""
    out = tmp_path_factory.mktemp("adapter") / "peft"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
        task_type="CAUSAL_LM",
    )  # fmt: skip
    get_peft_model(model, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def peft_config(peft_adapter: Path) -> dict:
    return json.loads((peft_adapter / ADAPTER_CONFIG).read_text())


# ---------------------------------------------------------------- concurrent imports


def test_concurrent_imports_leave_adapter_loading_working(
    peft_adapter: Path, peft_config: dict, tiny_model_dir: Path, tmp_path: Path
):
    """peft's low_cpu_mem_usage load patches nn.Module.register_parameter for the process;
    two imports at once used to leave the patch installed, and every later load failed
    with `Parameter.__new__() got an unexpected keyword argument '_is_hf_initialized'`."""
    original = torch.nn.Module.register_parameter
    config = read_adapter_config(json.dumps(peft_config).encode())
    weights = peft_adapter / ADAPTER_WEIGHTS
    errors: list[BaseException] = []

    def imports(worker: int) -> None:
        for n in range(4):
            try:
                out = tmp_path / f"{worker}-{n}"
                store_imported_adapter(config, weights, tiny_model_dir, "models/tiny", out)
            except BaseException as error:
                errors.append(error)

    threads = [threading.Thread(target=imports, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert torch.nn.Module.register_parameter is original
    assert AutoModelForCausalLM.from_pretrained(tiny_model_dir) is not None


# ---------------------------------------------------------------- the config allow-list


def test_a_config_peft_wrote_is_allowed_and_rebuilt_from_allowed_fields(peft_config: dict):
    allowed = allowed_config(peft_config)
    assert allowed == {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": peft_config["base_model_name_or_path"],
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["q_proj", "v_proj"],
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "init_lora_weights": True,
    }


HOSTILE = {
    **{
        f"init-{init}": ({"init_lora_weights": init}, "init_lora_weights", "cannot be imported")
        for init in ("pissa", "pissa_niter_4", "olora", "loftq", "eva", "corda", "orthogonal")
    },
    "alpha-huge": ({"lora_alpha": 1e300}, "lora_alpha", "at most 1024"),
    "alpha-negative": ({"lora_alpha": -16}, "lora_alpha", "positive number"),
    "alpha-string": ({"lora_alpha": "16"}, "lora_alpha", "positive number"),
    "alpha-bool": ({"lora_alpha": True}, "lora_alpha", "positive number"),
    "alpha-big-int": ({"lora_alpha": 10**400}, "lora_alpha", "at most 1024"),
    "rank-zero": ({"r": 0}, "r", "positive number"),
    "rank-float": ({"r": 4.0}, "r", "positive number"),
    "rank-huge": ({"r": 4096}, "r", "at most 256"),
    "regex-target": (
        {"target_modules": ".{4}(?:[a-z_.0-9]*)*X"}, "target_modules", "patterns"
    ),
    "all-linear": ({"target_modules": "all-linear"}, "target_modules", "patterns"),
    "regex-in-list": ({"target_modules": [".*q_proj"]}, "target_modules", "module names"),
    "no-targets": ({"target_modules": []}, "target_modules", "module names"),
    "too-many-targets": (
        {"target_modules": [f"m{i}" for i in range(65)]}, "target_modules", "1 to 64"
    ),
    "bias": ({"bias": "all"}, "bias", 'bias must be "none"'),
    "fan-in-fan-out": ({"fan_in_fan_out": True}, "fan_in_fan_out", "must be false"),
    "dropout": ({"lora_dropout": 1.5}, "lora_dropout", "[0, 1)"),
    "rslora-string": ({"use_rslora": "yes"}, "use_rslora", "true or false"),
    "rank-pattern": ({"rank_pattern": {"q_proj": 2}}, "rank_pattern", "must be unset"),
    "alpha-pattern": ({"alpha_pattern": {"q_proj": 1e30}}, "alpha_pattern", "must be unset"),
    "exclude-regex": ({"exclude_modules": ".*"}, "exclude_modules", "must be unset"),
    "layers": ({"layers_to_transform": [0]}, "layers_to_transform", "must be unset"),
    "loftq": ({"loftq_config": {"loftq_bits": 4}}, "loftq_config", "must be unset"),
    "eva": ({"eva_config": {"rho": 2.0}}, "eva_config", "must be unset"),
    "dora": ({"use_dora": True}, "use_dora", "DoRA adapters cannot be imported"),
    "megatron": ({"megatron_core": "os"}, "megatron_core", "must be unset"),
    "unknown": ({"future_option": "on"}, "future_option", "must be unset"),
    "task": ({"task_type": "SEQ_CLS"}, "task_type", "CAUSAL_LM"),
}  # fmt: skip


@pytest.mark.parametrize("case", HOSTILE)
def test_a_config_outside_the_allow_list_is_refused_naming_its_field(case: str, peft_config: dict):
    change, field, problem = HOSTILE[case]
    with pytest.raises(InvalidAdapter) as refused:
        allowed_config({**peft_config, **change})
    assert refused.value.where == f"{ADAPTER_CONFIG}.{field}"
    assert problem in refused.value.problem


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_json_constants_that_are_not_numbers_are_refused(constant: str):
    with pytest.raises(InvalidAdapter, match="is not a JSON number"):
        parse_config(b'{"peft_type": "LORA", "lora_alpha": %s}' % constant.encode())


def test_deeply_nested_json_is_refused_not_a_crash():
    with pytest.raises(InvalidAdapter, match="nested too deeply"):
        parse_config(b"[" * 200_000 + b"]" * 200_000)


def test_targets_must_name_linear_layers_of_the_base(peft_config, peft_adapter, tiny_model_dir):
    config = read_adapter_config(
        json.dumps({**peft_config, "target_modules": ["q_proj", "embed_tokens"]}).encode()
    )
    with pytest.raises(InvalidAdapter, match="'embed_tokens', which is no linear layer"):
        store_imported_adapter(
            config, peft_adapter / ADAPTER_WEIGHTS, tiny_model_dir, "x", peft_adapter / "out"
        )


def test_adapters_on_the_output_projection_are_refused(peft_config, peft_adapter, tiny_model_dir):
    config = read_adapter_config(
        json.dumps({**peft_config, "target_modules": ["q_proj", "lm_head"]}).encode()
    )
    with pytest.raises(InvalidAdapter, match="'lm_head', the output projection"):
        store_imported_adapter(
            config, peft_adapter / ADAPTER_WEIGHTS, tiny_model_dir, "x", peft_adapter / "out"
        )


@pytest.mark.parametrize("value", [3e38, -2000.0, float("inf")])
def test_weights_must_be_finite_and_bounded(value, peft_config, peft_adapter, tiny_model_dir):
    tensors = load_file(peft_adapter / ADAPTER_WEIGHTS)
    tensors[f"{Q_PROJ}.lora_B.weight"] = torch.full((64, 4), value)
    with pytest.raises(InvalidAdapter, match=r"finite .* within ±1000"):
        check_weights(allowed_config(peft_config), tensors, linear_shapes(tiny_model_dir))


# ---------------------------------------------------------------- archives


def tar_bytes(members: list[tarfile.TarInfo], data: dict[str, bytes], fmt=tarfile.PAX_FORMAT):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for member in members:
            tar.addfile(member, io.BytesIO(data.get(member.name, b"")))
    return buffer.getvalue()


def member(name: str, size: int = 0, **pax: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.pax_headers = pax
    return info


def refusal(tmp_path: Path, archive: bytes) -> str:
    path = tmp_path / "upload.tar"
    path.write_bytes(archive)
    (tmp_path / "out").mkdir(exist_ok=True)
    with pytest.raises(ServiceError) as refused:
        unpack(path, tmp_path / "out")
    return refused.value.message


def test_a_huge_pax_header_is_refused_before_it_is_read(tmp_path):
    """8 MiB of PAX header gzips to kilobytes; tarfile would read all of it at once."""
    archive = tar_bytes([member("adapter_config.json", comment="x" * 8 * 1024**2)], {})
    message = refusal(tmp_path, gzip.compress(archive))
    assert f"larger than {MAX_READ // 1024} KiB" in message


def test_a_huge_gnu_long_name_is_refused_before_it_is_read(tmp_path):
    long_name = "d/" * (4 * 1024**2) + "adapter_config.json"
    archive = tar_bytes([member(long_name)], {}, fmt=tarfile.GNU_FORMAT)
    assert f"larger than {MAX_READ // 1024} KiB" in refusal(tmp_path, gzip.compress(archive))


def test_too_many_members_are_refused(tmp_path):
    archive = tar_bytes([member(f"f{i}") for i in range(MAX_MEMBERS + 1)], {})
    assert f"more than {MAX_MEMBERS} files" in refusal(tmp_path, archive)


def test_a_gnu_sparse_file_is_refused(tmp_path):
    sparse = member(
        "adapter_config.json", 512,
        **{"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.realsize": "1"},
    )  # fmt: skip
    archive = tar_bytes([sparse], {"adapter_config.json": b"\n" * 512})
    assert "it holds a sparse file" in refusal(tmp_path, archive)


def test_the_decompressed_stream_is_bounded(tmp_path):
    path = tmp_path / "big.tar.gz"
    path.write_bytes(
        gzip.compress(tar_bytes([member("a", 4 * MAX_READ)], {"a": b"\0" * 4 * MAX_READ}))
    )
    with (
        pytest.raises(ArchiveRefused, match="unpacks to more than"),
        open_tar(path, MAX_READ) as tar,
    ):
        tar.getmembers()
