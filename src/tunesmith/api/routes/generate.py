"""generateContent and streamGenerateContent, on tuned models and on base models."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse

from tunesmith.api import wire
from tunesmith.api.auth import Principal, authenticate_reader
from tunesmith.api.deps import body, pretty, service
from tunesmith.api.errors import status_body
from tunesmith.api.openapi import operation
from tunesmith.api.responses import dumps, json_response
from tunesmith.domain.errors import Code, FieldViolation, ServiceError, invalid
from tunesmith.serving.engine import GenerationCollector, GenerationStream, request_deadline

log = logging.getLogger(__name__)
router = APIRouter()
GENERATE_BODY = operation("GenerateContentRequest")
SERVER_TIMEOUT = "X-Server-Timeout"


async def _generate(
    request: Request, caller: Principal, model_id: str | None, base_id: str | None
) -> Response:
    chunks = await _start(request, caller, model_id, base_id)
    collector = GenerationCollector(chunks)
    async with _closed_on_disconnect(request, chunks) as gone:
        async for chunk in chunks:
            collector.add(chunk)
    if gone.is_set():
        raise ServiceError(Code.CANCELLED, "The client closed the request.")
    version = f"tunedModels/{model_id}" if model_id else f"models/{base_id}"
    generation = collector.generation()
    return json_response(wire.generation_json(generation, version), pretty=pretty(request))


async def _stream(
    request: Request, caller: Principal, model_id: str | None, base_id: str | None
) -> Response:
    chunks = await _start(request, caller, model_id, base_id)
    version = f"tunedModels/{model_id}" if model_id else f"models/{base_id}"
    documents = _documents(request, chunks, version)
    if request.query_params.get("alt") == "sse":
        return StreamingResponse(_sse(documents), media_type="text/event-stream")
    return StreamingResponse(_json_array(documents), media_type="application/json")


async def _start(
    request: Request, caller: Principal, model_id: str | None, base_id: str | None
) -> GenerationStream:
    """Queues the generation (429 if its model's queue is full) and returns its stream at
    once: the engine's thread generates, this event loop only reads."""
    command = wire.decode_generate(await body(request))
    timeout = _server_timeout(request)
    if timeout is not None:
        request_deadline.set(time.monotonic() + timeout)  # this request's context only
    return await run_in_threadpool(service(request).stream, caller, model_id, base_id, command)


def _server_timeout(request: Request) -> float | None:
    """Seconds from the X-Server-Timeout header (google-genai sends its timeout there)."""
    raw = request.headers.get(SERVER_TIMEOUT)
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise invalid(
            [
                FieldViolation(
                    SERVER_TIMEOUT, f"{SERVER_TIMEOUT} must be a positive number of seconds"
                )
            ]
        )
    return seconds


@asynccontextmanager
async def _closed_on_disconnect(
    request: Request, chunks: GenerationStream
) -> AsyncIterator[asyncio.Event]:
    """Closes the stream as soon as the client disconnects (its rows then leave the batch
    at the next step), and in any case on leaving; the event tells whether it did."""
    gone = asyncio.Event()

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone.set()
        chunks.close()

    watcher = asyncio.create_task(watch())
    try:
        yield gone
    finally:
        watcher.cancel()
        chunks.close()


async def _documents(
    request: Request, chunks: GenerationStream, version: str
) -> AsyncIterator[dict]:
    """Response documents; an error after the stream began becomes a last `error` one."""
    finished: dict[int, int] = {}  # candidate index -> tokens sampled
    async with _closed_on_disconnect(request, chunks):
        try:
            async for chunk in chunks:
                for index, candidate in enumerate(chunk.finished):
                    if candidate is not None:
                        finished[index] = candidate.token_count
                done = len(finished) == len(chunk.finished)
                total = sum(finished.values()) if done else None
                yield wire.stream_chunk_json(chunk, version, total)
        except ServiceError as error:
            yield status_body(error)
        except Exception:
            log.exception("generation failed mid-stream")
            yield status_body(ServiceError(Code.INTERNAL, "Internal error encountered."))


async def _sse(documents: AsyncIterator[dict]) -> AsyncIterator[str]:
    async for document in documents:
        yield f"data: {dumps(document, pretty=False)}\r\n\r\n"


async def _json_array(documents: AsyncIterator[dict]) -> AsyncIterator[str]:
    # google-api-core requires the very first byte to be '['.
    separator = "["
    async for document in documents:
        yield separator + dumps(document)
        separator = ",\n"
    yield "[]" if separator == "[" else "]"


@router.post("/tunedModels/{model_id}:generateContent", openapi_extra=GENERATE_BODY)
async def generate_tuned(
    request: Request, model_id: str, caller: Principal = Depends(authenticate_reader)
) -> Response:
    return await _generate(request, caller, model_id, None)


@router.post("/tunedModels/{model_id}:streamGenerateContent", openapi_extra=GENERATE_BODY)
async def stream_tuned(
    request: Request, model_id: str, caller: Principal = Depends(authenticate_reader)
) -> Response:
    return await _stream(request, caller, model_id, None)


@router.post("/models/{base_id}:generateContent", openapi_extra=GENERATE_BODY)
async def generate_base(
    request: Request, base_id: str, caller: Principal = Depends(authenticate_reader)
) -> Response:
    return await _generate(request, caller, None, base_id)


@router.post("/models/{base_id}:streamGenerateContent", openapi_extra=GENERATE_BODY)
async def stream_base(
    request: Request, base_id: str, caller: Principal = Depends(authenticate_reader)
) -> Response:
    return await _stream(request, caller, None, base_id)


@router.post("/models/{base_id}:countTokens")
async def count_tokens(
    request: Request, base_id: str, _: Principal = Depends(authenticate_reader)
) -> Response:
    data = await body(request)
    # countTokens takes `contents` directly or a whole `generateContentRequest`.
    command = wire.decode_generate(data.get("generateContentRequest") or data)
    total = await run_in_threadpool(service(request).count_tokens, base_id, command)
    return json_response({"totalTokens": total}, pretty=pretty(request))
