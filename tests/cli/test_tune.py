"""`tunesmith tune`: a file of examples checked row by row, then a job followed to its end."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
from cli_support import TUNESMITH, Cli

pytest_plugins = ["cli_fixtures"]


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def jsonl(*rows: dict) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def test_tune_from_jsonl_shows_progress_until_active(cli: Cli, tmp_path):
    data = write(
        tmp_path / "numbers.jsonl",
        jsonl({"text_input": "1", "output": "2"}, {"input": "3", "output": "4"})
        + "\n"
        + jsonl({"text_input": "5", "output": "6"}, {"input": "7", "output": "8"}),
    )
    done = cli.run(
        "tune", str(data), "--epochs", "2", "--batch-size", "2", "--learning-rate", "0.01",
        "--id", "cli-jsonl", "--display-name", "From JSONL", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    model = json.loads(done.stdout)
    assert model["name"] == "tunedModels/cli-jsonl"
    assert model["state"] == "ACTIVE"
    assert model["displayName"] == "From JSONL"
    assert model["tuningTask"]["hyperparameters"]["epochCount"] == 2
    assert len(model["tuningTask"]["snapshots"]) == 4  # 4 examples x 2 epochs / batch 2
    assert "step 4/4" in done.stderr
    assert "epoch 2/2" in done.stderr
    assert "loss " in done.stderr


def test_tune_from_csv_with_or_without_a_header(cli: Cli, tmp_path):
    rows = '1,2\n"ninety, nine","one\nhundred"\nthree,four\n'
    for header, model_id in (("input,output\n", "cli-csv-header"), ("", "cli-csv-bare")):
        data = write(tmp_path / f"{model_id}.csv", header + rows)
        out = cli.ok("tune", str(data), "--epochs", "1", "--batch-size", "1", "--id", model_id)
        assert f"tunedModels/{model_id} is ACTIVE after 3 steps" in out


def test_bad_rows_are_named_by_file_and_line_and_nothing_is_sent(
    cli: Cli, api: httpx.Client, tmp_path
):
    data = write(
        tmp_path / "bad.jsonl",
        '{"text_input": "1", "output": "2"}\n'
        "\n"
        '{"input": "3"}\n'
        "not json\n"
        "[1, 2]\n"
        '{"text_input": "a", "input": "b", "output": "c"}\n'
        '{"text_input": 5, "output": "6"}\n'
        '{"prompt": "x", "output": "y"}\n'
        '{"text_input": "x", "output": ""}\n',
    )
    done = cli.run("tune", str(data), "--id", "never-created")
    assert done.returncode == 1
    assert f"{data} has 7 bad rows" in done.stderr
    for line, problem in (
        (3, "missing 'output'"),
        (4, "not valid JSON"),
        (5, "expected a JSON object with text_input and output, got a list"),
        (6, "has both 'text_input' and 'input'; give one"),
        (7, "'text_input' must be a string, got a number"),
        (8, "unknown field 'prompt'"),
        (9, "the output is empty"),
    ):
        assert f"{data}:{line}: {problem}" in done.stderr
    assert api.get("/v1beta/tunedModels/never-created").status_code == 404


def test_bad_csv_rows_are_named_by_line(cli: Cli, tmp_path):
    data = write(tmp_path / "bad.csv", 'input,output\n1,2\n"multi\nline",3\n4\n5,6,7\n8,\n')
    done = cli.run("tune", str(data))
    assert done.returncode == 1
    assert f"{data}:5: expected 2 columns (input, output), got 1" in done.stderr
    assert f"{data}:6: expected 2 columns (input, output), got 3" in done.stderr
    assert f"{data}:7: the output is empty" in done.stderr


def test_unusable_files_get_one_clear_line(cli: Cli, tmp_path):
    cases = {
        tmp_path / "missing.jsonl": "does not exist",
        tmp_path: "is a folder",
        write(tmp_path / "latin1.csv", "a,b\nca,fa\xe7ade\n".encode("latin-1")): ":2: the file is not UTF-8",
        write(tmp_path / "empty.jsonl", "\n\n"): "holds no examples",
        write(tmp_path / "array.json", '[{"text_input": "1", "output": "2"}]'): "JSON array",
    }  # fmt: skip
    for path, problem in cases.items():
        done = cli.run("tune", str(path))
        assert done.returncode == 1, path
        assert done.stderr.startswith("error: ") and problem in done.stderr, done.stderr


def test_server_refusals_print_the_message_and_field(cli: Cli, tmp_path):
    data = write(tmp_path / "ok.jsonl", jsonl({"text_input": "1", "output": "2"}))
    rate = cli.run("tune", str(data), "--learning-rate", "5")
    assert rate.returncode == 1
    assert "learningRate must be in (0, 1], got 5.0 (INVALID_ARGUMENT)" in rate.stderr
    base = cli.run("tune", str(data), "--base", "models/nope")
    assert base.returncode == 1
    assert "baseModel 'models/nope' is not a base model that can be tuned" in base.stderr


def test_a_job_that_ends_without_a_model_exits_non_zero_with_the_reason(
    cli: Cli, api: httpx.Client, tmp_path
):
    data = write(
        tmp_path / "long.jsonl", jsonl(*({"input": str(n), "output": "x"} for n in range(4)))
    )
    command = [str(TUNESMITH), "tune", str(data), "--epochs", "500", "--batch-size", "1"]
    with subprocess.Popen(
        [*command, "--id", "cli-cancelled"],
        env=cli.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        operation = _wait_for_steps(api, "cli-cancelled")
        assert api.post(f"/v1beta/{operation}:cancel").status_code == 200
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1
    assert "error: Tuning was cancelled." in stderr
    assert "Traceback" not in stderr


def _wait_for_steps(api: httpx.Client, model_id: str) -> str:
    """The model's operation name, once its job has taken a step."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        listed = api.get(f"/v1beta/tunedModels/{model_id}/operations").json()
        for operation in listed.get("operations", []):
            if operation["metadata"].get("completedSteps"):
                return operation["name"]
        time.sleep(0.2)
    raise TimeoutError(f"{model_id} took no step")
