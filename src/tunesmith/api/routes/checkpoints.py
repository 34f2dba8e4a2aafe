"""Tunesmith extensions: a tuned model's evaluations and epoch checkpoints, and
tunedModels.selectCheckpoint (which checkpoint the model serves)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from tunesmith.api import wire
from tunesmith.api.auth import Principal, authenticate, authenticate_reader
from tunesmith.api.deps import body, pretty, service
from tunesmith.api.openapi import operation
from tunesmith.api.responses import json_response
from tunesmith.api.service import CheckpointList

router = APIRouter()


def _checkpoints_response(request: Request, model_id: str, found: CheckpointList) -> Response:
    data = wire.checkpoints_json(model_id, found.checkpoints, found.evaluations, found.serving)
    return json_response(data, pretty=pretty(request))


@router.post(
    "/tunedModels/{model_id}:selectCheckpoint",
    openapi_extra=operation("SelectCheckpointRequest"),
)
async def select_checkpoint(
    request: Request, model_id: str, caller: Principal = Depends(authenticate)
) -> Response:
    epoch = wire.decode_select_checkpoint(await body(request), model_id)
    found = await run_in_threadpool(service(request).select_checkpoint, caller, model_id, epoch)
    return _checkpoints_response(request, model_id, found)


@router.get("/tunedModels/{model_id}/evaluations")
def list_evaluations(
    request: Request, model_id: str, caller: Principal = Depends(authenticate_reader)
) -> Response:
    evaluations = service(request).evaluations(caller, model_id)
    return json_response(wire.evaluations_json(evaluations), pretty=pretty(request))


@router.get("/tunedModels/{model_id}/checkpoints")
def list_checkpoints(
    request: Request, model_id: str, caller: Principal = Depends(authenticate_reader)
) -> Response:
    return _checkpoints_response(request, model_id, service(request).checkpoints(caller, model_id))
