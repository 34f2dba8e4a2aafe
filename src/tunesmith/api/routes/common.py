"""Helpers every route shares: query parameters in either spelling, JSON bodies."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from tunesmith.api import wire


def query(request: Request, camel: str) -> str | None:
    """A query parameter by its camelCase or snake_case name (the tutorials use both)."""
    params = request.query_params
    return params.get(camel) or params.get(wire.snake_case(camel))


def query_int(request: Request, camel: str) -> int | None:
    """An int32 query parameter (pageSize), by the wire codec's rules."""
    value = query(request, camel)
    if value is None or value == "":
        return None
    return wire.read_integer(value, wire.INT32, camel)


def pretty(request: Request) -> bool:
    return request.query_params.get("prettyPrint", "true").lower() != "false"


async def body(request: Request) -> dict[str, Any]:
    """The JSON body; one past wire.MAX_BODY_BYTES is refused without reading it whole."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and (len(declared) > 15 or int(declared) > wire.MAX_BODY_BYTES):
        raise wire.body_too_large()
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > wire.MAX_BODY_BYTES:
            raise wire.body_too_large()
    return wire.parse_body(bytes(raw))
