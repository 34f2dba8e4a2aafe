"""JSON responses: pretty-printed like Google's front end (prettyPrint defaults to true)."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

MEDIA_TYPE = "application/json; charset=UTF-8"


def dumps(body: Any, pretty: bool = True) -> str:
    return json.dumps(
        body,
        ensure_ascii=False,
        allow_nan=False,  # NaN or Infinity is no JSON; a guard upstream must catch it
        indent=2 if pretty else None,
        separators=None if pretty else (",", ":"),
    )


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None, pretty: bool = True
) -> Response:
    return Response(dumps(body, pretty) + "\n", status, headers, media_type=MEDIA_TYPE)
