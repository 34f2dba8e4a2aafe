"""tunedModels.permissions (create, list, get, patch, delete) and transferOwnership."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from tunesmith.api import wire
from tunesmith.api.auth import Principal, authenticate
from tunesmith.api.deps import body, pretty, query, query_int, sharing
from tunesmith.api.openapi import PAGING, operation
from tunesmith.api.responses import json_response

router = APIRouter()


@router.post(
    "/tunedModels/{model_id}:transferOwnership",
    openapi_extra=operation("TransferOwnershipRequest"),
)
async def transfer_ownership(
    request: Request, model_id: str, caller: Principal = Depends(authenticate)
) -> Response:
    email = wire.decode_transfer(await body(request))
    await run_in_threadpool(sharing(request).transfer_ownership, caller, model_id, email)
    return json_response({}, pretty=pretty(request))


@router.post("/tunedModels/{model_id}/permissions", openapi_extra=operation("Permission"))
async def create_permission(
    request: Request, model_id: str, caller: Principal = Depends(authenticate)
) -> Response:
    grant = wire.decode_permission(await body(request))
    permission = await run_in_threadpool(sharing(request).create, caller, model_id, grant)
    return json_response(wire.permission_json(permission), pretty=pretty(request))


@router.get("/tunedModels/{model_id}/permissions", openapi_extra=operation(query=PAGING))
def list_permissions(
    request: Request, model_id: str, caller: Principal = Depends(authenticate)
) -> Response:
    found, token = sharing(request).list(
        caller, model_id, query_int(request, "pageSize"), query(request, "pageToken")
    )
    data: dict = {}
    if found:
        data["permissions"] = [wire.permission_json(p) for p in found]
    if token:
        data["nextPageToken"] = token
    return json_response(data, pretty=pretty(request))


@router.get("/tunedModels/{model_id}/permissions/{permission_id}")
def get_permission(
    request: Request, model_id: str, permission_id: str, caller: Principal = Depends(authenticate)
) -> Response:
    permission = sharing(request).get(caller, model_id, permission_id)
    return json_response(wire.permission_json(permission), pretty=pretty(request))


@router.patch(
    "/tunedModels/{model_id}/permissions/{permission_id}",
    openapi_extra=operation("Permission", {"updateMask": wire.STRING}),
)
async def update_permission(
    request: Request, model_id: str, permission_id: str, caller: Principal = Depends(authenticate)
) -> Response:
    role = wire.decode_permission_update(await body(request), query(request, "updateMask"))
    permission = await run_in_threadpool(
        sharing(request).update, caller, model_id, permission_id, role
    )
    return json_response(wire.permission_json(permission), pretty=pretty(request))


@router.delete("/tunedModels/{model_id}/permissions/{permission_id}")
def delete_permission(
    request: Request, model_id: str, permission_id: str, caller: Principal = Depends(authenticate)
) -> Response:
    sharing(request).delete(caller, model_id, permission_id)
    return json_response({}, pretty=pretty(request))
