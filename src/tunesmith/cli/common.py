"""What every command shares: settings and logging for commands that run locally."""

from __future__ import annotations

import logging
import os

from tunesmith.config import Settings, get_settings


def configure_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("TUNESMITH_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
    )


def local_settings(**overrides) -> Settings:
    """Settings from the environment, with command-line options that were given on top."""
    settings = get_settings()
    updates = {k: v for k, v in overrides.items() if v is not None}
    return settings.model_copy(update=updates) if updates else settings
