"""`tunesmith tune --validation ...`, and a tuned model's evaluations and checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from cli_support import Cli

pytest_plugins = ["cli_fixtures"]


def jsonl(path: Path, *pairs: tuple[str, str]) -> Path:
    path.write_text("".join(json.dumps({"text_input": i, "output": o}) + "\n" for i, o in pairs))
    return path


def test_tune_with_validation_then_show_and_choose_checkpoints(cli: Cli, tmp_path):
    data = jsonl(tmp_path / "train.jsonl", ("1", "2"), ("3", "4"), ("5", "6"), ("7", "8"))
    validation = jsonl(tmp_path / "val.jsonl", ("9", "10"), ("11", "12"))
    model = cli.json(
        "tune", str(data), "--validation", str(validation), "--epochs", "2", "--batch-size",
        "2", "--seed", "4", "--best", "--eval-every", "1", "--id", "cli-validated",
    )  # fmt: skip
    assert model["state"] == "ACTIVE"
    assert "validationData" not in model["tuningTask"]  # the Gemini resource is unchanged

    shown = cli.ok("models", "get", "cli-validated")
    assert "Evaluations" in shown and "Checkpoints" in shown
    assert "Val loss" in shown and "Exact match" in shown and "serving" in shown

    listed = cli.json("models", "checkpoints", "cli-validated")["checkpoints"]
    assert [c["epoch"] for c in listed] == [1, 2]
    assert sum(bool(c.get("serving")) for c in listed) == 1

    out = cli.ok("models", "select-checkpoint", "cli-validated", "1")
    assert "now serves its checkpoint of epoch 1" in out
    listed = cli.json("models", "checkpoints", "cli-validated")["checkpoints"]
    assert [c["epoch"] for c in listed if c.get("serving")] == [1]


def test_a_validation_split_and_its_errors(cli: Cli, api: httpx.Client, tmp_path):
    data = jsonl(tmp_path / "train.jsonl", ("1", "2"), ("3", "4"), ("5", "6"), ("7", "8"))
    too_big = cli.run("tune", str(data), "--validation-split", "0.9", "--id", "cli-split-bad")
    assert too_big.returncode == 1
    assert "tuningTask.validationSplit" in too_big.stderr
    assert api.get("/v1beta/tunedModels/cli-split-bad").status_code == 404

    bad = tmp_path / "bad-val.jsonl"
    bad.write_text('{"text_input": "9", "output": "10"}\n{"text_input": "11"}\n')
    done = cli.run("tune", str(data), "--validation", str(bad), "--id", "cli-bad-val")
    assert done.returncode == 1
    assert f"{bad}:2: missing 'output'" in done.stderr
    assert api.get("/v1beta/tunedModels/cli-bad-val").status_code == 404

    model = cli.json(
        "tune", str(data), "--validation-split", "0.25", "--epochs", "1", "--id", "cli-split"
    )
    assert len(model["tuningTask"]["snapshots"]) == 1  # 3 examples left to train on, batch 4
    shown = cli.ok("models", "get", "cli-split")
    assert "Evaluations" in shown
