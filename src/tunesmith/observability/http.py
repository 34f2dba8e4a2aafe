"""Pure ASGI middleware for every HTTP request: a request id (`X-Request-Id`) in the
response and in every log line, request metrics labelled by route template, and one access
log line. Pure ASGI rather than BaseHTTPMiddleware so that a streamed response is timed to
its last byte and the request id's context reaches the endpoint."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tunesmith.observability.logs import bind
from tunesmith.observability.metrics import HttpMetrics

access_log = logging.getLogger("tunesmith.access")

REQUEST_ID_HEADER = "x-request-id"
UNMATCHED = "unmatched"  # the route label of requests no route matched (404s)
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# A client's id is kept only if it is short and plain: it goes into every log line.
_PLAIN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_PARAM = re.compile(r"{(\w+)}")


def request_id_for(incoming: str | None) -> str:
    """The client's X-Request-Id if it is plain, else a new random one."""
    if incoming and _PLAIN_ID.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


def route_template(scope: Scope) -> str:
    """The matched route's path template ("/v1beta/tunedModels/{model_id}"), so that ids
    never become label values; UNMATCHED when no route matched."""
    template = getattr(scope.get("route"), "path_format", None)
    if template is None:
        return UNMATCHED
    # FastAPI keeps an included router's routes without the router's prefix: the prefix is
    # what the path has in front of the route's own part.
    own_part = _fill(template, scope.get("path_params", {}))
    path = scope["path"]
    prefix = path[: -len(own_part)] if own_part and path.endswith(own_part) else ""
    return prefix + template


def _fill(template: str, params: Mapping[str, Any]) -> str:
    return _PARAM.sub(lambda m: str(params.get(m[1], m[0])), template)


class RequestObserver:
    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_for(Headers(scope=scope).get(REQUEST_ID_HEADER))
        # Not reset afterwards: the server gives each request its own task (and context),
        # and the error handler outside this middleware should still log the id.
        bind(request_id=request_id)
        started = time.perf_counter()
        status = 500  # what the client gets if the app fails before it responds

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                header = (REQUEST_ID_HEADER.encode(), request_id.encode())
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._record(scope, status, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
        route = route_template(scope)
        self.metrics.observe(method, route, status, seconds)
        duration_ms = round(seconds * 1000, 1)
        # Never the query string (it may carry ?key= or ?access_token=) nor any body.
        access_log.info(
            "%s %s %d %.1fms",
            method,
            route,
            status,
            duration_ms,
            extra={
                "data": {
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": duration_ms,
                }
            },
        )
