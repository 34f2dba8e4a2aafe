"""google.rpc.Status error bodies (AIP-193) for every failure the API can return."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from tunesmith.api.responses import json_response
from tunesmith.domain.errors import Code, FieldViolation, ServiceError

log = logging.getLogger(__name__)

ERROR_DOMAIN = "googleapis.com"
SERVICE = "generativelanguage.googleapis.com"
# Google's front end answers a method no route maps, on any path, with 404 NOT_FOUND and a
# google.rpc body: it never says 405 or 501 for a known path with another verb.
STATUS_OF_HTTP = {404: Code.NOT_FOUND, 405: Code.NOT_FOUND, 400: Code.INVALID_ARGUMENT}


def status_body(error: ServiceError) -> dict[str, Any]:
    details: list[dict[str, Any]] = []
    if error.violations:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [_violation(v) for v in error.violations],
            }
        )
    if error.reason:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": error.reason,
                "domain": ERROR_DOMAIN,
                "metadata": {"service": SERVICE},
            }
        )
    if error.quota_violations:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {"subject": q.subject, "description": q.description}
                    for q in error.quota_violations
                ],
            }
        )
    if error.retry_delay is not None:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                "retryDelay": f"{max(error.retry_delay, 0.0):.3f}s",
            }
        )
    body: dict[str, Any] = {
        "code": error.code.http_status,
        "message": error.message,
        "status": error.code.name,
    }
    if details:
        body["details"] = details
    return {"error": body}


def _violation(v: FieldViolation) -> dict[str, str]:
    return (
        {"field": v.field, "description": v.description}
        if v.field
        else {"description": v.description}
    )


def error_response(error: ServiceError) -> Response:
    return json_response(status_body(error), error.code.http_status, error.headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(_request: Request, error: ServiceError) -> Response:
        return error_response(error)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        code = STATUS_OF_HTTP.get(error.status_code, Code.INVALID_ARGUMENT)
        message = (
            f"Method not found: {request.method} {request.url.path}"
            if error.status_code in (404, 405)
            else str(error.detail)
        )
        return error_response(ServiceError(code, message))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, error: RequestValidationError) -> Response:
        violations = [
            FieldViolation(".".join(str(p) for p in e["loc"][1:]), e["msg"]) for e in error.errors()
        ]
        return error_response(
            ServiceError(Code.INVALID_ARGUMENT, violations[0].description, violations)
        )

    @app.exception_handler(ClientDisconnect)
    async def client_gone(_request: Request, _error: ClientDisconnect) -> Response:
        # The client closed the connection (or stalled past the body timeout) mid-body: no
        # one reads this answer, but the access log shows 499 rather than a server error.
        return error_response(ServiceError(Code.CANCELLED, "The client closed the request."))

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, error: Exception) -> Response:
        log.exception("unhandled error", exc_info=error)
        return error_response(ServiceError(Code.INTERNAL, "Internal error encountered."))
