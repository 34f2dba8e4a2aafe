"""Retrying store calls that failed for a passing reason: a busy SQLite file, a PostgreSQL
serialization failure or deadlock, a dropped connection. Any other error is real and is
raised at once."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError

log = logging.getLogger(__name__)
T = TypeVar("T")

# SQLSTATEs worth another try: serialization_failure, deadlock_detected, and the
# connection_exception class (08xxx).
_TRANSIENT_SQLSTATES = ("40001", "40P01")
_TRANSIENT_SQLITE = ("database is locked", "database table is locked", "database is busy")


def is_transient(error: BaseException) -> bool:
    if not isinstance(error, DBAPIError):
        return False
    if error.connection_invalidated:
        return True
    sqlstate = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
    if sqlstate and (sqlstate in _TRANSIENT_SQLSTATES or sqlstate.startswith("08")):
        return True
    message = str(error.orig).lower()
    return isinstance(error, OperationalError) and any(m in message for m in _TRANSIENT_SQLITE)


def retry_transient(
    call: Callable[[], T], *, attempts: int = 8, first_delay: float = 0.05, max_delay: float = 2.0
) -> T:
    """`call()`, tried again with exponential backoff while it fails transiently."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except DBAPIError as error:
            if attempt == attempts or not is_transient(error):
                raise
            log.warning("store busy (%s); retrying in %.2f s", error.orig, delay)
            time.sleep(delay)
            delay = min(delay * 2, max_delay)
    raise AssertionError("unreachable")
