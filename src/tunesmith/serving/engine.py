"""Text generation from base models and their LoRA adapters.

One copy of each base model stays in memory, run by its own scheduler thread that decodes
every request on that model together, each row with its own adapter (or none) and its own
sampling parameters (serving/scheduler.py). Callers get a `GenerationStream` at once and
read it at their own pace; the model never waits for them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from tunesmith.domain.errors import Code, FieldViolation, ServiceError, invalid
from tunesmith.domain.resources import Turn
from tunesmith.serving.lora import AdapterError, AdapterWeights, adapter_key, read_adapter
from tunesmith.serving.outbox import GenerationStream, Outbox, StreamChunk
from tunesmith.serving.sampling import SamplingParams
from tunesmith.serving.scheduler import EngineObserver, Request, Scheduler, ServingLimits
from tunesmith.serving.text import Candidate, CandidateText
from tunesmith.training.base_models import BaseModelSpec, LoadedBaseModel

__all__ = [
    "Candidate",
    "Engine",
    "EngineObserver",
    "Generation",
    "GenerationStream",
    "SamplingParams",
    "ServingLimits",
    "StreamChunk",
    "request_deadline",
]

# The caller's own deadline (time.monotonic()) for generations started in this context, if
# it set one (the API sets it from a request's X-Server-Timeout header).
request_deadline: ContextVar[float | None] = ContextVar("request_deadline", default=None)


@dataclass
class Generation:
    candidates: list[Candidate]
    prompt_token_count: int


class GenerationCollector:
    """Chunks of a stream gathered into the whole generation."""

    def __init__(self, stream: GenerationStream) -> None:
        self._prompt_token_count = stream.prompt_token_count
        self._candidates: dict[int, Candidate] = {}

    def add(self, chunk: StreamChunk) -> None:
        for index, done in enumerate(chunk.finished):
            if done is not None:
                self._candidates[index] = done

    def generation(self) -> Generation:
        ordered = [self._candidates[i] for i in sorted(self._candidates)]
        return Generation(ordered, self._prompt_token_count)


class Engine:
    """Generates from base models and tuned adapters; safe to call from many threads."""

    def __init__(
        self,
        load: Callable[[BaseModelSpec], LoadedBaseModel],
        adapter_cache_size: int = 8,
        limits: ServingLimits | None = None,
        observer: EngineObserver | None = None,
    ) -> None:
        if adapter_cache_size < 1:
            raise ValueError("adapter_cache_size must be at least 1")
        self._load = load
        self._adapter_cache_size = adapter_cache_size
        self.limits = limits or ServingLimits()
        self._observer = observer or EngineObserver()
        self._schedulers: dict[str, Scheduler] = {}
        self._schedulers_lock = threading.Lock()

    def generate(
        self,
        spec: BaseModelSpec,
        adapter_dir: Path | None,
        turns: Sequence[Turn],
        params: SamplingParams,
    ) -> Generation:
        stream = self.stream(spec, adapter_dir, turns, params)
        collector = GenerationCollector(stream)
        with closing(stream):
            for chunk in stream:
                collector.add(chunk)
        return collector.generation()

    def stream(
        self,
        spec: BaseModelSpec,
        adapter_dir: Path | None,
        turns: Sequence[Turn],
        params: SamplingParams,
    ) -> GenerationStream:
        """Queues a generation and returns its stream at once; close the stream when the
        client goes away. 429 RESOURCE_EXHAUSTED when the model's queue is full."""
        self._check(params)
        scheduler = self._scheduler(spec)
        prompt = scheduler.loaded.codec.encode_prompt(turns)
        outbox = Outbox(len(prompt))
        tokenizer = scheduler.loaded.tokenizer
        request = Request(
            prompt=prompt,
            params=params,
            texts=[
                CandidateText(tokenizer, params.stop_sequences)
                for _ in range(params.candidate_count)
            ],
            outbox=outbox,
            deadline=self._deadline(),
        )
        if adapter_dir is not None:
            self._attach_adapter(scheduler, request, adapter_dir)
        outbox.on_close = lambda: scheduler.cancel(request)
        scheduler.submit(request)
        return GenerationStream(outbox)

    def count_prompt_tokens(self, spec: BaseModelSpec, turns: Sequence[Turn]) -> int:
        return len(self._scheduler(spec).loaded.codec.encode_prompt(turns))

    def _check(self, params: SamplingParams) -> None:
        if params.candidate_count < 1:
            raise ValueError("candidate_count must be at least 1")
        if params.max_output_tokens < 1:
            raise ValueError("max_output_tokens must be at least 1")
        if params.candidate_count > self.limits.max_batch_rows:
            field = "generationConfig.candidateCount"
            most = self.limits.max_batch_rows
            raise invalid(
                [
                    FieldViolation(
                        field,
                        f"{field} must be at most {most} on this server "
                        "(TUNESMITH_SERVING_MAX_BATCH_ROWS)",
                    )
                ]
            )

    def _deadline(self) -> float:
        own = time.monotonic() + self.limits.request_timeout_seconds
        asked = request_deadline.get()
        return own if asked is None else min(own, asked)

    @staticmethod
    def _attach_adapter(scheduler: Scheduler, request: Request, adapter_dir: Path) -> None:
        """Names the request's adapter, reading it here (not on the model's thread) unless
        it is already resident."""
        try:
            request.adapter_key = adapter_key(adapter_dir)
            if not scheduler.adapters.resident(request.adapter_key):
                request.adapter_weights = read_adapter(adapter_dir)
        except (OSError, AdapterError) as error:
            raise _unservable(adapter_dir, error) from None

        def read_again() -> AdapterWeights:
            try:
                return read_adapter(adapter_dir)
            except AdapterError as error:
                raise AdapterError(_unservable(adapter_dir, error).message) from None

        request.read_adapter = read_again

    def _scheduler(self, spec: BaseModelSpec) -> Scheduler:
        with self._schedulers_lock:
            scheduler = self._schedulers.get(spec.name)
            if scheduler is None:
                scheduler = Scheduler(
                    self._load(spec), self._adapter_cache_size, self.limits, self._observer
                )
                self._schedulers[spec.name] = scheduler
            return scheduler


def _unservable(adapter_dir: Path, error: Exception) -> ServiceError:
    return ServiceError(
        Code.FAILED_PRECONDITION, f"The adapter in {adapter_dir.name} cannot be served: {error}"
    )
