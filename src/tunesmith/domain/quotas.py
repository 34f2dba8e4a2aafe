"""Quotas: how much one project may create and run, and how fast one principal may call.
Over a quota the answer is 429 RESOURCE_EXHAUSTED with a QuotaFailure or RetryInfo detail."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass

from tunesmith.domain.errors import Code, QuotaViolation, ServiceError


def quota_exceeded(subject: str, description: str) -> ServiceError:
    return ServiceError(
        Code.RESOURCE_EXHAUSTED,
        f"Quota exceeded: {description}",
        reason="RATE_LIMIT_EXCEEDED",
        quota_violations=[QuotaViolation(subject, description)],
    )


@dataclass(frozen=True)
class ProjectQuota:
    """Per-project limits; 0 means unlimited."""

    tuned_models: int = 0
    concurrent_jobs: int = 0

    def check(self, project: int, *, models: int, jobs: int) -> None:
        if self.tuned_models and models >= self.tuned_models:
            raise quota_exceeded(
                f"projects/{project}",
                f"project {project} already has {models} tuned models, the most it may have "
                f"({self.tuned_models}). Delete one, or raise "
                "TUNESMITH_QUOTA_TUNED_MODELS_PER_PROJECT.",
            )
        if self.concurrent_jobs and jobs >= self.concurrent_jobs:
            raise quota_exceeded(
                f"projects/{project}",
                f"project {project} already has {jobs} tuning jobs queued or running, the most "
                f"it may have ({self.concurrent_jobs}). Wait for one to finish, or raise "
                "TUNESMITH_QUOTA_CONCURRENT_JOBS_PER_PROJECT.",
            )


def check_examples(count: int, limit: int) -> None:
    if limit and count > limit:
        raise quota_exceeded(
            "tuningTask.trainingData",
            f"a tuning job may have at most {limit} examples and this one has {count}. "
            "Raise TUNESMITH_QUOTA_EXAMPLES_PER_JOB to allow more.",
        )


class RateLimiter:
    """Requests per minute per principal, over a sliding 60-second window, in this process."""

    WINDOW = 60.0

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._calls: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def admit(self, principal_id: str) -> None:
        if not self.per_minute:
            return
        now = time.monotonic()
        with self._lock:
            calls = self._calls.setdefault(principal_id, deque())
            while calls and calls[0] <= now - self.WINDOW:
                calls.popleft()
            if len(calls) >= self.per_minute:
                wait = calls[0] + self.WINDOW - now
                raise ServiceError(
                    Code.RESOURCE_EXHAUSTED,
                    f"Quota exceeded: at most {self.per_minute} requests per minute per user. "
                    f"Retry in {math.ceil(wait)} s.",
                    reason="RATE_LIMIT_EXCEEDED",
                    retry_delay=wait,
                    headers={"Retry-After": str(math.ceil(wait))},
                )
            calls.append(now)
