"""The serving engine, with each generation and each batch step counted and timed by base
model (the engine reports them as it works; this turns the reports into metrics)."""

from __future__ import annotations

from collections.abc import Callable

from tunesmith.observability.metrics import GenerationMetrics
from tunesmith.serving.engine import Engine, EngineObserver, ServingLimits
from tunesmith.training.base_models import BaseModelSpec, LoadedBaseModel


class MetricsObserver(EngineObserver):
    """Called from the callers' threads and the schedulers' threads; prometheus_client's
    metrics are thread-safe."""

    def __init__(self, metrics: GenerationMetrics) -> None:
        self._m = metrics

    def request_started(self, base_model: str) -> None:
        self._m.requests.labels(base_model).inc()

    def request_rejected(self, base_model: str) -> None:
        self._m.rejected.labels(base_model).inc()

    def queue_length(self, base_model: str, waiting: int) -> None:
        self._m.queue_length.labels(base_model).set(waiting)

    def step(self, base_model: str, rows: int) -> None:
        self._m.batch_rows.labels(base_model).observe(rows)

    def first_token(self, base_model: str, seconds: float, prompt_tokens: int) -> None:
        self._m.first_token.labels(base_model).observe(seconds)
        self._m.tokens.labels(base_model, "prompt").inc(prompt_tokens)

    def token_gap(self, base_model: str, seconds: float) -> None:
        self._m.inter_token.labels(base_model).observe(seconds)

    def candidate_tokens(self, base_model: str, tokens: int) -> None:
        # The same count usageMetadata reports: tokens of finished candidates.
        self._m.tokens.labels(base_model, "candidates").inc(tokens)

    def request_finished(self, base_model: str, seconds: float, outcome: str) -> None:
        self._m.duration.labels(base_model).observe(seconds)
        self._m.finished.labels(base_model, outcome).inc()

    def adapter_loaded(self, base_model: str) -> None:
        self._m.adapter_loads.labels(base_model).inc()

    def adapter_evicted(self, base_model: str) -> None:
        self._m.adapter_evictions.labels(base_model).inc()


class MeasuredEngine(Engine):
    """The engine, reporting to the server's generation metrics."""

    def __init__(
        self,
        load: Callable[[BaseModelSpec], LoadedBaseModel],
        adapter_cache_size: int,
        metrics: GenerationMetrics,
        limits: ServingLimits | None = None,
    ) -> None:
        super().__init__(load, adapter_cache_size, limits, MetricsObserver(metrics))
