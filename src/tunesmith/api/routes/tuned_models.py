"""tunedModels: create, get, list, patch, delete, cancel."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from tunesmith.api import wire
from tunesmith.api.auth import Principal, authenticate, authenticate_reader
from tunesmith.api.deps import body, pretty, query, query_int, service
from tunesmith.api.openapi import PAGING, operation
from tunesmith.api.responses import json_response

router = APIRouter()


@router.post("/tunedModels", openapi_extra=operation("TunedModel", {"tunedModelId": wire.STRING}))
async def create_tuned_model(
    request: Request, caller: Principal = Depends(authenticate)
) -> Response:
    command = wire.decode_create(await body(request), query(request, "tunedModelId"))
    operation = await run_in_threadpool(service(request).create, caller, command)
    return json_response(wire.operation_json(operation, [], None), pretty=pretty(request))


@router.get("/tunedModels", openapi_extra=operation(query={**PAGING, "filter": wire.STRING}))
def list_tuned_models(
    request: Request, caller: Principal = Depends(authenticate_reader)
) -> Response:
    models, token = service(request).list(
        caller,
        query_int(request, "pageSize"),
        query(request, "pageToken"),
        query(request, "filter") or "",
    )
    data: dict = {}
    if models:
        data["tunedModels"] = [wire.tuned_model_json(m) for m in models]
    if token:
        data["nextPageToken"] = token
    return json_response(data, pretty=pretty(request))


@router.post("/tunedModels/{model_id}:cancel")
def cancel_tuning(
    request: Request, model_id: str, caller: Principal = Depends(authenticate)
) -> Response:
    """google-genai's tunings.cancel: cancels the model's tuning operation."""
    service(request).cancel(caller, model_id)
    return json_response({}, pretty=pretty(request))


@router.get("/tunedModels/{model_id}")
def get_tuned_model(
    request: Request, model_id: str, caller: Principal = Depends(authenticate_reader)
) -> Response:
    model = service(request).get(caller, model_id)
    return json_response(wire.tuned_model_json(model), pretty=pretty(request))


@router.patch(
    "/tunedModels/{model_id}",
    openapi_extra=operation("TunedModel", {"updateMask": wire.STRING}),
)
async def update_tuned_model(
    request: Request, model_id: str, caller: Principal = Depends(authenticate)
) -> Response:
    change = wire.decode_update(await body(request), query(request, "updateMask"))
    model = await run_in_threadpool(service(request).update, caller, model_id, change)
    return json_response(wire.tuned_model_json(model), pretty=pretty(request))


@router.delete("/tunedModels/{model_id}")
def delete_tuned_model(
    request: Request, model_id: str, caller: Principal = Depends(authenticate)
) -> Response:
    service(request).delete(caller, model_id)
    return json_response({}, pretty=pretty(request))
