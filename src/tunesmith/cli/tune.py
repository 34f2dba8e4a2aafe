"""`tunesmith tune DATA`: check a file of examples, start tuning, follow it to the end."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.prompt import Prompt

from tunesmith.cli.client import (
    CANCELLED,
    ApiError,
    Client,
    connect,
    console,
    err_console,
    fail,
    print_json,
    reports_errors,
    tuned_model_id,
)
from tunesmith.cli.common import local_settings
from tunesmith.cli.dataset import Example, load_examples

POLL_SECONDS = 0.5
EXAMPLE_FIELD = re.compile(r"examples\.examples\[(\d+)\]")


@reports_errors
def tune(
    data: Path = typer.Argument(
        ...,
        help='JSONL ({"text_input": ..., "output": ...} per line) or CSV (input, output)',
        show_default=False,
    ),
    base: str = typer.Option("", help="Base model (default: TUNESMITH_DEFAULT_BASE_MODEL)"),
    epochs: int | None = typer.Option(None, min=1, help="Epochs (default: the server's)"),
    batch_size: int | None = typer.Option(None, min=1, help="Batch size (default: the server's)"),
    learning_rate: float | None = typer.Option(None, help="Learning rate (default: the server's)"),
    model_id: str | None = typer.Option(
        None, "--id", help="Tuned model id (default: made from the display name)"
    ),
    display_name: str = typer.Option("", help="A name to show"),
    description: str = typer.Option("", help="A description"),
    validation: Path | None = typer.Option(
        None, help="Validation examples, in the training file's formats", show_default=False
    ),
    validation_split: float | None = typer.Option(
        None, help="Hold out this share (0 < x <= 0.5) of the examples for validation"
    ),
    seed: int | None = typer.Option(None, min=0, help="Training seed (default: random)"),
    best: bool = typer.Option(
        False, "--best", help="Serve the epoch with the lowest validation loss, not the last"
    ),
    eval_every: int | None = typer.Option(
        None, min=1, help="Evaluate every N steps too (default: at epoch ends)"
    ),
    detach: bool = typer.Option(False, help="Start tuning and return at once"),
    as_json: bool = typer.Option(False, "--json", help="Print the tuned model as JSON"),
) -> None:
    """Tune a model on a file of examples, with a live progress bar until it is ACTIVE."""
    files = {"trainingData": (data, load_examples(data))}
    if validation is not None:
        files["validationData"] = (validation, load_examples(validation))
    client = connect()
    body = _create_body(
        files["trainingData"][1], base, epochs, batch_size, learning_rate, display_name
    )
    if description:
        body["description"] = description
    body["tuningTask"].update(_evaluation_fields(files, validation_split, seed, best, eval_every))
    operation = _create(client, body, model_id, files)
    name = operation["name"]
    if detach:
        if as_json:
            print_json(operation)
        else:
            console.print(
                f"Tuning started: {name}\nFollow it with: tunesmith operations get {name}"
            )
        return
    try:
        operation = _follow(client, operation)
    except KeyboardInterrupt:
        raise _interrupted(client, name) from None
    _report(operation, as_json)


def _create_body(
    examples: list[Example],
    base: str,
    epochs: int | None,
    batch_size: int | None,
    learning_rate: float | None,
    display_name: str,
) -> dict[str, Any]:
    hyperparameters = {
        key: value
        for key, value in (
            ("epochCount", epochs),
            ("batchSize", batch_size),
            ("learningRate", learning_rate),
        )
        if value is not None
    }
    return {
        "displayName": display_name,
        "baseModel": base or local_settings().default_base_model,
        "tuningTask": {"hyperparameters": hyperparameters, "trainingData": _dataset(examples)},
    }


def _dataset(examples: list[Example]) -> dict[str, Any]:
    return {
        "examples": {
            "examples": [{"textInput": e.text_input, "output": e.output} for e in examples]
        }
    }


def _evaluation_fields(
    files: dict[str, tuple[Path, list[Example]]],
    validation_split: float | None,
    seed: int | None,
    best: bool,
    eval_every: int | None,
) -> dict[str, Any]:
    """The tuningTask extensions (README: "Tunesmith extensions to the API") asked for."""
    fields: dict[str, Any] = {}
    if "validationData" in files:
        fields["validationData"] = _dataset(files["validationData"][1])
    for key, value in (
        ("validationSplit", validation_split),
        ("seed", seed),
        ("evaluationIntervalSteps", eval_every),
        ("checkpointChoice", "BEST_VALIDATION_LOSS" if best else None),
    ):
        if value is not None:
            fields[key] = value
    return fields


def _create(
    client: Client,
    body: dict[str, Any],
    model_id: str | None,
    files: dict[str, tuple[Path, list[Example]]],
) -> dict[str, Any]:
    """The create operation; a refused example is reported at its line in its file."""
    try:
        return client.post("/tunedModels", body, tunedModelId=model_id)
    except ApiError as error:
        error.violations = [_at_line(w, d, files) for w, d in error.violations]
        raise


def _at_line(
    where: str, description: str, files: dict[str, tuple[Path, list[Example]]]
) -> tuple[str, str]:
    match = EXAMPLE_FIELD.search(where)
    dataset = "validationData" if "validationData" in where else "trainingData"
    if match is None or dataset not in files:
        return where, description
    path, examples = files[dataset]
    if int(match[1]) < len(examples):
        return f"{path}:{examples[int(match[1])].line}", description
    return where, description


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("step {task.completed:.0f}/{task.total:.0f}"),
        TextColumn("• epoch {task.fields[epoch]} • loss {task.fields[loss]} •"),
        TimeRemainingColumn(),
        TextColumn("left"),
        console=err_console,
    )


def _follow(client: Client, operation: dict[str, Any]) -> dict[str, Any]:
    """Polls the operation until it is done, drawing its progress."""
    name = operation["name"]
    model = client.get(f"/tunedModels/{tuned_model_id(name.split('/operations/')[0])}")
    epochs = model.get("tuningTask", {}).get("hyperparameters", {}).get("epochCount", 0)
    total = operation["metadata"]["totalSteps"]
    with _progress() as progress:
        task = progress.add_task("waiting", total=total, epoch=f"1/{epochs}", loss="-")
        while not operation.get("done"):
            time.sleep(POLL_SECONDS)
            operation = client.get(f"/{name}")
            metadata = operation.get("metadata", {})
            snapshots = metadata.get("snapshots") or []
            if snapshots:
                last = snapshots[-1]
                progress.update(
                    task,
                    description="tuning",
                    completed=metadata.get("completedSteps", 0),
                    epoch=f"{min(last.get('epoch', 0) + 1, epochs)}/{epochs}",
                    loss=f"{last['meanLoss']:.4f}",
                )
        progress.update(task, description="done" if "response" in operation else "stopped")
    return operation


def _interrupted(client: Client, name: str) -> typer.Exit:
    """Ctrl-C: asks whether to cancel the job or leave it running."""
    model = name.split("/operations/")[0]
    left = f"{model} keeps tuning. Follow it with: tunesmith operations get {name}"
    if not sys.stdin.isatty():  # nobody to ask
        err_console.print(left)
        return typer.Exit(130)
    try:
        choice = Prompt.ask(
            f"Cancel the tuning of {model}, or leave it running?",
            choices=["cancel", "leave"],
            default="leave",
            console=err_console,
        )
    except (KeyboardInterrupt, EOFError):
        choice = "leave"
    if choice == "leave":
        err_console.print(left)
        return typer.Exit(0)
    client.post(f"/{name}:cancel")
    while not client.get(f"/{name}").get("done"):
        time.sleep(POLL_SECONDS)
    err_console.print(f"Cancelled the tuning of {model}.")
    return typer.Exit(130)


def _report(operation: dict[str, Any], as_json: bool) -> None:
    error = operation.get("error")
    if error:
        if error.get("code") == CANCELLED:
            raise fail("Tuning was cancelled.")
        raise fail(f"Tuning failed: {error.get('message', 'no reason given')}")
    model = {k: v for k, v in operation["response"].items() if k != "@type"}
    if as_json:
        print_json(model)
        return
    snapshots = model.get("tuningTask", {}).get("snapshots") or [{}]
    loss = snapshots[-1].get("meanLoss")
    summary = f" after {len(snapshots)} steps, final loss {loss:.4f}" if loss is not None else ""
    console.print(f"[green]{model['name']} is ACTIVE[/green]{summary}.")
    console.print(f'Try it: tunesmith generate {tuned_model_id(model["name"])} "your input"')
