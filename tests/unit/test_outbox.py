"""A generation's outbox read by an event loop: chunk by chunk, or whole once it ends."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tunesmith.domain.errors import Code, ServiceError
from tunesmith.serving.outbox import GenerationStream, Outbox, StreamChunk


def chunk(text: str) -> StreamChunk:
    return StreamChunk([text], [None], 3)


def produce(outbox: Outbox, texts: list[str], error: BaseException | None = None) -> None:
    """From another thread, as the model's scheduler does."""

    def run() -> None:
        for text in texts:
            outbox.put(chunk(text))
        if error:
            outbox.fail(error)
        else:
            outbox.end()

    threading.Thread(target=run).start()


def count_wakes(outbox: Outbox) -> list[int]:
    """How many times the producer woke the loop (through the outbox's wakers)."""
    wakes = [0]
    original = outbox._wake

    def counted(ending: bool = False) -> None:
        wakes[0] += len(outbox._wakers) + (len(outbox._end_wakers) if ending else 0)
        original(ending)

    outbox._wake = counted
    return wakes


def test_the_whole_answer_wakes_the_loop_once():
    outbox = Outbox(3)
    wakes = count_wakes(outbox)

    async def read() -> list[StreamChunk]:
        rest = asyncio.create_task(GenerationStream(outbox).rest_async())
        await asyncio.sleep(0)  # waiting before the producer starts
        produce(outbox, ["a", "b", "c"])
        return await rest

    chunks = asyncio.run(read())

    assert [c.deltas[0] for c in chunks] == ["a", "b", "c"]
    assert wakes[0] == 1


def test_chunk_by_chunk_reading_gets_each_chunk():
    outbox = Outbox(3)

    async def read() -> list[str]:
        stream = GenerationStream(outbox)
        produce(outbox, ["a", "b"])
        return [c.deltas[0] async for c in stream]

    assert asyncio.run(read()) == ["a", "b"]


def test_the_whole_answer_raises_the_generations_error():
    outbox = Outbox(3)
    produce(outbox, ["a"], ServiceError(Code.UNAVAILABLE, "stopping"))

    with pytest.raises(ServiceError, match="stopping"):
        asyncio.run(GenerationStream(outbox).rest_async())


def test_a_closed_stream_ends_the_wait_with_nothing():
    outbox = Outbox(3)
    stream = GenerationStream(outbox)

    async def read() -> list[StreamChunk]:
        rest = asyncio.create_task(stream.rest_async())
        await asyncio.sleep(0)
        threading.Thread(target=stream.close).start()
        return await rest

    assert asyncio.run(read()) == []
