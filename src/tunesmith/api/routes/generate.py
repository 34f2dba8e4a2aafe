"""generateContent and streamGenerateContent, on tuned models and on base models."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse

from tunesmith.api import wire
from tunesmith.api.auth import Principal, authenticate_reader
from tunesmith.api.errors import status_body
from tunesmith.api.openapi import operation
from tunesmith.api.responses import dumps, json_response
from tunesmith.api.routes.common import body, pretty
from tunesmith.api.routes.tuned_models import service
from tunesmith.domain.errors import Code, ServiceError
from tunesmith.serving.engine import StreamChunk

log = logging.getLogger(__name__)
router = APIRouter()
GENERATE_BODY = operation("GenerateContentRequest")


async def _generate(
    request: Request, caller: Principal, model_id: str | None, base_id: str | None
) -> Response:
    command = wire.decode_generate(await body(request))
    # Inference runs in a thread so the event loop keeps serving other requests.
    generation = await run_in_threadpool(
        service(request).generate, caller, model_id, base_id, command
    )
    version = f"tunedModels/{model_id}" if model_id else f"models/{base_id}"
    return json_response(wire.generation_json(generation, version), pretty=pretty(request))


async def _stream(
    request: Request, caller: Principal, model_id: str | None, base_id: str | None
) -> Response:
    command = wire.decode_generate(await body(request))
    chunks = await run_in_threadpool(service(request).stream, caller, model_id, base_id, command)
    version = f"tunedModels/{model_id}" if model_id else f"models/{base_id}"
    documents = _documents(chunks, version)
    if request.query_params.get("alt") == "sse":
        return StreamingResponse(_sse(documents), media_type="text/event-stream")
    return StreamingResponse(_json_array(documents), media_type="application/json")


def _documents(chunks: Iterator[StreamChunk], version: str) -> Iterator[dict]:
    """Response documents; an error after the stream began becomes a last `error` one."""
    finished: dict[int, int] = {}  # candidate index -> tokens sampled
    try:
        for chunk in chunks:
            for index, candidate in enumerate(chunk.finished):
                if candidate is not None:
                    finished[index] = candidate.token_count
            done = len(finished) == len(chunk.finished)
            yield wire.stream_chunk_json(chunk, version, sum(finished.values()) if done else None)
    except ServiceError as error:
        yield status_body(error)
    except Exception:
        log.exception("generation failed mid-stream")
        yield status_body(ServiceError(Code.INTERNAL, "Internal error encountered."))
    finally:
        # A client that disconnects closes this generator; free the model at once.
        close = getattr(chunks, "close", None)
        if close:
            close()


def _sse(documents: Iterator[dict]) -> Iterator[str]:
    for document in documents:
        yield f"data: {dumps(document, pretty=False)}\r\n\r\n"


def _json_array(documents: Iterator[dict]) -> Iterator[str]:
    # google-api-core requires the very first byte to be '['.
    separator = "["
    for document in documents:
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
