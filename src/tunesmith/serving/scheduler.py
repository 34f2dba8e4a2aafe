"""Continuous batching: one thread per base model owns the model and steps every running
request's rows together.

A request waits in a bounded queue until its rows fit in the batch and its adapter has a
slot; it then runs its prompt (prefill, left-padded beside others admitted with it),
samples its first tokens and joins the running batch. On Gemma, short prompts are
prefilled within the running rows' next step instead, in the same forward pass: a prefill
alone costs about what a step does, since both read every weight once. Each step feeds
every row its last token in one forward pass, samples each request's rows with the
request's own parameters and random generator, and sends each request its new text.
Finished rows leave at once; so do the rows of a request whose client went away or whose
deadline passed, at the next step. Nothing a client does (read slowly, vanish) ever holds
the model: chunks wait in the request's own outbox.
"""

from __future__ import annotations

import atexit
import logging
import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tunesmith.domain.errors import Code, ServiceError
from tunesmith.serving.batch import KVBatch, Passes, TransformersPasses
from tunesmith.serving.batch_sampling import RowGroup, draw_rows
from tunesmith.serving.gemma import GemmaPasses
from tunesmith.serving.lora import NO_ADAPTER, AdapterBank, AdapterError, AdapterWeights
from tunesmith.serving.outbox import Outbox, StreamChunk
from tunesmith.serving.sampling import SamplingParams
from tunesmith.serving.text import CandidateText

log = logging.getLogger(__name__)

PREFILL_TOKENS = 4096  # the most prompt tokens, padding included, prefilled in one pass
PREFILL_WASTE = 256  # padding tokens a prefill may always spend to take prompts together
# The most prompt tokens prefilled within a decoding step (Gemma): a step waits for them.
MIXED_PROMPT_TOKENS = 512


@dataclass(frozen=True)
class ServingLimits:
    max_batch_rows: int = 32  # rows (candidates) decoded together per base model
    max_queued_requests: int = 64  # requests waiting for a place, per base model
    request_timeout_seconds: float = 600.0  # the longest a request may queue and run


class EngineObserver:
    """What the engine reports as it works (metrics); these defaults ignore it all."""

    def request_started(self, base_model: str) -> None: ...
    def request_rejected(self, base_model: str) -> None: ...
    def queue_length(self, base_model: str, waiting: int) -> None: ...
    def step(self, base_model: str, rows: int) -> None: ...
    def first_token(self, base_model: str, seconds: float, prompt_tokens: int) -> None: ...
    def token_gap(self, base_model: str, seconds: float) -> None: ...
    def candidate_tokens(self, base_model: str, tokens: int) -> None: ...
    def request_finished(self, base_model: str, seconds: float, outcome: str) -> None: ...
    def adapter_loaded(self, base_model: str) -> None: ...
    def adapter_evicted(self, base_model: str) -> None: ...


@dataclass(eq=False)
class Request:
    """One generation: its prompt and parameters, its candidates' state, its outbox."""

    prompt: list[int]
    params: SamplingParams
    texts: list[CandidateText]
    outbox: Outbox
    deadline: float  # time.monotonic() by which it must be done
    adapter_key: str | None = None
    read_adapter: Callable[[], AdapterWeights] | None = None
    adapter_weights: AdapterWeights | None = None  # read ahead by the caller's thread
    generator: torch.Generator = field(default_factory=torch.Generator)
    slot: int = NO_ADAPTER
    active: list[int] = field(default_factory=list)  # candidates still generating, in order
    last: list[int] = field(default_factory=list)  # each active candidate's last token
    submitted: float = field(default_factory=time.monotonic)
    started: float = 0.0
    last_token_at: float | None = None

    def __post_init__(self) -> None:
        if self.params.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(self.params.seed)
        self.active = list(range(self.params.candidate_count))


class Scheduler:
    """The one thread that runs a base model, and the queue in front of it."""

    def __init__(
        self,
        loaded,
        adapter_capacity: int,
        limits: ServingLimits,
        observer: EngineObserver,
    ) -> None:
        self.loaded = loaded
        self.limits = limits
        self._name = loaded.spec.name
        self._observer = observer
        self.adapters = AdapterBank(
            loaded.model,
            adapter_capacity,
            on_load=lambda: observer.adapter_loaded(self._name),
            on_evict=lambda: observer.adapter_evicted(self._name),
        )
        self._passes = _passes_for(loaded.model, self.adapters)
        log.info("%s served by %s", self._name, type(self._passes).__name__)
        self._stop_ids = set(loaded.codec.stop_token_ids)
        self._cond = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._running: list[Request] = []
        self._kv: KVBatch | None = None
        self._seconds_per_request = 1.0  # moving average, for the retry delay of a 429
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"scheduler {self._name}")
        self._thread.daemon = True
        self._thread.start()
        _live.add(self)

    # ---------------------------------------------------------------- callers' threads

    def submit(self, request: Request) -> None:
        """Queues a request, or answers 429 RESOURCE_EXHAUSTED if the queue is full."""
        with self._cond:
            if self._stopping:
                raise _shutting_down()
            waiting = len(self._waiting)
            if waiting >= self.limits.max_queued_requests and not self._room_for(request):
                self._observer.request_rejected(self._name)
                raise self._busy(waiting)
            self._waiting.append(request)
            self._cond.notify()
        self._observer.request_started(self._name)
        self._observer.queue_length(self._name, waiting + 1)

    def _room_for(self, request: Request) -> bool:
        """Whether the batch has rows free for the request beyond all that wait (read from
        another thread: a moment old at worst)."""
        taken = _rows_in_use([*self._running, *self._waiting])
        return taken + len(request.active) <= self.limits.max_batch_rows

    def stop(self, timeout: float) -> None:
        """Ends the model's thread after its current pass (waiting and running requests
        fail with 503 UNAVAILABLE), waiting up to `timeout` seconds for it."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def cancel(self, request: Request) -> None:
        """Forgets a request whose client went away: at once if it waits, else its rows
        leave the batch at the next step."""
        with self._cond:
            if request in self._waiting:
                self._waiting.remove(request)
            self._cond.notify()

    def _busy(self, waiting: int) -> ServiceError:
        rounds = (waiting + 1) / max(1, self.limits.max_batch_rows)
        delay = max(1.0, rounds * self._seconds_per_request)
        return ServiceError(
            Code.RESOURCE_EXHAUSTED,
            f"{self._name} is busy: {waiting} requests are already waiting for it. "
            f"Retry in {math.ceil(delay)} s.",
            retry_delay=delay,
            headers={"Retry-After": str(math.ceil(delay))},
        )

    # ---------------------------------------------------------------- the model's thread

    def _run(self) -> None:
        while (admitted := self._admit()) is not None:
            try:
                self._drop_gone()
                if self._running and self._mixable(admitted):
                    self._step_and_start(admitted)
                    continue
                for group in _prefill_groups(admitted):
                    self._start(group)
                if self._running:
                    self._step()
            except Exception as error:  # a failed pass fails its requests, not the server
                log.exception("generation failed on %s", self._name)
                for request in [*self._running, *admitted]:
                    if not request.outbox.done:
                        self._end(request, error)
                self._running, self._kv = [], None

    def _admit(self) -> list[Request] | None:
        """The waiting requests that fit now, in order, their adapters pinned; blocks while
        there is nothing to do. None once the scheduler stops: every request then fails."""
        with self._cond:
            while not (self._waiting or self._running or self._stopping):
                self._cond.wait()
            if self._stopping:
                for request in [*self._waiting, *self._running]:
                    self._end(request, _shutting_down())
                self._waiting.clear()
                self._running, self._kv = [], None
                return None
            self._expire_waiting()
            rows = _rows_in_use(self._running)  # the gone leave before the admitted join
            admitted = []
            for request in list(self._waiting):
                if rows + len(request.active) > self.limits.max_batch_rows:
                    break
                if not self.adapters.can_acquire(request.adapter_key):
                    continue  # every slot pinned: a request on a resident adapter may go first
                self._waiting.remove(request)
                if self._pin_adapter(request):
                    admitted.append(request)
                    rows += len(request.active)
            waiting = len(self._waiting)
        self._observer.queue_length(self._name, waiting)
        return admitted

    def _pin_adapter(self, request: Request) -> bool:
        def load() -> AdapterWeights:
            weights = request.adapter_weights
            return (
                weights
                if weights and weights.key == request.adapter_key
                else request.read_adapter()
            )

        try:
            request.slot = self.adapters.acquire(request.adapter_key, load)
        except AdapterError as error:
            self._end(request, ServiceError(Code.FAILED_PRECONDITION, str(error)))
            return False
        request.adapter_weights = None  # resident now: the bank holds its own copy
        return True

    def _expire_waiting(self) -> None:
        now = time.monotonic()
        for request in [r for r in self._waiting if r.deadline <= now]:
            self._waiting.remove(request)
            self._end(request, _deadline_exceeded())

    def _drop_gone(self) -> None:
        """Takes out the rows of requests whose client went away or whose time is up."""
        now = time.monotonic()
        gone = [r for r in self._running if r.outbox.closed or r.deadline <= now]
        if not gone:
            return
        self._keep([r for r in self._running if r not in gone])
        for request in gone:
            self._end(request, None if request.outbox.closed else _deadline_exceeded())

    def _keep(self, still: list[Request], rows: list[int] | None = None) -> None:
        """Makes `still` the running requests, keeping their rows of the KV batch."""
        if rows is None:
            rows, offset = [], 0
            for request in self._running:
                if request in still:
                    rows.extend(range(offset, offset + len(request.active)))
                offset += len(request.active)
        if not still:
            self._kv = None
        elif self._kv is not None and len(rows) < self._kv.rows:
            self._kv.select(rows)
        self._running = still

    def _start(self, requests: list[Request]) -> None:
        """Prefills requests together, samples their first tokens, and joins the rows still
        generating to the batch."""
        _mark_started(requests)
        with self.adapters.rows([r.slot for r in requests]):
            logits, kv = self._passes.prefill([r.prompt for r in requests])
        self._started(requests, logits, kv)

    def _mixable(self, requests: list[Request]) -> bool:
        """Whether the requests' prompts may be prefilled in the running rows' next step."""
        return (
            bool(requests)
            and isinstance(self._passes, GemmaPasses)
            and sum(len(r.prompt) for r in requests) <= MIXED_PROMPT_TOKENS
        )

    def _step_and_start(self, requests: list[Request]) -> None:
        """A step of the running rows and the prefill of `requests` in one pass; then as
        `_step` and `_start` each."""
        _mark_started(requests)
        tokens, slots = self._step_inputs()
        per_token = slots + [r.slot for r in requests for _ in r.prompt]
        with self.adapters.rows(per_token, flat=True):
            stepped, logits, kv = self._passes.step_and_prefill(
                self._kv, tokens, [r.prompt for r in requests]
            )
        self._stepped(stepped)
        self._started(requests, logits, kv)

    def _started(self, requests: list[Request], logits: torch.Tensor, kv: KVBatch) -> None:
        """Samples the prefilled requests' first tokens and joins the rows still generating
        to the batch."""
        copies = [i for i, r in enumerate(requests) for _ in r.active]  # a row per candidate
        logits = logits[copies]
        groups, rows, still, ended = self._groups(requests), [], [], []
        drawn = draw_rows(logits, groups)
        for request, group in zip(requests, groups, strict=True):
            keep = self._advance(request, drawn[group.rows])
            rows.extend(copies[group.start + k] for k in keep)
            (still if keep else ended).append(request)
        if still:
            kv.select(rows)
            if self._kv is None:
                self._kv = kv
            else:
                self._kv.join(kv)
            self._running.extend(still)
        for request in ended:
            self._end(request, None)

    @staticmethod
    def _groups(requests: list[Request]) -> list[RowGroup]:
        """Each request's consecutive rows, in order."""
        groups, offset = [], 0
        for request in requests:
            groups.append(RowGroup(offset, len(request.active), request.params, request.generator))
            offset += len(request.active)
        return groups

    def _step(self) -> None:
        """One forward pass for every running row, then each request samples its rows."""
        tokens, slots = self._step_inputs()
        with self.adapters.rows(slots):
            logits = self._passes.step(self._kv, tokens)
        self._stepped(logits)

    def _step_inputs(self) -> tuple[torch.Tensor, list[int]]:
        """Each running row's last token and adapter slot."""
        running = self._running
        slots = [r.slot for r in running for _ in r.active]
        tokens = torch.tensor([t for r in running for t in r.last], device=self.loaded.model.device)
        self._observer.step(self._name, len(slots))
        return tokens, slots

    def _stepped(self, logits: torch.Tensor) -> None:
        """Each running request samples its rows from a step's logits; finished ones end."""
        running = self._running
        groups = self._groups(running)
        drawn = draw_rows(logits, groups)
        still, ended, rows = [], [], []
        for request, group in zip(running, groups, strict=True):
            keep = self._advance(request, drawn[group.rows])
            rows.extend(group.start + k for k in keep)
            (still if keep else ended).append(request)
        self._keep(still, rows)
        for request in ended:
            self._end(request, None)

    def _advance(self, request: Request, drawn: list[int]) -> list[int]:
        """Gives each active candidate its new token and sends the new text; the rows (of the
        request's active ones) still generating afterwards."""
        params = request.params
        chunk = StreamChunk(
            [""] * params.candidate_count, [None] * params.candidate_count, len(request.prompt)
        )
        keep = []
        for row, index in enumerate(request.active):
            delta, done = request.texts[index].take(
                drawn[row], self._stop_ids, params.max_output_tokens
            )
            chunk.deltas[index], chunk.finished[index] = delta, done
            if done is None:
                keep.append(row)
            else:
                self._observer.candidate_tokens(self._name, done.token_count)
        request.active = [request.active[row] for row in keep]
        request.last = [drawn[row] for row in keep]
        self._timed(request)
        if any(chunk.deltas) or any(done is not None for done in chunk.finished):
            request.outbox.put(chunk)
        return keep

    def _timed(self, request: Request) -> None:
        now = time.monotonic()
        if request.last_token_at is None:
            seconds = now - request.submitted
            self._observer.first_token(self._name, seconds, len(request.prompt))
        else:
            self._observer.token_gap(self._name, now - request.last_token_at)
        request.last_token_at = now

    def _end(self, request: Request, error: Exception | None) -> None:
        """Unpins the request's adapter and closes its outbox (with the error, if any)."""
        self.adapters.release(request.slot)
        request.slot = NO_ADAPTER
        now = time.monotonic()
        outcome = _outcome(request, error)  # before the outbox ends: its reader may close it
        if error is None:
            request.outbox.end()
        else:
            request.outbox.fail(error)
        if request.started:
            took = now - request.started
            self._seconds_per_request = 0.8 * self._seconds_per_request + 0.2 * took
        self._observer.request_finished(self._name, now - request.submitted, outcome)


def _passes_for(model, bank: AdapterBank) -> Passes:
    """Gemma 3's own lean passes where they compute what transformers would, else the
    transformers decoder."""
    return GemmaPasses(model, bank) if GemmaPasses.supports(model) else TransformersPasses(model)


def _mark_started(requests: list[Request]) -> None:
    started = time.monotonic()
    for request in requests:
        request.started = started


def _rows_in_use(requests: list[Request]) -> int:
    """The batch rows `requests` hold, less those of requests whose client went away: their
    rows leave at the next step."""
    return sum(len(r.active) for r in requests if not r.outbox.closed)


def _prefill_groups(requests: list[Request]) -> list[list[Request]]:
    """Requests to prefill together, shortest prompts first. A group is padded to its
    longest prompt; it takes another prompt while that wastes at most PREFILL_WASTE tokens
    or half its real tokens, and holds at most PREFILL_TOKENS (a longer prompt goes alone):
    the running rows wait for each prefill."""
    groups: list[list[Request]] = []
    group: list[Request] = []
    for request in sorted(requests, key=lambda r: len(r.prompt)):
        trial = [*group, request]
        padded = len(request.prompt) * len(trial)
        waste = padded - sum(len(r.prompt) for r in trial)
        if group and (waste > max(PREFILL_WASTE, (padded - waste) // 2) or padded > PREFILL_TOKENS):
            groups.append(group)
            trial = [request]
        group = trial
    return [*groups, group] if group else groups


def _outcome(request: Request, error: Exception | None) -> str:
    """done, cancelled (the client went away), deadline or error."""
    if error is None:
        return "cancelled" if request.outbox.closed else "done"
    if isinstance(error, ServiceError) and error.code == Code.DEADLINE_EXCEEDED:
        return "deadline"
    return "error"


def _shutting_down() -> ServiceError:
    return ServiceError(Code.UNAVAILABLE, "The server is shutting down; retry in a moment.")


_live: weakref.WeakSet[Scheduler] = weakref.WeakSet()


@atexit.register
def stop_all(timeout: float = 10.0) -> None:
    """Stops every scheduler's thread: at exit, before the interpreter tears down. A model
    thread still inside torch then would abort the process ("terminate called without an
    active exception") as it finishes its last request."""
    for scheduler in list(_live):
        scheduler.stop(timeout)


def _deadline_exceeded() -> ServiceError:
    return ServiceError(Code.DEADLINE_EXCEEDED, "The request did not finish before its deadline.")
