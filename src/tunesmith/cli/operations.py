"""`tunesmith operations list|get|cancel`: tuning jobs as long-running operations."""

from __future__ import annotations

from typing import Any

import typer

from tunesmith.cli.client import (
    CANCELLED,
    Client,
    CliError,
    connect,
    console,
    details_table,
    print_json,
    print_table,
    reports_errors,
    tuned_model_id,
)
from tunesmith.cli.common import JSON_OPTION

operations_app = typer.Typer(help="Tuning operations: list, get, cancel.", no_args_is_help=True)


@operations_app.command("list")
@reports_errors
def list_operations(
    model: str = typer.Argument("", help="tunedModels/ID or ID (default: every model you read)"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Tuning operations of one tuned model, or of all of them."""
    client = connect()
    found = _operations(client, model)
    if as_json:
        print_json(found)
        return
    rows = [[op["name"], _state(op), _steps(op), _loss(op)] for op in found]
    print_table(["Operation", "State", "Steps", "Last loss"], rows, "No operations.")


@operations_app.command("get")
@reports_errors
def get_operation(
    name: str = typer.Argument(..., help="tunedModels/MODEL/operations/ID"),
    as_json: bool = JSON_OPTION,
) -> None:
    """One operation: its state, progress and error."""
    operation = connect().get(operation_path(name))
    if as_json:
        print_json(operation)
        return
    rows = [
        ("Name", operation["name"]),
        ("State", _state(operation)),
        ("Steps", _steps(operation)),
        ("Last loss", _loss(operation)),
        ("Error", operation.get("error", {}).get("message", "")),
        ("Tuned model", operation.get("metadata", {}).get("tunedModel", "")),
    ]
    console.print(details_table(rows))


@operations_app.command("cancel")
@reports_errors
def cancel_operation(
    name: str = typer.Argument(
        ..., help="tunedModels/MODEL/operations/ID, or a model to cancel its tuning"
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Cancel a tuning job; it stops at its next step and the model becomes FAILED."""
    client = connect()
    if "/operations/" in name:
        answer = client.post(f"{operation_path(name)}:cancel")
    else:
        answer = client.post(f"/tunedModels/{tuned_model_id(name)}:cancel")
    if as_json:
        print_json(answer)
    else:
        console.print(f"Cancelled {name}; its job stops at its next step.")


def operation_path(name: str) -> str:
    name = name.strip("/")
    if "/operations/" not in name:
        raise CliError(
            f"{name!r} is not an operation name: expected tunedModels/MODEL/operations/ID"
        )
    return "/" + (name if name.startswith("tunedModels/") else f"tunedModels/{name}")


def _operations(client: Client, model: str) -> list[dict[str, Any]]:
    if model:
        ids = [tuned_model_id(model)]
    else:
        ids = [tuned_model_id(m["name"]) for m in client.pages("/tunedModels", "tunedModels")]
    return [
        op for i in ids for op in client.get(f"/tunedModels/{i}/operations").get("operations", [])
    ]


def _state(operation: dict[str, Any]) -> str:
    if not operation.get("done"):
        running = operation.get("metadata", {}).get("completedSteps")
        return "[yellow]RUNNING[/yellow]" if running else "PENDING"
    error = operation.get("error")
    if not error:
        return "[green]SUCCEEDED[/green]"
    return "CANCELLED" if error.get("code") == CANCELLED else "[red]FAILED[/red]"


def _steps(operation: dict[str, Any]) -> str:
    metadata = operation.get("metadata", {})
    total = metadata.get("totalSteps", 0)
    if not total:
        return ""
    return f"{metadata.get('completedSteps', 0)}/{total}"


def _loss(operation: dict[str, Any]) -> str:
    snapshots = operation.get("metadata", {}).get("snapshots") or []
    return f"{snapshots[-1]['meanLoss']:.4f}" if snapshots else ""
