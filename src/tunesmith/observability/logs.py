"""Structured logs: every line carries the context it was logged in (a request id in the
server, the operation in a worker), as human-readable text or as JSON lines."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(context_text)s%(message)s"

# (name, value) pairs; a tuple so that a context never shares a mutable default.
_fields: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("tunesmith_log_fields", default=())


def _merged(fields: dict[str, str]) -> tuple[tuple[str, str], ...]:
    current = {name: value for name, value in _fields.get() if name not in fields}
    return (*current.items(), *fields.items())


def bind(**fields: str) -> None:
    """Adds fields to every line logged later in the current context (an asyncio task's
    context ends with its task, so a request's fields end with the request)."""
    _fields.set(_merged(fields))


@contextmanager
def log_fields(**fields: str) -> Iterator[None]:
    """Adds fields to every line logged inside the block, in this thread or task."""
    token = _fields.set(_merged(fields))
    try:
        yield
    finally:
        _fields.reset(token)


def current_fields() -> dict[str, str]:
    return dict(_fields.get())


class ContextFilter(logging.Filter):
    """Puts the context's fields on each record. Installed on handlers, not loggers, so that
    records from every logger (uvicorn's included) get them."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.context = current_fields()
        record.context_text = "".join(f"{name}={value} " for name, value in record.context.items())
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, process, message, the context's fields
    and the record's own `extra={"data": {...}}` fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "message": record.getMessage(),
            **getattr(record, "context", {}),
            **getattr(record, "data", {}),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def make_handler(log_format: str, stream: IO[str] | None = None) -> logging.Handler:
    """A stream handler (stderr by default) writing `log_format` ("text" or "json")."""
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    return handler


def configure(level: str, log_format: str) -> None:
    logging.basicConfig(level=level, handlers=[make_handler(log_format)])
