"""Where a generation's chunks wait for its client: filled by the model's thread, read by
the client's thread (blocking iteration) or event loop (async iteration).

Reading never holds the model. Closing, from any thread, tells the scheduler that nobody
will read any more: the request's rows leave the batch at the next step."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass

from tunesmith.serving.text import Candidate


@dataclass
class StreamChunk:
    deltas: list[str]  # new text per candidate since the last chunk ("" if none)
    finished: list[Candidate | None]  # set for a candidate in the chunk where it finishes
    prompt_token_count: int


class Outbox:
    """One generation's chunks between the scheduler (`put`, `end`, `fail`) and its
    `GenerationStream`."""

    def __init__(self, prompt_token_count: int) -> None:
        self.prompt_token_count = prompt_token_count
        self._chunks: deque[StreamChunk] = deque()
        self._lock = threading.Condition()
        self._error: BaseException | None = None
        self._wakers: list[Callable[[], None]] = []
        self.done = False  # the producer is finished
        self.closed = False  # the consumer is gone
        self.on_close: Callable[[], None] = lambda: None

    # ---------------------------------------------------------------- the producer

    def put(self, chunk: StreamChunk) -> None:
        with self._lock:
            self._chunks.append(chunk)
            self._lock.notify_all()
        self._wake()

    def end(self) -> None:
        self._finish(None)

    def fail(self, error: BaseException) -> None:
        self._finish(error)

    def _finish(self, error: BaseException | None) -> None:
        with self._lock:
            self.done, self._error = True, error
            self._lock.notify_all()
        self._wake()

    def _wake(self) -> None:
        for wake in list(self._wakers):
            wake()

    # ---------------------------------------------------------------- the consumer

    def close(self) -> None:
        """Stops the generation if it still runs; further iteration ends at once."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._lock.notify_all()
        self._wake()
        if not self.done:
            self.on_close()

    def next_chunk(self) -> StreamChunk:
        with self._lock:
            while not (self._chunks or self.done or self.closed):
                self._lock.wait()
            return self._take()

    def _take(self) -> StreamChunk:
        """The next chunk; the caller holds the lock and there is something to report."""
        if self.closed:
            raise StopIteration
        if self._chunks:
            return self._chunks.popleft()
        if self._error is not None:
            error, self._error = self._error, None
            self.closed = True
            raise error
        raise StopIteration

    async def next_chunk_async(self) -> StreamChunk:
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()

        def wake() -> None:
            with suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(ready.set)

        self._wakers.append(wake)
        try:
            while True:
                ready.clear()
                with self._lock:
                    if self._chunks or self.done or self.closed:
                        try:
                            return self._take()
                        except StopIteration:
                            raise StopAsyncIteration from None
                await ready.wait()
        finally:
            self._wakers.remove(wake)


class GenerationStream:
    """The chunks of one generation, in order; iterate it (with `for` or `async for`) and
    close it when the client goes away. An error in generation is raised by the iteration,
    after the chunks that came before it. Dropping it unclosed closes it: the scheduler
    holds only its outbox."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self.prompt_token_count = outbox.prompt_token_count

    def close(self) -> None:
        self._outbox.close()

    def __del__(self) -> None:
        self._outbox.close()

    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> StreamChunk:
        return self._outbox.next_chunk()

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> StreamChunk:
        return await self._outbox.next_chunk_async()
