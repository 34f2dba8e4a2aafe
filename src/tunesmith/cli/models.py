"""`tunesmith models list|get|update|delete`: tuned models on the server."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from tunesmith.cli.client import (
    CliError,
    connect,
    console,
    details_table,
    print_json,
    print_table,
    reports_errors,
    short_time,
    tuned_model_id,
)
from tunesmith.cli.common import JSON_OPTION

models_app = typer.Typer(
    help="Tuned models: list, get, update, delete, checkpoints.", no_args_is_help=True
)


@models_app.command("list")
@reports_errors
def list_models(
    text_filter: str = typer.Option(
        "", "--filter", help="owner:me, writers:me, readers:me, readers:everyone, or words"
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """The tuned models you may read."""
    models = list(connect().pages("/tunedModels", "tunedModels", filter=text_filter or None))
    if as_json:
        print_json(models)
        return
    rows = [
        [
            tuned_model_id(model["name"]),
            escape(model.get("displayName", "")),
            _state(model),
            _base(model),
            short_time(model.get("createTime")),
        ]
        for model in models
    ]
    columns = ["Model", "Display name", "State", "Base model", "Created (UTC)"]
    print_table(columns, rows, "No tuned models.")


@models_app.command("get")
@reports_errors
def get_model(
    model: str = typer.Argument(..., help="tunedModels/ID or ID"), as_json: bool = JSON_OPTION
) -> None:
    """A tuned model's details, with its evaluations and checkpoints when it has them."""
    client = connect()
    path = f"/tunedModels/{tuned_model_id(model)}"
    found = client.get(path)
    if as_json:
        print_json(found)
        return
    console.print(_details(found))
    evaluations = client.get(f"{path}/evaluations").get("evaluations", [])
    if evaluations:
        console.print("\n[bold]Evaluations[/bold]")
        print_table(EVALUATION_COLUMNS, [_evaluation_row(e) for e in evaluations], "")
    checkpoints = client.get(f"{path}/checkpoints").get("checkpoints", [])
    if checkpoints:
        console.print("\n[bold]Checkpoints[/bold]")
        _print_checkpoints(checkpoints)


@models_app.command("checkpoints")
@reports_errors
def list_checkpoints(
    model: str = typer.Argument(..., help="tunedModels/ID or ID"), as_json: bool = JSON_OPTION
) -> None:
    """The adapters kept at epoch ends; the one marked serving answers generateContent."""
    found = connect().get(f"/tunedModels/{tuned_model_id(model)}/checkpoints")
    if as_json:
        print_json(found)
    else:
        _print_checkpoints(found.get("checkpoints", []))


@models_app.command("select-checkpoint")
@reports_errors
def select_checkpoint(
    model: str = typer.Argument(..., help="tunedModels/ID or ID"),
    epoch: int = typer.Argument(..., min=1, help="The epoch whose adapter to serve"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Serve the adapter kept at the end of EPOCH from the next request on."""
    name = f"tunedModels/{tuned_model_id(model)}"
    found = connect().post(
        f"/{name}:selectCheckpoint", {"checkpoint": f"{name}/checkpoints/{epoch}"}
    )
    if as_json:
        print_json(found)
        return
    console.print(f"{name} now serves its checkpoint of epoch {epoch}.")
    _print_checkpoints(found.get("checkpoints", []))


EVALUATION_COLUMNS = ["Epoch", "Step", "Train loss", "Val loss", "Exact match"]
CHECKPOINT_COLUMNS = ["Epoch", "Step", "Val loss", "Exact match", "Serving", "Created (UTC)"]


def _loss(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _share(value: float | None) -> str:
    return "" if value is None else f"{value:.0%}"


def _evaluation_row(evaluation: dict[str, Any]) -> list[str]:
    return [
        str(evaluation.get("epoch", 0)),
        str(evaluation["step"]),
        _loss(evaluation.get("trainingLoss")),
        _loss(evaluation.get("validationLoss")),
        _share(evaluation.get("exactMatch")),
    ]


def _print_checkpoints(checkpoints: list[dict[str, Any]]) -> None:
    rows = [
        [
            str(c["epoch"]),
            str(c["step"]),
            _loss(c.get("validationLoss")),
            _share(c.get("exactMatch")),
            "[green]serving[/green]" if c.get("serving") else "",
            short_time(c.get("createTime")),
        ]
        for c in checkpoints
    ]
    print_table(CHECKPOINT_COLUMNS, rows, "No checkpoints.")


@models_app.command("update")
@reports_errors
def update_model(
    model: str = typer.Argument(..., help="tunedModels/ID or ID"),
    display_name: str | None = typer.Option(None, help="A new display name"),
    description: str | None = typer.Option(None, help="A new description"),
    temperature: float | None = typer.Option(None, help="Default temperature"),
    top_p: float | None = typer.Option(None, help="Default topP"),
    top_k: int | None = typer.Option(None, help="Default topK"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Change a tuned model's name, description or sampling defaults."""
    changes = {
        key: value
        for key, value in (
            ("displayName", display_name),
            ("description", description),
            ("temperature", temperature),
            ("topP", top_p),
            ("topK", top_k),
        )
        if value is not None
    }
    if not changes:
        raise CliError(
            "Nothing to update: give --display-name, --description, --temperature, --top-p "
            "or --top-k."
        )
    path = f"/tunedModels/{tuned_model_id(model)}"
    updated = connect().patch(path, changes, updateMask=",".join(changes))
    if as_json:
        print_json(updated)
    else:
        console.print(_details(updated))


@models_app.command("delete")
@reports_errors
def delete_model(
    model: str = typer.Argument(..., help="tunedModels/ID or ID"), as_json: bool = JSON_OPTION
) -> None:
    """Delete a tuned model, its adapter and its tuning history."""
    name = f"tunedModels/{tuned_model_id(model)}"
    answer = connect().delete(f"/{name}")
    if as_json:
        print_json(answer)
    else:
        console.print(f"Deleted {name}.")


def _state(model: dict[str, Any]) -> str:
    state = model.get("state", "")
    colour = {"ACTIVE": "green", "FAILED": "red", "CREATING": "yellow"}.get(state, "")
    return f"[{colour}]{state}[/{colour}]" if colour else state


def _base(model: dict[str, Any]) -> str:
    source = model.get("tunedModelSource")
    if source:
        return f"{source.get('baseModel', '')} (from {source.get('tunedModel', '')})"
    return model.get("baseModel", "")


def _details(model: dict[str, Any]) -> Table:
    task = model.get("tuningTask", {})
    hp = task.get("hyperparameters", {})
    snapshots = task.get("snapshots") or []
    rows = [
        ("Name", model["name"]),
        ("Display name", escape(model.get("displayName", ""))),
        ("Description", escape(model.get("description", ""))),
        ("State", _state(model)),
        ("Base model", _base(model)),
        ("Created (UTC)", short_time(model.get("createTime"))),
        ("Updated (UTC)", short_time(model.get("updateTime"))),
        ("Tuning", _tuning(task, hp)),
        ("Last loss", f"{snapshots[-1]['meanLoss']:.4f}" if snapshots else ""),
        (
            "Sampling",
            f"temperature {model.get('temperature')}, topP {model.get('topP')}, "
            f"topK {model.get('topK')}",
        ),
    ]
    return details_table(rows)


def _tuning(task: dict[str, Any], hp: dict[str, Any]) -> str:
    if not hp.get("epochCount"):
        return "imported adapter"
    text = (
        f"{hp.get('epochCount')} epochs, batch size {hp.get('batchSize')}, "
        f"learning rate {hp.get('learningRate')}"
    )
    if task.get("startTime"):
        text += f"; started {short_time(task['startTime'])}"
    if task.get("completeTime"):
        text += f", finished {short_time(task['completeTime'])}"
    return text
