"""`tunesmith base-models ...`: the base model catalog."""

from __future__ import annotations

import typer

from tunesmith.cli.common import configure_logging, local_settings

base_models_app = typer.Typer(help="The base model catalog.")


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
