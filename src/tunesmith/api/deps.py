"""What routes depend on, in one place: the services a request reaches, query parameters in
either spelling, JSON bodies. Routes import from here, never from each other."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import Request

from tunesmith.api import wire

if TYPE_CHECKING:  # the services import query() from here
    from tunesmith.api.adapters import AdapterService
    from tunesmith.api.polling import PollPacer
    from tunesmith.api.service import TuningService
    from tunesmith.api.sharing import SharingService


def service(request: Request) -> TuningService:
    return request.app.state.service


def sharing(request: Request) -> SharingService:
    return request.app.state.sharing


def adapters(request: Request) -> AdapterService:
    return request.app.state.adapters


def poll_pacer(request: Request) -> PollPacer:
    return request.app.state.poll_pacer


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
