"""The web console's static files: GET / answers the page, /console/{name} its scripts and
styles. They need no credentials: the page asks for an API key and sends it with every call
it makes to the public /v1beta API, as the SDKs do."""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import PurePosixPath

from fastapi import APIRouter
from starlette.responses import Response

from tunesmith.domain.errors import not_found

router = APIRouter(include_in_schema=False)

CONSOLE_DIR = files("tunesmith") / "web"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# Everything comes from this origin; nothing inline, no frames, no plugins.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidated on every load, so a new release's files are never stale.
    "Cache-Control": "no-cache",
}


def _serve(asset: Traversable) -> Response:
    media_type = MEDIA_TYPES[PurePosixPath(asset.name).suffix]
    return Response(asset.read_bytes(), media_type=media_type, headers=SECURITY_HEADERS)


@router.get("/")
def console_page() -> Response:
    return _serve(CONSOLE_DIR / "index.html")


@router.get("/console/{name}")
def console_asset(name: str) -> Response:
    asset = CONSOLE_DIR / name
    servable = (
        "/" not in name
        and not name.startswith(".")
        and PurePosixPath(name).suffix in MEDIA_TYPES
        and asset.is_file()
    )
    if not servable:
        raise not_found(f"Console file {name} does not exist.")
    return _serve(asset)
