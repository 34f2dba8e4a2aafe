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

models_app = typer.Typer(help="Tuned models: list, get, update, delete.", no_args_is_help=True)


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
    """A tuned model's details."""
    found = connect().get(f"/tunedModels/{tuned_model_id(model)}")
    if as_json:
        print_json(found)
    else:
        console.print(_details(found))


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
