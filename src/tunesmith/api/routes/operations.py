"""tunedModels.operations: get, list, cancel."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from tunesmith.api import wire
from tunesmith.api.auth import Principal, authenticate, authenticate_reader
from tunesmith.api.deps import poll_pacer, pretty, service
from tunesmith.api.responses import json_response

router = APIRouter()


@router.post("/tunedModels/{model_id}/operations/{operation_id}:cancel")
def cancel_operation(
    request: Request, model_id: str, operation_id: str, caller: Principal = Depends(authenticate)
) -> Response:
    service(request).cancel(caller, model_id, operation_id)
    return json_response({}, pretty=pretty(request))


@router.get("/tunedModels/{model_id}/operations/{operation_id}")
async def get_operation(
    request: Request,
    model_id: str,
    operation_id: str,
    caller: Principal = Depends(authenticate_reader),
) -> Response:
    tuning = service(request)
    pacer = poll_pacer(request)
    key = (caller.id, model_id, operation_id)
    await pacer.wait_for_news(
        key, lambda: run_in_threadpool(tuning.repo.operation_progress, operation_id)
    )
    operation, snapshots, model = await run_in_threadpool(
        tuning.operation, caller, model_id, operation_id
    )
    pacer.answered(key, (operation.status, operation.completed_steps))
    return json_response(wire.operation_json(operation, snapshots, model), pretty=pretty(request))


@router.get("/tunedModels/{model_id}/operations")
def list_operations(
    request: Request, model_id: str, caller: Principal = Depends(authenticate_reader)
) -> Response:
    found = service(request).operations(caller, model_id)
    data = {"operations": [wire.operation_json(*item) for item in found]} if found else {}
    return json_response(data, pretty=pretty(request))
