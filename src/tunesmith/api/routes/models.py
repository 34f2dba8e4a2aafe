"""models: the base model catalog (list, get)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from tunesmith.api import wire
from tunesmith.api.auth import authenticate_reader
from tunesmith.api.deps import pretty, query, query_int, service
from tunesmith.api.openapi import PAGING, operation
from tunesmith.api.responses import json_response
from tunesmith.api.service import next_page_token, read_page

router = APIRouter(dependencies=[Depends(authenticate_reader)])


@router.get("/models", openapi_extra=operation(query=PAGING))
def list_models(request: Request) -> Response:
    page = read_page(query_int(request, "pageSize"), query(request, "pageToken"), 50, "models")
    entries, more = service(request).list_base_models(page)
    data: dict = {"models": [wire.model_json(e) for e in entries]}
    if token := next_page_token(page, more, "models"):
        data["nextPageToken"] = token
    return json_response(data, pretty=pretty(request))


@router.get("/models/{base_id}")
def get_model(request: Request, base_id: str) -> Response:
    entry = service(request).base_model(base_id)
    return json_response(wire.model_json(entry), pretty=pretty(request))
