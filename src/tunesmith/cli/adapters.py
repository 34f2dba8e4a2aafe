"""`tunesmith export` and `tunesmith import-adapter`: tuned models as PEFT adapters or merged
Hugging Face models, and adapters from elsewhere as tuned models."""

from __future__ import annotations

import json
import os
import tarfile
import tempfile
from enum import StrEnum
from pathlib import Path

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from tunesmith.cli.client import (
    Client,
    CliError,
    connect,
    console,
    err_console,
    print_json,
    reports_errors,
    tuned_model_id,
)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class ExportFormat(StrEnum):
    peft = "peft"
    merged = "merged"


@reports_errors
def export(
    model: str = typer.Argument(..., help="tunedModels/ID or ID"),
    fmt: ExportFormat = typer.Option(
        ExportFormat.peft,
        "--format",
        help="peft: an adapter folder for peft; merged: a whole model for transformers",
    ),
    out: Path = typer.Option(..., help="Folder to write (new or empty)"),
) -> None:
    """Export a tuned model as a PEFT adapter or as a merged Hugging Face model."""
    _check_new_folder(out)
    model_id = tuned_model_id(model)
    client = connect()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-", dir=out.parent) as scratch:
        archive = Path(scratch) / "export.tar"
        _download(client, model_id, fmt.value, archive)
        staged = Path(scratch) / "unpacked"
        _unpack(archive, staged)
        if out.exists():
            out.rmdir()
        os.replace(staged, out)
    console.print(_loading_hint(out, fmt))


@reports_errors
def import_adapter(
    folder: Path = typer.Argument(
        ..., help="A PEFT LoRA adapter folder: adapter_config.json, adapter_model.safetensors"
    ),
    model_id: str | None = typer.Option(
        None, "--id", help="Tuned model id (default: made from the display name)"
    ),
    display_name: str = typer.Option("", help="A name to show"),
    description: str = typer.Option("", help="A description"),
    base: str = typer.Option(
        "", help="Base model (default: the one adapter_config.json names, if the server has it)"
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the tuned model as JSON"),
) -> None:
    """Register a PEFT LoRA adapter as a tuned model, ready to generate from."""
    files = _adapter_files(folder)
    with tempfile.TemporaryFile() as archive:
        with tarfile.open(fileobj=archive, mode="w") as tar:
            for path in files:
                tar.add(path, arcname=path.name)
        archive.seek(0)
        created = connect().upload(
            "/tunedModels:importAdapter",
            archive,
            tunedModelId=model_id,
            displayName=display_name or None,
            description=description or None,
            baseModel=base or None,
        )
    if as_json:
        print_json(created)
        return
    console.print(
        f"[green]Imported {created['name']}[/green] ({created['state']}, base model "
        f"{created['baseModel']})."
    )
    console.print(f'Try it: tunesmith generate {tuned_model_id(created["name"])} "your input"')


def _check_new_folder(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CliError(f"{out} already exists and is not an empty folder; choose another --out.")


def _download(client: Client, model_id: str, fmt: str, archive: Path) -> None:
    """Streams the export to `archive`; the bar waits while the server builds it."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task(f"building the {fmt} export of tunedModels/{model_id}", total=None)
        path = f"/tunedModels/{model_id}:exportAdapter"
        with client.stream("GET", path, params={"format": fmt}) as response:
            size = int(response.headers.get("content-length", "0")) or None
            progress.update(task, description="downloading", total=size)
            with archive.open("wb") as file:
                for chunk in response.iter_bytes():
                    file.write(chunk)
                    progress.advance(task, len(chunk))


def _unpack(archive: Path, dest: Path) -> None:
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
    except tarfile.TarError as error:
        raise CliError(f"The server sent an archive that cannot be unpacked: {error}") from None


def _loading_hint(out: Path, fmt: ExportFormat) -> str:
    if fmt == ExportFormat.merged:
        return (
            f"Wrote a merged model to {out}. Load it with transformers alone:\n"
            f"  AutoModelForCausalLM.from_pretrained({str(out)!r}); "
            "its tokenizer's chat template frames prompts as Tunesmith does."
        )
    base = json.loads((out / "adapter_config.json").read_text()).get("base_model_name_or_path")
    return (
        f"Wrote a PEFT adapter for {base} to {out}. Load it onto that base model with peft:\n"
        f"  PeftModel.from_pretrained(base_model, {str(out)!r})"
    )


def _adapter_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise CliError(f"{folder} is not a folder; give a PEFT adapter folder.")
    files = [folder / name for name in ADAPTER_FILES]
    missing = [path.name for path in files if not path.is_file()]
    if missing:
        raise CliError(
            f"{folder} has no {' or '.join(missing)}: a PEFT adapter folder holds "
            "adapter_config.json and adapter_model.safetensors."
        )
    return files
