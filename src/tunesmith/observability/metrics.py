"""The server's Prometheus metrics.

Request and generation metrics are counted in the server process. Job and training metrics
are read from the database at scrape time: workers are other processes, maybe on other
machines, and the database is the one place that is true across all of them and restarts.
Labels are bounded sets only (method, route template, status, base model, state): never ids,
names, emails or anything a request carried."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from tunesmith.domain.resources import JobStatus, TunedModelState
from tunesmith.store.repository import Repository

log = logging.getLogger(__name__)

# Streams and CPU generations run for minutes, well past the client library's 10 s default.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
GENERATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
FIRST_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
INTER_TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2.5, 5)
BATCH_ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MODEL_STATES = [s for s in TunedModelState if s != TunedModelState.STATE_UNSPECIFIED]
_STORE_UP_HELP = "1 if the database answered this scrape's queries, else 0."


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("method", "route", "status")
        self.requests = Counter(
            "tunesmith_http_requests", "HTTP requests answered.", labels, registry=registry
        )
        self.duration = Histogram(
            "tunesmith_http_request_duration_seconds",
            "Time from a request's arrival to the last byte of its response.",
            labels,
            buckets=HTTP_BUCKETS,
            registry=registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.duration.labels(method, route, str(status)).observe(seconds)


class GenerationMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "tunesmith_generation_requests",
            "Generations started (generateContent and streamGenerateContent).",
            ["base_model"],
            registry=registry,
        )
        self.tokens = Counter(
            "tunesmith_generation_tokens",
            "Tokens of finished generations, as usageMetadata counts them: "
            'type="prompt" or "candidates".',
            ["base_model", "type"],
            registry=registry,
        )
        self.duration = Histogram(
            "tunesmith_generation_duration_seconds",
            "Time from a generation's start (waiting for the model included) to its last token.",
            ["base_model"],
            buckets=GENERATION_BUCKETS,
            registry=registry,
        )
        self.first_token = Histogram(
            "tunesmith_generation_time_to_first_token_seconds",
            "Time from a generation's start to its first chunk of text.",
            ["base_model"],
            buckets=FIRST_TOKEN_BUCKETS,
            registry=registry,
        )
        self.inter_token = Histogram(
            "tunesmith_generation_inter_token_seconds",
            "Time between a generation's consecutive decoding steps.",
            ["base_model"],
            buckets=INTER_TOKEN_BUCKETS,
            registry=registry,
        )
        self.finished = Counter(
            "tunesmith_generations_finished",
            'Generations ended: outcome="done", "cancelled" (the client went away), '
            '"deadline" or "error".',
            ["base_model", "outcome"],
            registry=registry,
        )
        self.rejected = Counter(
            "tunesmith_generation_rejected",
            "Generations refused with 429 because the base model's queue was full.",
            ["base_model"],
            registry=registry,
        )
        self.queue_length = Gauge(
            "tunesmith_generation_queue_length",
            "Generations waiting for a place in the base model's batch.",
            ["base_model"],
            registry=registry,
        )
        self.batch_rows = Histogram(
            "tunesmith_generation_batch_rows",
            "Rows (candidates) decoded together, per decoding step.",
            ["base_model"],
            buckets=BATCH_ROWS_BUCKETS,
            registry=registry,
        )
        self.adapter_loads = Counter(
            "tunesmith_generation_adapter_loads",
            "Adapters loaded into a served base model.",
            ["base_model"],
            registry=registry,
        )
        self.adapter_evictions = Counter(
            "tunesmith_generation_adapter_evictions",
            "Adapters evicted from a served base model (least recently used, unused).",
            ["base_model"],
            registry=registry,
        )


class StoreCollector(Collector):
    """Job and training metrics, queried from the database at each scrape."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo

    def collect(self) -> Iterator[Metric]:
        try:
            families = [self._jobs(), self._models(), *self._training()]
        except Exception:  # a scrape must still show the request metrics
            log.exception("metrics: the database did not answer")
            yield GaugeMetricFamily("tunesmith_store_up", _STORE_UP_HELP, value=0)
            return
        yield GaugeMetricFamily("tunesmith_store_up", _STORE_UP_HELP, value=1)
        yield from families

    def _jobs(self) -> Metric:
        counts = self.repo.count_jobs_by_status()
        family = GaugeMetricFamily(
            "tunesmith_tuning_jobs", "Tuning jobs in the database, by state.", labels=["state"]
        )
        for status in JobStatus:
            family.add_metric([status.value.lower()], counts.get(status, 0))
        return family

    def _models(self) -> Metric:
        counts = self.repo.count_tuned_models_by_state()
        family = GaugeMetricFamily(
            "tunesmith_tuned_models", "Tuned models in the database, by state.", labels=["state"]
        )
        for state in MODEL_STATES:
            family.add_metric([state.name.lower()], counts.get(state, 0))
        return family

    def _training(self) -> list[Metric]:
        # Gauges, not counters: they fall when a job rewinds to its checkpoint or a tuned
        # model is deleted, and a counter that falls reads as a reset to Prometheus.
        steps, tokens = self.repo.training_totals()
        return [
            GaugeMetricFamily(
                "tunesmith_training_steps",
                "Training steps completed by the tuning jobs in the database.",
                value=steps,
            ),
            GaugeMetricFamily(
                "tunesmith_training_tokens",
                "Tokens trained on (prompt and answer tokens, no padding) by the tuning jobs "
                "in the database.",
                value=tokens,
            ),
        ]


class Metrics:
    """Everything `/metrics` shows for one server process, in its own registry (so that
    several apps in one process, as in tests, do not collide)."""

    def __init__(self, repo: Repository) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.registry.register(StoreCollector(repo))
        self.http = HttpMetrics(self.registry)
        self.generation = GenerationMetrics(self.registry)

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """The body and its content type: the format the scraper's Accept header asks for
        (OpenMetrics or a Prometheus text version), else Prometheus text 0.0.4."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type
