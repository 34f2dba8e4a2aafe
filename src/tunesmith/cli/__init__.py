"""The `tunesmith` command. Each group of subcommands lives in its own module."""

from __future__ import annotations

import typer

from tunesmith.cli.adapters import export, import_adapter
from tunesmith.cli.admin import auth_app, groups_app, keys_app, projects_app, users_app
from tunesmith.cli.base_models import base_models_app
from tunesmith.cli.generate import generate
from tunesmith.cli.models import models_app
from tunesmith.cli.operations import operations_app
from tunesmith.cli.server import ray_workers, serve, worker
from tunesmith.cli.tune import tune

app = typer.Typer(
    help="Tunesmith: self-hosted model tuning with the Gemini tuning API.",
    no_args_is_help=True,
    # A crash report must not print local variables: they hold API keys.
    pretty_exceptions_show_locals=False,
)
app.command()(serve)
app.command()(worker)
app.command("ray-workers")(ray_workers)
app.command()(tune)
app.command()(generate)
app.command()(export)
app.command("import-adapter")(import_adapter)
app.add_typer(models_app, name="models")
app.add_typer(operations_app, name="operations")
app.add_typer(auth_app, name="auth")
app.add_typer(users_app, name="users")
app.add_typer(groups_app, name="groups")
app.add_typer(projects_app, name="projects")
app.add_typer(keys_app, name="keys")
app.add_typer(base_models_app, name="base-models")
