"""What every command shares: settings and logging for commands that run locally."""

from __future__ import annotations

import os

import typer

from tunesmith.config import Settings, get_settings
from tunesmith.observability import logs

JSON_OPTION = typer.Option(False, "--json", help="Print JSON for scripts")


def configure_logging() -> None:
    """Text or JSON lines (TUNESMITH_LOG_FORMAT) on stderr, with each line's context (its
    request id, its operation)."""
    logs.configure(os.environ.get("TUNESMITH_LOG_LEVEL", "INFO"), get_settings().log_format)


def local_settings(**overrides) -> Settings:
    """Settings from the environment, with command-line options that were given on top."""
    settings = get_settings()
    updates = {k: v for k, v in overrides.items() if v is not None}
    return settings.model_copy(update=updates) if updates else settings
