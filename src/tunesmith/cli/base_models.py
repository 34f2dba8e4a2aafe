"""`tunesmith base-models ...`: the base model catalog."""

from __future__ import annotations

import typer

from tunesmith.cli.client import connect, print_json, print_table, reports_errors
from tunesmith.cli.common import JSON_OPTION, configure_logging, local_settings

base_models_app = typer.Typer(help="The base model catalog.", no_args_is_help=True)


@base_models_app.command("list")
@reports_errors
def list_base_models(
    as_json: bool = JSON_OPTION,
) -> None:
    """The base models the server can tune and generate from."""
    models = list(connect().pages("/models", "models"))
    if as_json:
        print_json(models)
        return
    rows = [
        [
            model["name"],
            model.get("displayName", ""),
            str(model.get("inputTokenLimit", "")),
            str(model.get("outputTokenLimit", "")),
        ]
        for model in models
    ]
    print_table(["Name", "Display name", "Input tokens", "Output tokens"], rows, "No base models.")


@base_models_app.command("prepare")
def prepare(
    name: str = typer.Argument("", help="Catalog name; default: the default model"),
) -> None:
    """Convert a base model's GGUF into the safetensors cache now, not on first use."""
    from tunesmith.training.base_models import Catalog, ensure_cached

    configure_logging()
    settings = local_settings()
    catalog = Catalog(settings)
    entry = catalog.get(name) if name else None
    if name and entry is None:
        raise typer.BadParameter(f"unknown base model {name}")
    spec = entry.target if entry else catalog.default
    typer.echo(ensure_cached(spec, settings.base_model_cache_dir))
