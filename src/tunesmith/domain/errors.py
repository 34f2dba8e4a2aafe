"""The service's one error type, carrying a google.rpc code; the API renders it."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Code(Enum):
    """google.rpc.Code names with their HTTP status (google/rpc/code.proto)."""

    CANCELLED = (1, 499)
    INVALID_ARGUMENT = (3, 400)
    DEADLINE_EXCEEDED = (4, 504)
    NOT_FOUND = (5, 404)
    ALREADY_EXISTS = (6, 409)
    PERMISSION_DENIED = (7, 403)
    RESOURCE_EXHAUSTED = (8, 429)
    FAILED_PRECONDITION = (9, 400)
    ABORTED = (10, 409)
    UNIMPLEMENTED = (12, 501)
    INTERNAL = (13, 500)
    UNAVAILABLE = (14, 503)
    UNAUTHENTICATED = (16, 401)

    @property
    def rpc_code(self) -> int:
        return self.value[0]

    @property
    def http_status(self) -> int:
        return self.value[1]


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


@dataclass(frozen=True)
class QuotaViolation:
    subject: str
    description: str


@dataclass
class ServiceError(Exception):
    code: Code
    message: str
    violations: list[FieldViolation] = field(default_factory=list)
    reason: str = ""  # ErrorInfo.reason, when the error has a machine-readable cause
    headers: dict[str, str] = field(default_factory=dict)
    quota_violations: list[QuotaViolation] = field(default_factory=list)  # QuotaFailure
    retry_delay: float | None = None  # RetryInfo, seconds

    def __str__(self) -> str:
        return self.message


def invalid(violations: list[FieldViolation]) -> ServiceError:
    """400 INVALID_ARGUMENT listing every problem found, not only the first."""
    first = violations[0]
    message = (
        first.description
        if len(violations) == 1
        else (f"{len(violations)} invalid fields: " + "; ".join(v.description for v in violations))
    )
    return ServiceError(Code.INVALID_ARGUMENT, message, violations)


def not_found(message: str) -> ServiceError:
    return ServiceError(Code.NOT_FOUND, message)
