"""The HTTP client behind the client commands (tune, models, operations, generate, export),
and how every failure is shown: a message and a non-zero exit, never a traceback."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, ParamSpec, TypeVar

import httpx
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

from tunesmith.cli.common import local_settings
from tunesmith.config import Settings

API = "/v1beta"
CANCELLED = 1  # google.rpc.Code of a cancelled tuning operation
# Where `tunesmith serve` writes its owner's key (api/auth.py Credentials.owner_key_path).
OWNER_KEY_FILE = "owner-api-key"
# soft_wrap: messages stay whole lines (for grep); tables still fit the terminal.
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)
P = ParamSpec("P")
T = TypeVar("T")


class CliError(Exception):
    """A problem the user can fix, shown as its message alone."""

    def __init__(self, message: str, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.message, self.details = message, details or []


@dataclass
class ApiError(Exception):
    """A google.rpc Status error body from the server."""

    code: int
    status: str
    message: str
    violations: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def from_body(cls, body: dict[str, Any], http_status: int) -> ApiError:
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            return cls(http_status, "", f"the server answered HTTP {http_status}")
        violations = [
            (v.get("field", ""), v.get("description", ""))
            for detail in error.get("details", [])
            for v in detail.get("fieldViolations", [])
        ]
        return cls(
            int(error.get("code", http_status)),
            str(error.get("status", "")),
            str(error.get("message", "")),
            violations,
        )

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        try:
            body = response.json()
        except ValueError:
            return cls(response.status_code, "", f"the server answered HTTP {response.status_code}")
        return cls.from_body(body, response.status_code)


def resolve_api_key(settings: Settings) -> str:
    """TUNESMITH_API_KEY, else the owner's key in the local data dir."""
    if settings.api_key:
        return settings.api_key
    path = settings.secrets_dir / OWNER_KEY_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise CliError(
            "No API key: set TUNESMITH_API_KEY, or run this where the server's data dir holds "
            f"its owner key ({path} does not exist; `tunesmith serve` creates it)."
        ) from None
    except OSError as error:
        raise CliError(f"Cannot read the owner's API key from {path}: {error.strerror}") from None


class Client:
    """JSON over HTTP to one server, with the caller's API key on every request."""

    def __init__(self, base_url: str, api_key: str) -> None:
        self.http = httpx.Client(
            base_url=base_url,
            headers={"x-goog-api-key": api_key},
            timeout=httpx.Timeout(60.0, read=None),
        )

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        response = self.http.request(method, API + path, json=body, params=_present(params))
        if response.is_error:
            raise ApiError.from_response(response)
        return response.json() if response.content else {}

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        return self.call("GET", path, params=params)

    def post(self, path: str, body: dict[str, Any] | None = None, **params: Any) -> dict[str, Any]:
        return self.call("POST", path, body or {}, params)

    def patch(self, path: str, body: dict[str, Any], **params: Any) -> dict[str, Any]:
        return self.call("PATCH", path, body, params)

    def delete(self, path: str) -> dict[str, Any]:
        return self.call("DELETE", path)

    def pages(self, path: str, key: str, **params: Any) -> Iterator[dict[str, Any]]:
        """Every item of a paged list."""
        token = None
        while True:
            page = self.get(path, pageSize=100, pageToken=token, **params)
            yield from page.get(key, [])
            token = page.get("nextPageToken")
            if not token:
                return

    @contextmanager
    def stream(
        self, method: str, path: str, params: dict[str, Any] | None = None, **kwargs: Any
    ) -> Iterator[httpx.Response]:
        """A response read as it arrives; an error status raises ApiError."""
        with self.http.stream(method, API + path, params=_present(params), **kwargs) as response:
            if response.is_error:
                response.read()
                raise ApiError.from_response(response)
            yield response

    def upload(self, path: str, content: BinaryIO, **params: Any) -> dict[str, Any]:
        response = self.http.post(
            API + path,
            content=content,
            params=_present(params),
            headers={"Content-Type": "application/x-tar"},
        )
        if response.is_error:
            raise ApiError.from_response(response)
        return response.json()


def _present(params: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (params or {}).items() if v is not None}


def connect() -> Client:
    settings = local_settings()
    return Client(settings.client_base_url, resolve_api_key(settings))


def tuned_model_id(name: str) -> str:
    """`tunedModels/x` or `x` -> `x`."""
    return name.removeprefix("tunedModels/").strip("/")


def short_time(timestamp: str | None) -> str:
    """`2026-05-01T12:00:00.123Z` -> `2026-05-01 12:00:00` (UTC)."""
    return (timestamp or "")[:19].replace("T", " ")


def fitted(header: str, values: list[str]) -> Column:
    """A column never cut short (names are for copying): other columns give way."""
    width = max((len(v) for v in [header, *values]), default=0)
    return Column(header, no_wrap=True, min_width=width)


def print_table(columns: list[str], rows: list[list[str]], empty: str) -> None:
    """A listing whose first column (the name to copy) is never cut short."""
    if not rows:
        console.print(empty)
        return
    table = Table(fitted(columns[0], [r[0] for r in rows]), *columns[1:])
    for row in rows:
        table.add_row(*row)
    console.print(table)


def details_table(rows: list[tuple[str, str]]) -> Table:
    """Label and value pairs, leaving out the empty ones."""
    table = Table(show_header=False, box=None)
    for label, value in rows:
        if value:
            table.add_row(f"[bold]{label}[/bold]", value)
    return table


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def fail(message: str, details: list[str] | None = None) -> typer.Exit:
    """Prints an error and returns the Exit (status 1) to raise."""
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}")
    for line in details or []:
        err_console.print(f"  {escape(line)}")
    return typer.Exit(1)


def show_api_error(error: ApiError) -> typer.Exit:
    details = [
        f"{where}: {description}" if where else description
        for where, description in error.violations
        if description and description != error.message
    ]
    suffix = f" ({error.status})" if error.status else ""
    return fail(f"{error.message}{suffix}", details)


def reports_errors(command: Callable[P, T]) -> Callable[P, T]:
    """Shows a command's user-facing failures as messages with exit status 1."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            base_url = local_settings().client_base_url
        except ValidationError as error:
            raise fail(f"A TUNESMITH_ setting is invalid: {error}") from None
        try:
            return command(*args, **kwargs)
        except CliError as error:
            raise fail(error.message, error.details) from None
        except ApiError as error:
            raise show_api_error(error) from None
        except httpx.ConnectError:
            raise fail(
                f"Cannot reach the Tunesmith server at {base_url}. Is `tunesmith serve` running? "
                "Set TUNESMITH_SERVER_URL to use another server."
            ) from None
        except httpx.TimeoutException:
            raise fail(f"The server at {base_url} did not answer in time.") from None
        except httpx.HTTPError as error:
            raise fail(f"Talking to {base_url} failed: {error}") from None

    return run
