"""The serving engine, with each generation counted and timed by base model."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from pathlib import Path

from tunesmith.domain.resources import Turn
from tunesmith.observability.metrics import GenerationMetrics
from tunesmith.serving.engine import Engine, SamplingParams, StreamChunk
from tunesmith.training.base_models import BaseModelSpec, LoadedBaseModel


class MeasuredEngine(Engine):
    """Measures every generation where they all pass: `Engine.generate` drains `stream`, so
    overriding `stream` covers both generateContent and streamGenerateContent, once each."""

    def __init__(
        self,
        load: Callable[[BaseModelSpec], LoadedBaseModel],
        adapter_cache_size: int,
        metrics: GenerationMetrics,
    ) -> None:
        super().__init__(load, adapter_cache_size)
        self._metrics = metrics

    def stream(
        self,
        spec: BaseModelSpec,
        adapter_dir: Path | None,
        turns: Sequence[Turn],
        params: SamplingParams,
    ) -> Iterator[StreamChunk]:
        started = time.perf_counter()
        chunks = super().stream(spec, adapter_dir, turns, params)
        self._metrics.requests.labels(spec.name).inc()
        return self._measured(spec.name, chunks, started)

    def _measured(
        self, base_model: str, chunks: Iterator[StreamChunk], started: float
    ) -> Iterator[StreamChunk]:
        """Passes the chunks on; closing this closes the engine's stream (freeing the model)."""
        metrics = self._metrics
        first = True
        with closing(chunks):
            for chunk in chunks:
                if first:
                    metrics.first_token.labels(base_model).observe(time.perf_counter() - started)
                    metrics.tokens.labels(base_model, "prompt").inc(chunk.prompt_token_count)
                    first = False
                # The same count usageMetadata reports: tokens of finished candidates.
                sampled = sum(c.token_count for c in chunk.finished if c is not None)
                metrics.tokens.labels(base_model, "candidates").inc(sampled)
                yield chunk
        metrics.duration.labels(base_model).observe(time.perf_counter() - started)
