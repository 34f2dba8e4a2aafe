"""Tunesmith extensions: tunedModels.exportAdapter and tunedModels.importAdapter."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse, Response

from tunesmith.api import wire
from tunesmith.api.adapters import decode_import, receive_archive
from tunesmith.api.auth import Principal, authenticate, authenticate_reader
from tunesmith.api.deps import adapters, pretty, query
from tunesmith.api.openapi import operation
from tunesmith.api.responses import json_response

router = APIRouter()
TAR = "application/x-tar"
IMPORT_QUERY = {
    "tunedModelId": wire.STRING,
    "displayName": wire.STRING,
    "description": wire.STRING,
    "baseModel": wire.STRING,
}


@router.get(
    "/tunedModels/{model_id}:exportAdapter",
    openapi_extra=operation(query={"format": wire.STRING}),
    response_class=FileResponse,
)
async def export_adapter(
    request: Request, model_id: str, caller: Principal = Depends(authenticate_reader)
) -> Response:
    fmt = query(request, "format") or "peft"
    export = await run_in_threadpool(adapters(request).export, caller, model_id, fmt)
    return FileResponse(
        export.archive,
        media_type=TAR,
        filename=export.archive.name,
        background=BackgroundTask(export.discard),
    )


@router.post(
    "/tunedModels:importAdapter",
    openapi_extra={
        **operation(query=IMPORT_QUERY),
        # Any media type is read as the archive; octet-stream is the one OpenAPI tools know.
        "requestBody": {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            }
        },
    },
)
async def import_adapter(request: Request, caller: Principal = Depends(authenticate)) -> Response:
    command = decode_import(request)
    service = adapters(request)
    with service.scratch() as scratch:
        archive = await receive_archive(request, scratch / "upload.tar")
        model = await run_in_threadpool(service.import_adapter, caller, command, archive, scratch)
    return json_response(wire.tuned_model_json(model), pretty=pretty(request))
