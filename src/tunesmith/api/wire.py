"""The wire codec: Google JSON on one side, plain domain objects on the other.

Requests are read leniently the way Google's front end reads them: strict JSON first and a
JSON5 fallback for the tutorials' trailing commas, camelCase or snake_case keys, enum names
or numbers, int64 as numbers or strings. Unknown names are rejected with the front end's
message. Responses follow proto3 JSON: camelCase, enum names, defaults omitted, RFC 3339
UTC timestamps, and exactly the fields the strict old SDK knows.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from typing import TYPE_CHECKING, Any

import pyjson5

from tunesmith.domain.access import GranteeType, Permission, Role
from tunesmith.domain.errors import FieldViolation, ServiceError, invalid
from tunesmith.domain.resources import (
    CheckpointChoice,
    EpochCheckpoint,
    Evaluation,
    Operation,
    TunedModel,
    TunedModelState,
    TuningExample,
    TuningSnapshot,
    Turn,
)
from tunesmith.domain.validation import (
    CreateTunedModel,
    GenerateRequest,
    PermissionGrant,
    TunedModelUpdate,
    Violations,
    check_descriptive,
    check_evaluation,
    check_examples,
    check_grant,
    check_hyperparameters,
    check_sampling,
    check_source,
    check_tuned_model_id,
)

if TYPE_CHECKING:
    from tunesmith.serving.engine import Generation, StreamChunk
    from tunesmith.training.base_models import CatalogEntry

TYPE_PREFIX = "type.googleapis.com/google.ai.generativelanguage.v1beta."


# ---------------------------------------------------------------- JSON bodies

# The limits every request body meets before any handler sees it (README: "Request limits").
MAX_BODY_BYTES = 32 * 1024 * 1024
MAX_DEPTH = 100  # objects and arrays nested in each other; protobuf's JSON parser's limit
_MAX_REPORTED = 10  # invalid strings named in one error


def body_too_large() -> ServiceError:
    """The hosted front end's answer to an oversized body: 400, not 413."""
    return invalid(
        [FieldViolation("", f"Request payload size exceeds the limit: {MAX_BODY_BYTES} bytes.")]
    )


def parse_body(raw: bytes) -> dict[str, Any]:
    """A JSON object from a request body; strict parser first, JSON5 only on failure. The
    body must fit MAX_BODY_BYTES, nest at most MAX_DEPTH deep and hold only valid Unicode."""
    if len(raw) > MAX_BODY_BYTES:
        raise body_too_large()
    if not raw.strip():
        return {}
    value = _decode_json(raw)
    if not isinstance(value, dict):
        raise invalid([FieldViolation("", "Invalid JSON payload received. Expected an object.")])
    check_tree(value)
    return value


def _decode_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except RecursionError:
        raise _too_deep("") from None
    except (ValueError, UnicodeDecodeError) as strict_error:
        try:
            return pyjson5.decode(raw.decode("utf-8"), maxdepth=MAX_DEPTH)
        except pyjson5.Json5NestingTooDeep:
            raise _too_deep("") from None
        except Exception:
            raise invalid(
                [FieldViolation("", f"Invalid JSON payload received. {strict_error}")]
            ) from None


def _too_deep(path: str) -> ServiceError:
    shown = path if len(path) <= 60 else path[:57] + "..."
    where = f" at '{shown}'" if path else ""
    return invalid(
        [
            FieldViolation(
                path,
                f"Invalid JSON payload received. Nesting{where} is deeper than {MAX_DEPTH} "
                "levels of objects and arrays.",
            )
        ]
    )


@dataclass(slots=True)
class _Node:
    """A value in a decoded body, with the way back to the root for naming it."""

    value: Any
    depth: int
    parent: _Node | None = None
    key: str | int | None = None

    @property
    def path(self) -> str:
        parts: list[str] = []
        node: _Node | None = self
        while node is not None and node.key is not None:
            parts.append(f"[{node.key}]" if isinstance(node.key, int) else f".{node.key}")
            node = node.parent
        # A key may itself hold a lone surrogate: escape it, the error body is UTF-8.
        path = "".join(reversed(parts)).lstrip(".")
        return path.encode("utf-8", "backslashreplace").decode("utf-8")


def check_tree(value: Any) -> None:
    """400 unless `value` nests at most MAX_DEPTH deep and every string in it, keys
    included, is valid Unicode (no lone surrogates, which `\\ud800` escapes can make) with
    no NUL character.
    Iterative, so no depth can exhaust the stack."""
    violations: list[FieldViolation] = []
    stack = [_Node(value, 1)]
    while stack and len(violations) < _MAX_REPORTED:
        node = stack.pop()
        item = node.value
        if isinstance(item, dict | list) and node.depth > MAX_DEPTH:
            raise _too_deep(node.path)
        if isinstance(item, dict):
            for key, child in item.items():
                child_node = _Node(child, node.depth + 1, node, key)
                _check_text(violations, key, child_node)
                stack.append(child_node)
        elif isinstance(item, list):
            stack.extend(_Node(child, node.depth + 1, node, i) for i, child in enumerate(item))
        elif isinstance(item, str):
            _check_text(violations, item, node)
    if violations:
        raise invalid(violations)


def _check_text(violations: list[FieldViolation], text: str, node: _Node) -> None:
    if "\x00" in text:
        # Valid Unicode, but no text column can hold it (PostgreSQL refuses it outright).
        path = node.path
        violations.append(
            FieldViolation(
                path,
                f"'{path}' must not contain NUL (U+0000): found at character {text.index(chr(0))}",
            )
        )
        return
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        path = node.path
        violations.append(
            FieldViolation(
                path,
                f"'{path}' must be valid Unicode: it holds a lone surrogate "
                f"U+{ord(text[error.start]):04X} at character {error.start}",
            )
        )


# ---------------------------------------------------------------- request schemas


STRING, FLOAT, INT32, INT64, BOOL = "string", "float", "int32", "int64", "bool"


@dataclass(frozen=True)
class Repeated:
    item: Any


ENUMS: dict[str, type[IntEnum]] = {
    "TunedModelState": TunedModelState,
    "GranteeType": GranteeType,
    "Role": Role,
    "CheckpointChoice": CheckpointChoice,
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "TunedModel": {
        "name": STRING,
        "tunedModelSource": "TunedModelSource",
        "baseModel": STRING,
        "displayName": STRING,
        "description": STRING,
        "temperature": FLOAT,
        "topP": FLOAT,
        "topK": INT32,
        "state": "TunedModelState",
        "createTime": STRING,
        "updateTime": STRING,
        "tuningTask": "TuningTask",
        "readerProjectNumbers": Repeated(INT64),
    },
    "TunedModelSource": {"tunedModel": STRING, "baseModel": STRING},
    "TuningTask": {
        "startTime": STRING,
        "completeTime": STRING,
        "snapshots": Repeated("TuningSnapshot"),
        "trainingData": "Dataset",
        "hyperparameters": "Hyperparameters",
        # Tunesmith extensions (input only; never in a response): README "Tunesmith
        # extensions to the API".
        "validationData": "Dataset",
        "validationSplit": FLOAT,
        "evaluationIntervalSteps": INT32,
        "checkpointChoice": "CheckpointChoice",
        "seed": INT32,
    },
    "Hyperparameters": {
        "learningRate": FLOAT,
        "learningRateMultiplier": FLOAT,
        "epochCount": INT32,
        "batchSize": INT32,
    },
    "Dataset": {"examples": "TuningExamples"},
    "TuningExamples": {"examples": Repeated("TuningExample")},
    "TuningExample": {"textInput": STRING, "output": STRING},
    "TuningSnapshot": {"step": INT32, "epoch": INT32, "meanLoss": FLOAT, "computeTime": STRING},
    "GenerateContentRequest": {
        "model": STRING,
        "contents": Repeated("Content"),
        "systemInstruction": "Content",
        "tools": Repeated("Any"),
        "toolConfig": "Any",
        "safetySettings": Repeated("Any"),
        "generationConfig": "GenerationConfig",
        "cachedContent": STRING,
    },
    "Content": {"parts": Repeated("Part"), "role": STRING},
    "Part": {
        "text": STRING,
        "thought": BOOL,
        "inlineData": "Any",
        "fileData": "Any",
        "functionCall": "Any",
        "functionResponse": "Any",
        "executableCode": "Any",
        "codeExecutionResult": "Any",
    },
    "GenerationConfig": {
        "candidateCount": INT32,
        "stopSequences": Repeated(STRING),
        "maxOutputTokens": INT32,
        "temperature": FLOAT,
        "topP": FLOAT,
        "topK": INT32,
        "seed": INT32,
        "responseMimeType": STRING,
        "responseSchema": "Any",
        "responseJsonSchema": "Any",
        "presencePenalty": FLOAT,
        "frequencyPenalty": FLOAT,
        "responseLogprobs": BOOL,
        "logprobs": INT32,
        "enableEnhancedCivicAnswers": BOOL,
        "responseModalities": Repeated(STRING),
        "speechConfig": "Any",
        "thinkingConfig": "Any",
        "mediaResolution": STRING,
        "imageConfig": "Any",
    },
    "TransferOwnershipRequest": {"emailAddress": STRING},
    "SelectCheckpointRequest": {"checkpoint": STRING},
    "Permission": {
        "name": STRING,
        "granteeType": "GranteeType",
        "emailAddress": STRING,
        "role": "Role",
    },
}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


def snake_case(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


class _Reader:
    """Normalises one request body against a schema, collecting every violation."""

    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []

    def fail(self, path: str, description: str) -> None:
        self.violations.append(FieldViolation(path, description))

    def message(self, value: Any, schema: str, path: str) -> dict[str, Any] | None:
        if schema == "Any":
            return value
        if not isinstance(value, dict):
            self.fail(path, f"Invalid value at '{path}': expected an object.")
            return None
        fields = SCHEMAS[schema]
        result: dict[str, Any] = {}
        for key, item in value.items():
            name = _camel(key) if key not in fields else key
            if name not in fields:
                where = f" at '{_snake_path(path)}'" if path else ""
                self.fail(
                    f"{path}.{key}" if path else key,
                    f'Invalid JSON payload received. Unknown name "{key}"{where}: Cannot find field.',
                )
                continue
            if item is None:
                continue
            child = f"{path}.{name}" if path else name
            converted = self.value(item, fields[name], child)
            if converted is not None:
                result[name] = converted
        return result

    def value(self, item: Any, kind: Any, path: str) -> Any:
        if isinstance(kind, Repeated):
            if not isinstance(item, list):
                self.fail(path, f"Invalid value at '{path}': expected a list.")
                return None
            values = [self.value(v, kind.item, f"{path}[{i}]") for i, v in enumerate(item)]
            return [v for v in values if v is not None]
        if kind in ENUMS:
            return self.enum(item, ENUMS[kind], path)
        if kind in SCHEMAS or kind == "Any":
            return self.message(item, kind, path)
        return self.scalar(item, kind, path)

    def enum(self, item: Any, enum: type[IntEnum], path: str) -> IntEnum | None:
        try:
            return enum[item] if isinstance(item, str) else enum(_integer(item))
        except (KeyError, ValueError, TypeError):
            self.fail(path, f"Invalid value at '{path}' ({enum.__name__}), {_shown(item)}")
            return None

    def scalar(self, item: Any, kind: str, path: str) -> Any:
        value = _SCALAR_READERS[kind](item)
        if value is None:
            expected = {STRING: "a string", BOOL: "a boolean", FLOAT: "a number"}.get(
                kind, "an integer"
            )
            self.fail(
                path, f"Invalid value at '{path}' ({kind}), {_shown(item)}: expected {expected}."
            )
            return None
        if kind in INTEGER_RANGES:
            low, high = INTEGER_RANGES[kind]
            if not low <= value <= high:
                self.fail(
                    path,
                    f"Invalid value at '{path}' ({kind}), {_shown(item)}: out of range; "
                    f"{kind} values are in [{low}, {high}].",
                )
                return None
        return value


# proto3 JSON's scalars: int32 and int64 as numbers or decimal strings, float as a number,
# a numeric string or "NaN"/"Infinity"/"-Infinity". Values beyond the proto type's range are
# refused here, so nothing past them reaches the rules, the store or the engine.
INTEGER_RANGES = {INT32: (-(2**31), 2**31 - 1), INT64: (-(2**63), 2**63 - 1)}
_INTEGER_TEXT = re.compile(r"-?[0-9]+")
_NUMBER_TEXT = re.compile(r"-?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?|NaN|-?Infinity")
_BEYOND_ANY_RANGE = 10**100  # stands for integers too long to convert


def _integer(item: Any) -> int | None:
    if isinstance(item, bool):
        return None
    if isinstance(item, int):
        return item
    if isinstance(item, float):
        return int(item) if item.is_integer() else None
    if isinstance(item, str) and _INTEGER_TEXT.fullmatch(item):
        if len(item) > 100:
            return -_BEYOND_ANY_RANGE if item.startswith("-") else _BEYOND_ANY_RANGE
        return int(item)
    return None


def _float(item: Any) -> float | None:
    if isinstance(item, bool):
        return None
    if isinstance(item, str):
        return float(item) if _NUMBER_TEXT.fullmatch(item) else None
    if isinstance(item, int | float):
        try:
            return float(item)
        except OverflowError:  # an integer literal beyond any double
            return float("inf") if item > 0 else float("-inf")
    return None


_SCALAR_READERS = {
    STRING: lambda item: item if isinstance(item, str) else None,
    BOOL: lambda item: item if isinstance(item, bool) else None,
    FLOAT: _float,
    INT32: _integer,
    INT64: _integer,
}


def _shown(item: Any) -> str:
    """A value for an error message, cut short."""
    try:
        text = json.dumps(item)
    except ValueError:  # an integer of thousands of digits
        return "a very long number"
    return text if len(text) <= 60 else text[:57] + "..."


def _snake_path(path: str) -> str:
    return ".".join(snake_case(part) for part in path.split("."))


def read_message(body: dict[str, Any], schema: str) -> dict[str, Any]:
    """The body with camelCase keys and converted values, or 400 listing every problem."""
    reader = _Reader()
    result = reader.message(body, schema, "")
    if reader.violations:
        raise invalid(reader.violations)
    return result or {}


def read_integer(text: str, kind: str, path: str) -> int:
    """A query parameter's integer, by the same rules as a body's, or 400."""
    reader = _Reader()
    value = reader.scalar(text, kind, path)
    if reader.violations:
        raise invalid(reader.violations)
    return value


# ---------------------------------------------------------------- request decoders


def _examples(dataset: dict[str, Any] | None) -> list[TuningExample]:
    return [
        TuningExample(e.get("textInput", ""), e.get("output", ""))
        for e in (dataset or {}).get("examples", {}).get("examples", [])
    ]


def decode_create(body: dict[str, Any], tuned_model_id: str | None) -> CreateTunedModel:
    data = read_message(body, "TunedModel")
    task = data.get("tuningTask", {})
    hp = task.get("hyperparameters", {})
    dataset = task.get("trainingData")
    examples = _examples(dataset)
    validation = task.get("validationData")
    request = CreateTunedModel(
        tuned_model_id=tuned_model_id or None,
        base_model=data.get("baseModel") or None,
        source_tuned_model=data.get("tunedModelSource", {}).get("tunedModel") or None,
        display_name=data.get("displayName", ""),
        description=data.get("description", ""),
        temperature=data.get("temperature"),
        top_p=data.get("topP"),
        top_k=data.get("topK"),
        examples=examples,
        epoch_count=hp.get("epochCount"),
        batch_size=hp.get("batchSize"),
        learning_rate=hp.get("learningRate"),
        learning_rate_multiplier=hp.get("learningRateMultiplier"),
        reader_project_numbers=data.get("readerProjectNumbers", []),
        validation_examples=None if validation is None else _examples(validation),
        validation_split=task.get("validationSplit"),
        evaluation_interval_steps=task.get("evaluationIntervalSteps"),
        checkpoint_choice=task.get("checkpointChoice"),
        seed=task.get("seed"),
    )
    v = Violations()
    check_tuned_model_id(v, request.tuned_model_id)
    check_source(v, request)
    check_descriptive(v, request.display_name, request.description)
    check_sampling(v, "", request.temperature, request.top_p, request.top_k, 1.0)
    check_examples(v, examples, dataset is not None)
    check_hyperparameters(v, request)
    check_evaluation(v, request)
    v.raise_if_any()
    return request


def decode_select_checkpoint(body: dict[str, Any], model_id: str) -> int:
    """selectCheckpoint's epoch, from `checkpoint`: tunedModels/{id}/checkpoints/{epoch}."""
    name = read_message(body, "SelectCheckpointRequest").get("checkpoint", "")
    prefix = f"tunedModels/{model_id}/checkpoints/"
    epoch = name.removeprefix(prefix)
    if not name.startswith(prefix) or not re.fullmatch(r"[1-9][0-9]{0,8}", epoch):
        raise invalid(
            [
                FieldViolation(
                    "checkpoint",
                    f"checkpoint must name one of this model's checkpoints: {prefix}{{epoch}}, "
                    f"got '{name}'",
                )
            ]
        )
    return int(epoch)


UPDATABLE = {
    "displayName": "display_name",
    "description": "description",
    "temperature": "temperature",
    "topP": "top_p",
    "topK": "top_k",
    "readerProjectNumbers": "reader_project_numbers",
}
OUTPUT_ONLY_OR_IMMUTABLE = {
    "name",
    "baseModel",
    "tunedModelSource",
    "state",
    "createTime",
    "updateTime",
    "tuningTask",
}


def decode_update(body: dict[str, Any], update_mask: str | None) -> TunedModelUpdate:
    """The patch's changes. Without a mask (google-genai sends none) every updatable field
    present in the body is updated; output-only fields in the body are ignored (AIP-203)."""
    data = read_message(body, "TunedModel")
    v = Violations()
    if update_mask:
        paths = [_camel(p.strip()) for p in update_mask.split(",") if p.strip()]
        for p in paths:
            v.check(
                p in UPDATABLE,
                "updateMask",
                f"updateMask path '{p}' cannot be updated; updatable: {', '.join(UPDATABLE)}",
            )
    else:
        paths = [p for p in data if p in UPDATABLE]
    v.raise_if_any()
    update = TunedModelUpdate()
    for p in paths:
        value = data.get(p)
        if value is None:
            value = (
                []
                if p == "readerProjectNumbers"
                else ("" if p in ("displayName", "description") else None)
            )
        setattr(update, UPDATABLE[p], value)
    check_descriptive(v, update.display_name, update.description)
    check_sampling(v, "", update.temperature, update.top_p, update.top_k, 1.0)
    v.raise_if_any()
    return update


def decode_permission(body: dict[str, Any]) -> PermissionGrant:
    data = read_message(body, "Permission")
    v = Violations()
    grant = check_grant(v, data.get("granteeType"), data.get("emailAddress", ""), data.get("role"))
    v.raise_if_any()
    assert grant is not None
    return grant


def decode_permission_update(body: dict[str, Any], update_mask: str | None) -> Role:
    """permissions.patch: updateMask is required and `role` is the one field it accepts."""
    data = read_message(body, "Permission")
    v = Violations()
    paths = [_camel(p.strip()) for p in (update_mask or "").split(",") if p.strip()]
    v.check(bool(paths), "updateMask", "updateMask is required; the updatable field is role")
    v.check(
        all(p == "role" for p in paths),
        "updateMask",
        f"updateMask may only name role, not {', '.join(p for p in paths if p != 'role')}",
    )
    v.check("role" in data, "permission.role", "role is required: OWNER, WRITER or READER")
    v.raise_if_any()
    return data["role"]


def decode_transfer(body: dict[str, Any]) -> str:
    email = read_message(body, "TransferOwnershipRequest").get("emailAddress", "").strip()
    if not email:
        raise invalid([FieldViolation("emailAddress", "emailAddress is required")])
    return email.lower()


def _turns(data: dict[str, Any], v: Violations) -> list[Turn]:
    turns: list[Turn] = []
    for i, content in enumerate(data.get("contents", [])):
        role = content.get("role") or "user"
        v.check(
            role in ("user", "model"),
            f"contents[{i}].role",
            f"contents[{i}].role must be 'user' or 'model', got '{role}'",
        )
        texts = []
        for j, part in enumerate(content.get("parts", [])):
            v.check(
                set(part) <= {"text", "thought"},
                f"contents[{i}].parts[{j}]",
                "only text parts are supported by tuned models",
            )
            texts.append(part.get("text", ""))
        turns.append(Turn("model" if role == "model" else "user", "".join(texts)))
    v.check(bool(turns), "contents", "contents is required and must not be empty")
    v.check(
        not turns or turns[-1].role == "user", "contents", "the last content must have role 'user'"
    )
    system = data.get("systemInstruction")
    if system and turns:
        preamble = "".join(p.get("text", "") for p in system.get("parts", []))
        if preamble:
            turns[0] = Turn(turns[0].role, f"{preamble}\n\n{turns[0].text}")
    return turns


UNSUPPORTED_GENERATION = {
    "tools": "tools are not supported by tuned models",
    "toolConfig": "tools are not supported by tuned models",
    "cachedContent": "cached content is not supported by tuned models",
}
UNSUPPORTED_CONFIG = (
    "responseSchema",
    "responseJsonSchema",
    "presencePenalty",
    "frequencyPenalty",
    "responseLogprobs",
    "logprobs",
    "speechConfig",
    "thinkingConfig",
    "imageConfig",
)


def decode_generate(body: dict[str, Any]) -> GenerateRequest:
    data = read_message(body, "GenerateContentRequest")
    v = Violations()
    for name, reason in UNSUPPORTED_GENERATION.items():
        v.check(name not in data, name, reason)
    config = data.get("generationConfig", {})
    for name in UNSUPPORTED_CONFIG:
        v.check(
            name not in config,
            f"generationConfig.{name}",
            f"generationConfig.{name} is not supported by tuned models",
        )
    mime = config.get("responseMimeType", "text/plain")
    v.check(
        mime == "text/plain",
        "generationConfig.responseMimeType",
        "JSON mode is not supported with tuned models; responseMimeType must be text/plain",
    )
    modalities = config.get("responseModalities", [])
    v.check(
        set(modalities) <= {"TEXT"},
        "generationConfig.responseModalities",
        "tuned models answer with TEXT only",
    )
    request = GenerateRequest(
        turns=_turns(data, v),
        temperature=config.get("temperature"),
        top_p=config.get("topP"),
        top_k=config.get("topK"),
        max_output_tokens=config.get("maxOutputTokens"),
        candidate_count=config.get("candidateCount", 1),
        stop_sequences=tuple(config.get("stopSequences", [])),
        seed=config.get("seed"),
    )
    v.raise_if_any()
    return request


# ---------------------------------------------------------------- responses


def timestamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _snapshot_json(snapshot: TuningSnapshot) -> dict[str, Any]:
    data: dict[str, Any] = {"step": snapshot.step}
    if snapshot.epoch:
        data["epoch"] = snapshot.epoch
    data["meanLoss"] = snapshot.mean_loss
    data["computeTime"] = timestamp(snapshot.compute_time)
    return data


def tuned_model_json(model: TunedModel) -> dict[str, Any]:
    """TunedModel in the field order of the real service; never trainingData, never the
    learning-rate multiplier (both crash google-generativeai 0.8.6)."""
    data: dict[str, Any] = {"name": model.name}
    if model.source_tuned_model:
        data["tunedModelSource"] = {
            "tunedModel": model.source_tuned_model,
            "baseModel": model.base_model,
        }
    else:
        data["baseModel"] = model.base_model
    if model.display_name:
        data["displayName"] = model.display_name
    if model.description:
        data["description"] = model.description
    data["state"] = model.state.name
    data["createTime"] = timestamp(model.create_time)
    data["updateTime"] = timestamp(model.update_time)
    task: dict[str, Any] = {}
    if model.start_time:
        task["startTime"] = timestamp(model.start_time)
    if model.complete_time:
        task["completeTime"] = timestamp(model.complete_time)
    if model.snapshots:
        task["snapshots"] = [_snapshot_json(s) for s in model.snapshots]
    hp = model.hyperparameters
    task["hyperparameters"] = {
        "epochCount": hp.epoch_count,
        "batchSize": hp.batch_size,
        "learningRate": hp.learning_rate,
    }
    data["tuningTask"] = task
    data["temperature"] = model.temperature
    data["topP"] = model.top_p
    data["topK"] = model.top_k
    if model.reader_project_numbers:
        data["readerProjectNumbers"] = [str(n) for n in model.reader_project_numbers]
    return data


def evaluation_json(evaluation: Evaluation) -> dict[str, Any]:
    """One evaluation (a Tunesmith extension resource)."""
    data: dict[str, Any] = {"step": evaluation.step}
    if evaluation.epoch:
        data["epoch"] = evaluation.epoch
    if evaluation.training_loss is not None:
        data["trainingLoss"] = evaluation.training_loss
    data["validationLoss"] = evaluation.validation_loss
    data["exactMatch"] = evaluation.exact_match
    data["examples"] = evaluation.examples
    data["createTime"] = timestamp(evaluation.create_time)
    return data


def evaluations_json(evaluations: list[Evaluation]) -> dict[str, Any]:
    return {"evaluations": [evaluation_json(e) for e in evaluations]} if evaluations else {}


def checkpoints_json(
    model_id: str,
    checkpoints: list[EpochCheckpoint],
    evaluations: list[Evaluation],
    serving: int | None,
) -> dict[str, Any]:
    """A tuned model's epoch checkpoints, each with its evaluation when it has one; `serving`
    is the epoch whose adapter the model serves."""
    by_step = {e.step: e for e in evaluations}
    items = []
    for checkpoint in checkpoints:
        data: dict[str, Any] = {
            "name": f"tunedModels/{model_id}/checkpoints/{checkpoint.epoch}",
            "epoch": checkpoint.epoch,
            "step": checkpoint.step,
        }
        evaluation = by_step.get(checkpoint.step)
        if evaluation is not None:
            data["validationLoss"] = evaluation.validation_loss
            data["exactMatch"] = evaluation.exact_match
        if checkpoint.epoch == serving:
            data["serving"] = True
        data["createTime"] = timestamp(checkpoint.create_time)
        items.append(data)
    return {"checkpoints": items} if items else {}


def permission_json(permission: Permission) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": permission.name,
        "granteeType": permission.grantee_type.name,
    }
    if permission.email:
        data["emailAddress"] = permission.email
    data["role"] = permission.role.name
    return data


def operation_json(
    operation: Operation, snapshots: list[TuningSnapshot], model: TunedModel | None
) -> dict[str, Any]:
    """google.longrunning.Operation with only the fields google-api-core parses strictly."""
    metadata: dict[str, Any] = {
        "@type": TYPE_PREFIX + "CreateTunedModelMetadata",
        "totalSteps": operation.total_steps,
    }
    if operation.completed_steps:
        metadata["completedSteps"] = operation.completed_steps
        metadata["completedPercent"] = operation.completed_percent
    if snapshots:
        metadata["snapshots"] = [_snapshot_json(s) for s in snapshots]
    metadata["tunedModel"] = f"tunedModels/{operation.tuned_model_id}"
    data: dict[str, Any] = {"name": operation.name, "metadata": metadata}
    if operation.status.finished:
        data["done"] = True
        if operation.error is not None:
            data["error"] = {"code": operation.error.code, "message": operation.error.message}
        elif model is not None:
            data["response"] = {"@type": TYPE_PREFIX + "TunedModel", **tuned_model_json(model)}
    return data


def _candidate_json(index: int, text: str, finish_reason: str | None) -> dict[str, Any]:
    data: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}}
    if finish_reason:
        data["finishReason"] = finish_reason
    data["index"] = index
    return data


def _usage_json(prompt_tokens: int, candidate_tokens: int) -> dict[str, Any]:
    return {
        "promptTokenCount": prompt_tokens,
        "candidatesTokenCount": candidate_tokens,
        "totalTokenCount": prompt_tokens + candidate_tokens,
    }


def generation_json(generation: Generation, model_version: str) -> dict[str, Any]:
    """GenerateContentResponse with real token counts and no safety ratings: Tunesmith has
    no safety classifier, and ratings it did not compute would be invented."""
    return {
        "candidates": [
            _candidate_json(i, c.text, c.finish_reason) for i, c in enumerate(generation.candidates)
        ],
        "usageMetadata": _usage_json(
            generation.prompt_token_count, sum(c.token_count for c in generation.candidates)
        ),
        "modelVersion": model_version,
    }


def stream_chunk_json(
    chunk: StreamChunk, model_version: str, sampled: int | None
) -> dict[str, Any]:
    """One streamed GenerateContentResponse; the last one (`sampled` known) carries usage."""
    candidates = []
    for i, (delta, finished) in enumerate(zip(chunk.deltas, chunk.finished, strict=True)):
        if delta or finished:
            candidates.append(
                _candidate_json(i, delta, finished.finish_reason if finished else None)
            )
    data: dict[str, Any] = {"candidates": candidates}
    if sampled is not None:
        data["usageMetadata"] = _usage_json(chunk.prompt_token_count, sampled)
    data["modelVersion"] = model_version
    return data


def model_json(entry: CatalogEntry) -> dict[str, Any]:
    return {
        "name": entry.name,
        "baseModelId": entry.name.removeprefix("models/"),
        "version": entry.target.version,
        "displayName": entry.display_name,
        "description": entry.description,
        "inputTokenLimit": entry.input_token_limit,
        "outputTokenLimit": entry.output_token_limit,
        "supportedGenerationMethods": ["generateContent", "countTokens", "createTunedModel"],
        "temperature": entry.temperature,
        "maxTemperature": 2.0,
        "topP": entry.top_p,
        "topK": entry.top_k,
    }
