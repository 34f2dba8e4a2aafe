"""Helpers every route shares: query parameters in either spelling, JSON bodies."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from tunesmith.api import wire
from tunesmith.domain.errors import FieldViolation, invalid


def query(request: Request, camel: str) -> str | None:
    """A query parameter by its camelCase or snake_case name (the tutorials use both)."""
    params = request.query_params
    return params.get(camel) or params.get(wire.snake_case(camel))


def query_int(request: Request, camel: str) -> int | None:
    value = query(request, camel)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError as error:
        raise invalid(
            [FieldViolation(camel, f"{camel} must be an integer, got '{value}'")]
        ) from error


def pretty(request: Request) -> bool:
    return request.query_params.get("prettyPrint", "true").lower() != "false"


async def body(request: Request) -> dict[str, Any]:
    return wire.parse_body(await request.body())
