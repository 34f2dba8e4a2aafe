"""Every rule a request must satisfy, in one place, reported as field violations."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tunesmith.domain.access import GranteeType, Role
from tunesmith.domain.errors import FieldViolation, invalid
from tunesmith.domain.resources import CheckpointChoice, TuningExample, Turn
from tunesmith.domain.tuning import MAX_VALIDATION_EXAMPLES

TUNED_MODEL_ID = re.compile(r"[a-z]([a-z0-9-]{0,38}[a-z0-9])?")
MAX_DISPLAY_NAME = 40
MAX_DESCRIPTION = 16_384
MAX_INPUT_CHARS = 40_000
MAX_OUTPUT_CHARS = 5_000
MAX_EXAMPLES = 100_000
EPOCH_RANGE = (1, 1000)
BATCH_RANGE = (1, 256)
MAX_VALIDATION_SPLIT = 0.5
MAX_STOP_SEQUENCES = 5
MAX_CANDIDATES = 8


@dataclass
class CreateTunedModel:
    """A validated tunedModels.create request."""

    tuned_model_id: str | None
    base_model: str | None
    source_tuned_model: str | None
    display_name: str
    description: str
    temperature: float | None
    top_p: float | None
    top_k: int | None
    examples: list[TuningExample]
    epoch_count: int | None
    batch_size: int | None
    learning_rate: float | None
    learning_rate_multiplier: float | None
    reader_project_numbers: list[int] = field(default_factory=list)
    # Tunesmith extensions of tuningTask (README: "Tunesmith extensions to the API").
    validation_examples: list[TuningExample] | None = None  # None: no validationData given
    validation_split: float | None = None
    evaluation_interval_steps: int | None = None
    checkpoint_choice: CheckpointChoice | None = None
    seed: int | None = None


@dataclass
class TunedModelUpdate:
    """The fields of a patch that are present in its update mask."""

    display_name: str | None = None
    description: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    reader_project_numbers: list[int] | None = None


@dataclass
class Violations:
    items: list[FieldViolation] = field(default_factory=list)

    def check(self, ok: bool, path: str, description: str) -> None:
        if not ok:
            self.items.append(FieldViolation(path, description))

    def raise_if_any(self) -> None:
        if self.items:
            raise invalid(self.items)


def check_tuned_model_id(v: Violations, value: str | None) -> None:
    if value is not None:
        v.check(
            bool(TUNED_MODEL_ID.fullmatch(value)),
            "tunedModelId",
            f"tunedModelId '{value}' is invalid: it must be up to 40 characters matching "
            "[a-z]([a-z0-9-]{0,38}[a-z0-9])?",
        )


def check_sampling(
    v: Violations,
    prefix: str,
    temperature: float | None,
    top_p: float | None,
    top_k: int | None,
    max_temperature: float,
) -> None:
    if temperature is not None:
        v.check(
            0.0 <= temperature <= max_temperature,
            f"{prefix}temperature",
            f"{prefix}temperature must be in [0.0, {max_temperature}], got {temperature}",
        )
    if top_p is not None:
        v.check(
            0.0 <= top_p <= 1.0, f"{prefix}topP", f"{prefix}topP must be in [0.0, 1.0], got {top_p}"
        )
    if top_k is not None:
        v.check(top_k >= 0, f"{prefix}topK", f"{prefix}topK must be 0 or more, got {top_k}")


def check_descriptive(v: Violations, display_name: str | None, description: str | None) -> None:
    if display_name is not None:
        v.check(
            len(display_name) <= MAX_DISPLAY_NAME,
            "displayName",
            f"displayName must be up to {MAX_DISPLAY_NAME} characters, got {len(display_name)}",
        )
    if description is not None:
        v.check(
            len(description) <= MAX_DESCRIPTION,
            "description",
            f"description must be up to {MAX_DESCRIPTION} characters, got {len(description)}",
        )


def check_examples(v: Violations, examples: list[TuningExample], present: bool) -> None:
    if not present:
        v.check(
            False,
            "tuningTask.trainingData",
            "tuningTask.trainingData is required: give the training examples as "
            "tuningTask.trainingData.examples.examples[] of {textInput, output}",
        )
        return
    check_example_list(v, examples, "tuningTask.trainingData.examples.examples")


def check_example_list(v: Violations, examples: list[TuningExample], path: str) -> None:
    """The rules every example meets, training or validation, named under `path`."""
    v.check(bool(examples), path, f"{path} must hold at least one example")
    v.check(len(examples) <= MAX_EXAMPLES, path, f"{path} holds more than {MAX_EXAMPLES} examples")
    for i, example in enumerate(examples):
        v.check(bool(example.output), f"{path}[{i}].output", f"{path}[{i}].output is required")
        v.check(
            len(example.text_input) <= MAX_INPUT_CHARS,
            f"{path}[{i}].textInput",
            f"{path}[{i}].textInput must be up to {MAX_INPUT_CHARS} characters",
        )
        v.check(
            len(example.output) <= MAX_OUTPUT_CHARS,
            f"{path}[{i}].output",
            f"{path}[{i}].output must be up to {MAX_OUTPUT_CHARS} characters",
        )


def check_hyperparameters(v: Violations, request: CreateTunedModel) -> None:
    path = "tuningTask.hyperparameters"
    if request.epoch_count is not None:
        lo, hi = EPOCH_RANGE
        v.check(
            lo <= request.epoch_count <= hi,
            f"{path}.epochCount",
            f"{path}.epochCount must be in [{lo}, {hi}], got {request.epoch_count}",
        )
    if request.batch_size is not None:
        lo, hi = BATCH_RANGE
        v.check(
            lo <= request.batch_size <= hi,
            f"{path}.batchSize",
            f"{path}.batchSize must be in [{lo}, {hi}], got {request.batch_size}",
        )
    if request.learning_rate is not None and request.learning_rate_multiplier is not None:
        v.check(
            False,
            f"{path}.learningRateMultiplier",
            f"{path}: set learningRate or learningRateMultiplier, not both",
        )
    if request.learning_rate is not None:
        v.check(
            0.0 < request.learning_rate <= 1.0,
            f"{path}.learningRate",
            f"{path}.learningRate must be in (0, 1], got {request.learning_rate}",
        )
    if request.learning_rate_multiplier is not None:
        v.check(
            0.0 < request.learning_rate_multiplier <= 100.0,
            f"{path}.learningRateMultiplier",
            f"{path}.learningRateMultiplier must be in (0, 100], "
            f"got {request.learning_rate_multiplier}",
        )


def check_evaluation(v: Violations, request: CreateTunedModel) -> None:
    """The rules of the validation extensions of tuningTask."""
    path = "tuningTask"
    validation = request.validation_examples
    split = request.validation_split
    if validation is not None:
        check_example_list(v, validation, f"{path}.validationData.examples.examples")
        v.check(
            len(validation) <= MAX_VALIDATION_EXAMPLES,
            f"{path}.validationData.examples.examples",
            f"{path}.validationData holds {len(validation)} examples; at most "
            f"{MAX_VALIDATION_EXAMPLES} are evaluated, each at every evaluation",
        )
    if split is not None:
        v.check(
            validation is None,
            f"{path}.validationSplit",
            f"{path}: set validationData or validationSplit, not both",
        )
        v.check(
            0.0 < split <= MAX_VALIDATION_SPLIT,
            f"{path}.validationSplit",
            f"{path}.validationSplit must be in (0, {MAX_VALIDATION_SPLIT}], got {split}",
        )
        v.check(
            len(request.examples) >= 2,
            f"{path}.validationSplit",
            f"{path}.validationSplit needs at least 2 training examples: one to hold out "
            "and one to train on",
        )
    evaluated = validation is not None or split is not None
    if request.evaluation_interval_steps is not None:
        v.check(
            request.evaluation_interval_steps >= 0,
            f"{path}.evaluationIntervalSteps",
            f"{path}.evaluationIntervalSteps must be 0 or more, "
            f"got {request.evaluation_interval_steps}",
        )
        v.check(
            evaluated or request.evaluation_interval_steps == 0,
            f"{path}.evaluationIntervalSteps",
            f"{path}.evaluationIntervalSteps needs validationData or validationSplit",
        )
    v.check(
        evaluated or request.checkpoint_choice != CheckpointChoice.BEST_VALIDATION_LOSS,
        f"{path}.checkpointChoice",
        f"{path}.checkpointChoice BEST_VALIDATION_LOSS needs validationData or validationSplit",
    )
    if request.seed is not None:
        v.check(request.seed >= 0, f"{path}.seed", f"{path}.seed must be 0 or more")


def check_source(v: Violations, request: CreateTunedModel) -> None:
    if request.base_model and request.source_tuned_model:
        v.check(False, "baseModel", "set baseModel or tunedModelSource.tunedModel, not both")
    elif not request.base_model and not request.source_tuned_model:
        v.check(
            False,
            "baseModel",
            "baseModel is required (or tunedModelSource.tunedModel to start from a tuned model)",
        )
    if request.source_tuned_model:
        v.check(
            request.source_tuned_model.startswith("tunedModels/"),
            "tunedModelSource.tunedModel",
            "tunedModelSource.tunedModel must name a tuned model: tunedModels/{id}",
        )


@dataclass
class GenerateRequest:
    """A validated generateContent request; None means the model's default."""

    turns: list[Turn]
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_output_tokens: int | None = None
    candidate_count: int = 1
    stop_sequences: tuple[str, ...] = ()
    seed: int | None = None


def check_generation(v: Violations, request: GenerateRequest, output_limit: int) -> None:
    path = "generationConfig"
    check_sampling(v, f"{path}.", request.temperature, request.top_p, request.top_k, 2.0)
    v.check(
        1 <= request.candidate_count <= MAX_CANDIDATES,
        f"{path}.candidateCount",
        f"{path}.candidateCount must be in [1, {MAX_CANDIDATES}], got {request.candidate_count}",
    )
    v.check(
        len(request.stop_sequences) <= MAX_STOP_SEQUENCES,
        f"{path}.stopSequences",
        f"{path}.stopSequences holds at most {MAX_STOP_SEQUENCES} sequences",
    )
    v.check(
        all(request.stop_sequences),
        f"{path}.stopSequences",
        f"{path}.stopSequences must not contain empty strings",
    )
    if request.max_output_tokens is not None:
        v.check(
            1 <= request.max_output_tokens <= output_limit,
            f"{path}.maxOutputTokens",
            f"{path}.maxOutputTokens must be in [1, {output_limit}], "
            f"got {request.max_output_tokens}",
        )


@dataclass(frozen=True)
class PermissionGrant:
    """A validated permissions.create request."""

    grantee_type: GranteeType
    email: str  # lowercased; empty for EVERYONE
    role: Role


def check_grant(
    v: Violations, grantee_type: GranteeType | None, email: str, role: Role | None
) -> PermissionGrant | None:
    """The grantee and role rules of permission.proto; USER is assumed when an email is
    given without a type, as the old SDK itself assumes."""
    grantee = grantee_type or (GranteeType.USER if email else None)
    v.check(grantee is not None, "granteeType", "granteeType is required: USER, GROUP or EVERYONE")
    v.check(role is not None, "role", "role is required: OWNER, WRITER or READER")
    if grantee == GranteeType.EVERYONE:
        v.check(not email, "emailAddress", "emailAddress must not be set for EVERYONE")
        v.check(
            role in (None, Role.READER),
            "role",
            "EVERYONE can only be granted READER",
        )
    elif grantee is not None:
        v.check(bool(email), "emailAddress", f"emailAddress is required for {grantee.name}")
    if v.items or grantee is None or role is None:
        return None
    return PermissionGrant(grantee, email.strip().lower(), role)
