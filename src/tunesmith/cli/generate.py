"""`tunesmith generate MODEL TEXT`: stream a model's answer as it is generated."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

from tunesmith.cli.client import ApiError, connect, print_json, reports_errors, tuned_model_id


@reports_errors
def generate(
    model: str = typer.Argument(..., help="tunedModels/ID, ID, or a base model models/NAME"),
    text: str = typer.Argument(..., help='The input; "-" reads it from stdin'),
    temperature: float | None = typer.Option(
        None, help="0 picks the likeliest token (default: the model's)"
    ),
    top_p: float | None = typer.Option(None, help="Nucleus sampling mass (default: the model's)"),
    top_k: int | None = typer.Option(
        None, help="Sample among this many tokens (default: the model's)"
    ),
    max_output_tokens: int | None = typer.Option(
        None, help="Most tokens to answer with (default: the server's)"
    ),
    seed: int | None = typer.Option(None, help="The same seed and input give the same answer"),
    stop: list[str] = typer.Option([], help="Stop at this text (repeatable)"),
    as_json: bool = typer.Option(False, "--json", help="Print the whole response as JSON"),
) -> None:
    """Generate from a tuned (or base) model, printing tokens as they arrive."""
    config = {
        key: value
        for key, value in (
            ("temperature", temperature),
            ("topP", top_p),
            ("topK", top_k),
            ("maxOutputTokens", max_output_tokens),
            ("seed", seed),
            ("stopSequences", stop or None),
        )
        if value is not None
    }
    prompt = sys.stdin.read() if text == "-" else text
    body = {"contents": [{"role": "user", "parts": [{"text": prompt}]}], "generationConfig": config}
    path = model_path(model)
    client = connect()
    if as_json:
        print_json(client.post(f"{path}:generateContent", body))
        return
    with client.stream(
        "POST", f"{path}:streamGenerateContent", params={"alt": "sse"}, json=body
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data:"):
                _print_chunk(json.loads(line.removeprefix("data:")))
    typer.echo()


def model_path(model: str) -> str:
    if model.startswith("models/"):
        return f"/{model}"
    return f"/tunedModels/{tuned_model_id(model)}"


def _print_chunk(chunk: dict[str, Any]) -> None:
    """Writes the first candidate's new text; an error sent mid-stream ends the command."""
    if "error" in chunk:
        typer.echo()
        raise ApiError.from_body(chunk, 500)
    for candidate in chunk.get("candidates", []):
        if candidate.get("index", 0) == 0:
            for part in candidate.get("content", {}).get("parts", []):
                sys.stdout.write(part.get("text", ""))
    sys.stdout.flush()
