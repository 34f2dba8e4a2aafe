"""Training examples from a JSONL or CSV file, checked row by row before anything is sent.

JSONL: one object per line, `{"text_input": ..., "output": ...}` (or `input` for
`text_input`). CSV: two columns, input then output, with an optional header row.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.cli.client import CliError
from tunesmith.domain.validation import MAX_EXAMPLES, MAX_INPUT_CHARS, MAX_OUTPUT_CHARS

INPUT_KEYS = ("text_input", "input", "textInput")
CSV_HEADERS = {name.lower() for name in INPUT_KEYS}
SHOWN_PROBLEMS = 20


@dataclass(frozen=True)
class Example:
    text_input: str
    output: str
    line: int  # where the example starts in its file, from 1


def load_examples(path: Path) -> list[Example]:
    """The file's examples, or a CliError naming the file, line and problem of every bad
    row (the first SHOWN_PROBLEMS of them)."""
    text = _read_text(path)
    rows = _csv_rows(text) if _is_csv(path, text) else _jsonl_rows(text)
    examples: list[Example] = []
    problems: list[str] = []
    for line, row in rows:
        if isinstance(row, str):
            problems.append(f"{path}:{line}: {row}")
            continue
        problem = _check(*row)
        if problem:
            problems.append(f"{path}:{line}: {problem}")
        else:
            examples.append(Example(row[0], row[1], line))
    if problems:
        raise CliError(f"{path} has {_count(len(problems), 'bad row')}", _shown(problems))
    if not examples:
        raise CliError(f"{path} holds no examples.")
    if len(examples) > MAX_EXAMPLES:
        raise CliError(
            f"{path} holds {len(examples)} examples; at most {MAX_EXAMPLES} are allowed."
        )
    return examples


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CliError(f"{path} does not exist.") from None
    except IsADirectoryError:
        raise CliError(f"{path} is a folder; give a .jsonl or .csv file.") from None
    except OSError as error:
        raise CliError(f"Cannot read {path}: {error.strerror}.") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise CliError(f"{path}:{line}: the file is not UTF-8 text.") from None


def _is_csv(path: Path, text: str) -> bool:
    if path.suffix.lower() == ".csv":
        return True
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        return False
    return not text.lstrip().startswith("{")


Row = tuple[int, tuple[str, str] | str]  # line, and (input, output) or the row's problem


def _jsonl_rows(text: str) -> list[Row]:
    if text.lstrip().startswith("["):
        return [(1, "this is a JSON array; JSONL needs one JSON object per line")]
    rows: list[Row] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            rows.append((number, _json_row(line)))
    return rows


def _json_row(line: str) -> tuple[str, str] | str:
    try:
        value = json.loads(line)
    except ValueError as error:
        return f"not valid JSON ({error})"
    if not isinstance(value, dict):
        return f"expected a JSON object with text_input and output, got {_kind(value)}"
    unknown = [key for key in value if key not in (*INPUT_KEYS, "output")]
    if unknown:
        return f"unknown field {unknown[0]!r}; expected text_input (or input) and output"
    inputs = [key for key in INPUT_KEYS if key in value]
    if len(inputs) > 1:
        return f"has both {inputs[0]!r} and {inputs[1]!r}; give one"
    if "output" not in value:
        return "missing 'output'"
    for key in (*inputs, "output"):
        if not isinstance(value[key], str):
            return f"{key!r} must be a string, got {_kind(value[key])}"
    return (value[inputs[0]] if inputs else "", value["output"])


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")


def _csv_rows(text: str) -> list[Row]:
    reader = csv.reader(text.splitlines(keepends=True))
    rows: list[Row] = []
    start = 1
    try:
        for record in reader:
            line, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in record):
                continue
            if not rows and _is_header(record):
                continue
            rows.append((line, _csv_row(record)))
    except csv.Error as error:
        rows.append((start, f"not valid CSV ({error})"))
    return rows


def _is_header(record: list[str]) -> bool:
    return (
        len(record) == 2
        and record[0].strip().lower() in CSV_HEADERS
        and (record[1].strip().lower() == "output")
    )


def _csv_row(record: list[str]) -> tuple[str, str] | str:
    if len(record) != 2:
        return f"expected 2 columns (input, output), got {len(record)}"
    return record[0], record[1]


def _check(text_input: str, output: str) -> str | None:
    if not output:
        return "the output is empty"
    if len(text_input) > MAX_INPUT_CHARS:
        return f"the input is longer than {MAX_INPUT_CHARS} characters"
    if len(output) > MAX_OUTPUT_CHARS:
        return f"the output is longer than {MAX_OUTPUT_CHARS} characters"
    return None


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _shown(problems: list[str]) -> list[str]:
    if len(problems) <= SHOWN_PROBLEMS:
        return problems
    return [*problems[:SHOWN_PROBLEMS], f"... and {len(problems) - SHOWN_PROBLEMS} more"]
