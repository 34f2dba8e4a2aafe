"""GET /metrics: the Prometheus text format, at the root (not under a version).

Prometheus scrapers rarely send our credentials, and the metrics hold only counts and
timings under bounded labels (no ids, names, emails, prompts or keys). So /metrics is open
while the server listens on loopback only (where any caller already runs on this machine),
and asks for a reader's credentials when it listens on a network, unless
TUNESMITH_METRICS_PUBLIC says otherwise. A scraper sends a key with `params: {key: [...]}`.
"""

from __future__ import annotations

import ipaddress

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from tunesmith.api.auth import authenticate_reader
from tunesmith.config import Settings
from tunesmith.observability.metrics import Metrics


def metrics_public(settings: Settings) -> bool:
    if settings.metrics_public is not None:
        return settings.metrics_public
    return _is_loopback(settings.host)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def metrics_router(public: bool) -> APIRouter:
    router = APIRouter(dependencies=[] if public else [Depends(authenticate_reader)])

    # A plain def: the database queries of a scrape run in a thread, off the event loop.
    @router.get("/metrics", include_in_schema=False)
    def scrape(request: Request) -> Response:
        metrics: Metrics = request.app.state.metrics
        body, content_type = metrics.exposition(request.headers.get("accept", ""))
        return Response(body, headers={"Content-Type": content_type})

    return router
