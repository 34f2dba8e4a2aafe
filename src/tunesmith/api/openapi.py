"""The OpenAPI document: request bodies come from the wire codec's schemas, so the
document describes exactly what the codec accepts."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from tunesmith.api import wire

SCALARS = {
    wire.STRING: {"type": "string"},
    wire.FLOAT: {"type": "number"},
    wire.INT32: {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1},
    wire.INT64: {"type": "integer", "format": "int64", "minimum": -(2**63), "maximum": 2**63 - 1},
    wire.BOOL: {"type": "boolean"},
}


def _field_schema(kind: Any) -> dict[str, Any]:
    if isinstance(kind, wire.Repeated):
        return {"type": "array", "items": _field_schema(kind.item)}
    if kind in wire.ENUMS:
        members = list(wire.ENUMS[kind])
        return {"enum": [m.name for m in members] + [int(m) for m in members]}
    if kind == "Any":
        return {}
    if kind in wire.SCHEMAS:
        return {"$ref": f"#/components/schemas/{kind}"}
    return dict(SCALARS[kind])


def component_schemas() -> dict[str, dict[str, Any]]:
    return {
        name: {
            "type": "object",
            "properties": {field: _field_schema(kind) for field, kind in fields.items()},
            "additionalProperties": False,
        }
        for name, fields in wire.SCHEMAS.items()
    }


def operation(body: str | None = None, query: dict[str, str] | None = None) -> dict[str, Any]:
    """`openapi_extra` for a route: its JSON body's schema and its query parameters
    (which the routes read by name in either spelling, so FastAPI cannot see them)."""
    extra: dict[str, Any] = {}
    if body:
        extra["requestBody"] = {
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}}
        }
    if query:
        extra["parameters"] = [
            {"name": name, "in": "query", "required": False, "schema": dict(SCALARS[kind])}
            for name, kind in query.items()
        ]
    return extra


PAGING = {"pageSize": wire.INT32, "pageToken": wire.STRING}


def install(app: FastAPI) -> None:
    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            components = schema.setdefault("components", {})
            components.setdefault("schemas", {}).update(component_schemas())
            components["securitySchemes"] = {
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-goog-api-key"},
                "bearer": {"type": "http", "scheme": "bearer"},
            }
            schema["security"] = [{"apiKey": []}, {"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]
