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
from tunesmith.domain.errors import FieldViolation, invalid
from tunesmith.domain.resources import (
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


def parse_body(raw: bytes) -> dict[str, Any]:
    """A JSON object from a request body; strict parser first, JSON5 only on failure."""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as strict_error:
        try:
            value = pyjson5.decode(raw.decode("utf-8"))
        except Exception:
            raise invalid(
                [FieldViolation("", f"Invalid JSON payload received. {strict_error}")]
            ) from None
    if not isinstance(value, dict):
        raise invalid([FieldViolation("", "Invalid JSON payload received. Expected an object.")])
    return value


# ---------------------------------------------------------------- request schemas


STRING, FLOAT, INT32, INT64, BOOL = "string", "float", "int32", "int64", "bool"


@dataclass(frozen=True)
class Repeated:
    item: Any


ENUMS: dict[str, type[IntEnum]] = {
    "TunedModelState": TunedModelState,
    "GranteeType": GranteeType,
    "Role": Role,
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
            return enum[item] if isinstance(item, str) else enum(int(item))
        except (KeyError, ValueError, TypeError):
            self.fail(path, f"Invalid value at '{path}' ({enum.__name__}), {json.dumps(item)}")
            return None

    def scalar(self, item: Any, kind: str, path: str) -> Any:
        try:
            if kind == STRING and isinstance(item, str):
                return item
            if kind == BOOL and isinstance(item, bool):
                return item
            if kind == FLOAT and not isinstance(item, bool) and isinstance(item, int | float | str):
                return float(item)
            if kind in (INT32, INT64) and not isinstance(item, bool):
                if isinstance(item, float) and item.is_integer():
                    return int(item)
                if isinstance(item, int | str):
                    return int(item)
        except ValueError:
            pass
        expected = {STRING: "a string", BOOL: "a boolean", FLOAT: "a number"}.get(
            kind, "an integer"
        )
        self.fail(
            path, f"Invalid value at '{path}' ({kind}), {json.dumps(item)}: expected {expected}."
        )
        return None


def _snake_path(path: str) -> str:
    return ".".join(snake_case(part) for part in path.split("."))


def read_message(body: dict[str, Any], schema: str) -> dict[str, Any]:
    """The body with camelCase keys and converted values, or 400 listing every problem."""
    reader = _Reader()
    result = reader.message(body, schema, "")
    if reader.violations:
        raise invalid(reader.violations)
    return result or {}


# ---------------------------------------------------------------- request decoders


def decode_create(body: dict[str, Any], tuned_model_id: str | None) -> CreateTunedModel:
    data = read_message(body, "TunedModel")
    task = data.get("tuningTask", {})
    hp = task.get("hyperparameters", {})
    dataset = task.get("trainingData")
    examples = [
        TuningExample(e.get("textInput", ""), e.get("output", ""))
        for e in (dataset or {}).get("examples", {}).get("examples", [])
    ]
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
    )
    v = Violations()
    check_tuned_model_id(v, request.tuned_model_id)
    check_source(v, request)
    check_descriptive(v, request.display_name, request.description)
    check_sampling(v, "", request.temperature, request.top_p, request.top_k, 1.0)
    check_examples(v, examples, dataset is not None)
    check_hyperparameters(v, request)
    v.raise_if_any()
    return request


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
