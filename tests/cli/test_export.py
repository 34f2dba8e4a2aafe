"""`tunesmith export` and `import-adapter`: the exported folders load with peft and with
transformers alone and answer as the server does; imports are checked before they exist."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import httpx
import pytest
import torch
from cli_support import Cli, server_text, tune_colours
from peft import PeftModel
from safetensors.torch import load_file, save
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import TINY, wait_for_operation

pytest_plugins = ["cli_fixtures"]

PROMPTS = ("7", "twenty two")
TOKENS = 12
Q_PROJ = "base_model.model.model.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def tuned(api: httpx.Client) -> dict:
    return tune_colours(api, "cli-export")


@pytest.fixture(scope="module")
def peft_dir(cli: Cli, tuned: dict, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "peft"
    assert "Wrote a PEFT adapter for models/tiny-random" in cli.ok(
        "export", "cli-export", "--format", "peft", "--out", str(out)
    )
    return out


def greedy(model, tokenizer, prompt: str, **options) -> str:
    """What a user of the exported folder gets: the chat template frames the prompt."""
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )["input_ids"]
    out = model.generate(ids, max_new_tokens=TOKENS, do_sample=False, **options)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def tune_from(api: httpx.Client, source: str, model_id: str) -> dict:
    body = {
        "tunedModelSource": {"tunedModel": source},
        "tuningTask": {
            "hyperparameters": {"epochCount": 1, "batchSize": 1},
            "trainingData": {"examples": {"examples": [{"textInput": "1", "output": "2"}]}},
        },
    }
    created = api.post("/v1beta/tunedModels", json=body, params={"tunedModelId": model_id})
    assert created.status_code == 200, created.text
    operation = wait_for_operation(api, created.json()["name"])
    assert "response" in operation, operation
    return operation["response"]


def test_peft_export_loads_onto_the_base_model_and_answers_like_the_server(
    api: httpx.Client, tuned: dict, peft_dir: Path, tiny_model_dir: Path
):
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {
        p.name for p in peft_dir.iterdir()
    }
    config = json.loads((peft_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == TINY  # a catalog name, not a server path
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    model = PeftModel.from_pretrained(base, peft_dir)
    tokenizer = AutoTokenizer.from_pretrained(peft_dir)
    for prompt in PROMPTS:
        expected = server_text(api, tuned["name"], prompt, TOKENS)
        assert expected != server_text(api, TINY, prompt, TOKENS)  # the adapter counts
        assert greedy(model, tokenizer, prompt, eos_token_id=tokenizer.eos_token_id) == expected


def test_merged_export_loads_with_transformers_alone_and_answers_like_the_server(
    cli: Cli, api: httpx.Client, tuned: dict, tmp_path
):
    out = tmp_path / "merged"
    cli.ok("export", "tunedModels/cli-export", "--format", "merged", "--out", str(out))
    assert not (out / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    for prompt in PROMPTS:
        assert greedy(model, tokenizer, prompt) == server_text(api, tuned["name"], prompt, TOKENS)


def test_export_refusals(cli: Cli, api: httpx.Client, tuned: dict, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "file").write_text("x")
    refused = cli.run("export", "cli-export", "--out", str(taken))
    assert refused.returncode == 1 and "is not an empty folder" in refused.stderr
    missing = cli.run("export", "no-such-model", "--out", str(tmp_path / "none"))
    assert missing.returncode == 1 and "(NOT_FOUND)" in missing.stderr
    assert not (tmp_path / "none").exists()
    reply = api.get("/v1beta/tunedModels/cli-export:exportAdapter", params={"format": "zip"})
    assert reply.status_code == 400
    assert reply.json()["error"]["details"][0]["fieldViolations"][0]["field"] == "format"


def test_imported_adapter_is_a_tuned_model_like_the_original(
    cli: Cli, api: httpx.Client, tuned: dict, peft_dir: Path, cli_server
):
    created = cli.json(
        "import-adapter", str(peft_dir), "--id", "cli-imported", "--display-name", "Imported"
    )
    assert (created["name"], created["state"], created["baseModel"]) == (
        "tunedModels/cli-imported", "ACTIVE", TINY,
    )  # fmt: skip
    assert "tunedModels/cli-imported" in {m["name"] for m in cli.json("models", "list")}
    [operation] = cli.json("operations", "list", "cli-imported")
    assert operation["done"] and operation["response"]["name"] == "tunedModels/cli-imported"
    for prompt in PROMPTS:
        assert server_text(api, "tunedModels/cli-imported", prompt, TOKENS) == server_text(
            api, tuned["name"], prompt, TOKENS
        )
    further = tune_from(api, "tunedModels/cli-imported", "cli-imported-further")
    assert further["tunedModelSource"]["tunedModel"] == "tunedModels/cli-imported"
    cli.ok("models", "delete", "cli-imported")
    assert not (cli_server.data_dir / "adapters" / "cli-imported").exists()


def test_import_adapter_needs_a_peft_folder(cli: Cli, tmp_path):
    done = cli.run("import-adapter", str(tmp_path))
    assert done.returncode == 1
    assert "has no adapter_config.json or adapter_model.safetensors" in done.stderr


def test_export_needs_read_access_and_an_import_belongs_to_its_importer(
    cli: Cli, cli_server, tuned: dict, peft_dir: Path, tmp_path
):
    bob = cli.env(TUNESMITH_API_KEY=cli_server.new_api_key("bob@example.com"))
    denied = cli.run("export", "cli-export", "--out", str(tmp_path / "bob"), env=bob)
    assert denied.returncode == 1
    assert "You do not have permission" in denied.stderr
    assert not (tmp_path / "bob").exists()
    imported = cli.run("import-adapter", str(peft_dir), "--id", "bobs-adapter", env=bob)
    assert imported.returncode == 0, imported.stderr
    mine = cli.run("models", "list", "--filter", "owner:me", "--json", env=bob)
    assert "tunedModels/bobs-adapter" in {m["name"] for m in json.loads(mine.stdout)}


# ---------------------------------------------------------------- imports that are refused


def archive(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def adapter(peft_dir: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    config = json.loads((peft_dir / "adapter_config.json").read_text())
    return config, load_file(peft_dir / "adapter_model.safetensors")


def changed(adapter, config_changes=None, tensor_changes=None) -> bytes:
    config, tensors = adapter
    new_tensors = {**tensors, **(tensor_changes or {})}
    return archive(
        {
            "adapter_config.json": json.dumps({**config, **(config_changes or {})}).encode(),
            "adapter_model.safetensors": save(
                {k: v for k, v in new_tensors.items() if v is not None}
            ),
        }
    )


REFUSED = {
    "config-not-json": (
        lambda a: archive({"adapter_config.json": b"{nope", "adapter_model.safetensors": save(a[1])}),
        "adapter_config.json", "adapter_config.json is not valid JSON",
    ),
    "not-lora": (
        lambda a: changed(a, {"peft_type": "PREFIX_TUNING"}),
        "adapter_config.json.peft_type", "only LoRA adapters can be imported",
    ),
    "dora": (lambda a: changed(a, {"use_dora": True}), "adapter_config.json.use_dora", "DoRA"),
    "rank-too-big": (lambda a: changed(a, {"r": 4096}), "adapter_config.json.r", "at most 256"),
    "rank-mismatch": (lambda a: changed(a, {"r": 4}), "adapter_config.json.r", "has rank 8"),
    "unknown-base": (
        lambda a: changed(a, {"base_model_name_or_path": "/elsewhere/llama"}),
        "baseModel", "names base model '/elsewhere/llama', which is not one here",
    ),
    "untargeted": (
        lambda a: changed(a, {"target_modules": ["v_proj"]}),
        "adapter_config.json.target_modules", "which target_modules does not name",
    ),
    "wrong-shape": (
        lambda a: changed(a, tensor_changes={f"{Q_PROJ}.lora_A.weight": torch.zeros(8, 32)}),
        "adapter_model.safetensors", "the base model's layer needs (r, 64) and (64, r)",
    ),
    "no-such-layer": (
        lambda a: changed(a, tensor_changes={
            "base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight": torch.zeros(8, 64),
        }),
        "adapter_model.safetensors", "no linear layer 'model.layers.9.self_attn.q_proj'",
    ),
    "stray-tensor": (
        lambda a: changed(a, tensor_changes={"base_model.model.lm_head.weight": torch.zeros(2, 2)}),
        "adapter_model.safetensors", "is not a LoRA weight",
    ),
    "nan": (
        lambda a: changed(a, tensor_changes={f"{Q_PROJ}.lora_B.weight": torch.full((64, 8), torch.nan)}),
        "adapter_model.safetensors", "must be finite",
    ),
    "half-pair": (
        lambda a: changed(a, tensor_changes={f"{Q_PROJ}.lora_B.weight": None}),
        "adapter_model.safetensors", "needs both lora_A and lora_B",
    ),
    "weights-not-safetensors": (
        lambda a: archive({"adapter_config.json": json.dumps(a[0]).encode(), "adapter_model.safetensors": b"junk"}),
        "adapter_model.safetensors", "is not a readable safetensors file",
    ),
    "no-weights": (
        lambda a: archive({"adapter_config.json": json.dumps(a[0]).encode()}),
        "", "it has no adapter_model.safetensors",
    ),
    "config-too-big": (
        lambda a: archive({"adapter_config.json": b" " * (1024**2 + 1), "adapter_model.safetensors": save(a[1])}),
        "", "adapter_config.json is larger than 1 MiB",
    ),
    "not-a-tar": (lambda a: b"garbage", "", "it is not a tar archive"),
    "empty-body": (lambda a: b"", "", "The request body must be a tar archive"),
}  # fmt: skip


@pytest.mark.parametrize("case", REFUSED)
def test_a_bad_adapter_is_refused_naming_the_problem_and_leaves_nothing(
    case: str, adapter, api: httpx.Client, cli_server
):
    build, field, problem = REFUSED[case]
    model_id = f"refused-{case}"
    reply = api.post(
        "/v1beta/tunedModels:importAdapter",
        params={"tunedModelId": model_id},
        content=build(adapter),
        headers={"Content-Type": "application/x-tar"},
    )
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    assert problem in error["message"]
    assert error["details"][0]["fieldViolations"][0].get("field", "") == field
    assert api.get(f"/v1beta/tunedModels/{model_id}").status_code == 404
    assert not (cli_server.data_dir / "adapters" / model_id).exists()


def test_import_parameters_are_checked_and_a_gzipped_archive_may_name_its_base(
    adapter, api: httpx.Client
):
    body = changed(adapter, {"base_model_name_or_path": "/elsewhere/llama"})
    bad_id = api.post(
        "/v1beta/tunedModels:importAdapter", params={"tunedModelId": "Bad_Id"}, content=body
    )
    assert bad_id.status_code == 400
    assert bad_id.json()["error"]["details"][0]["fieldViolations"][0]["field"] == "tunedModelId"
    named = api.post(
        "/v1beta/tunedModels:importAdapter",
        params={"tunedModelId": "named-base", "baseModel": TINY},
        content=gzip.compress(body),
    )
    assert named.status_code == 200, named.text
    assert named.json()["baseModel"] == TINY
