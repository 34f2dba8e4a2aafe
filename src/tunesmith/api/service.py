"""What each API method does, between the wire codec and the store, engine and catalog."""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tunesmith.artifacts import Artifacts
from tunesmith.config import Settings
from tunesmith.domain import checkpoints, names, tuning
from tunesmith.domain.access import (
    AccessFacts,
    Action,
    ListScope,
    Principal,
    Role,
    authorize,
)
from tunesmith.domain.errors import Code, FieldViolation, ServiceError, invalid, not_found
from tunesmith.domain.quotas import ProjectQuota, check_examples
from tunesmith.domain.resources import (
    CheckpointChoice,
    EpochCheckpoint,
    Evaluation,
    EvaluationPlan,
    Hyperparameters,
    Operation,
    TunedModel,
    TunedModelState,
    TuningExample,
    TuningSnapshot,
)
from tunesmith.domain.validation import (
    CreateTunedModel,
    GenerateRequest,
    TunedModelUpdate,
    Violations,
    check_generation,
)
from tunesmith.serving.engine import Engine, GenerationStream, SamplingParams
from tunesmith.store.repository import Repository
from tunesmith.training.base_models import Catalog, CatalogEntry

MAX_PAGE = 1000
FILTER_ROLES = {"owner:me": Role.OWNER, "writers:me": Role.WRITER, "readers:me": Role.READER}
EVERYONE_FILTER = "readers:everyone"


def model_missing(model_id: str) -> ServiceError:
    return not_found(f"Tuned model tunedModels/{model_id} does not exist.")


def authorize_model(
    repo: Repository, caller: Principal, model_id: str, action: Action
) -> AccessFacts:
    """The model's access facts if the caller may do `action` to it; 404 if it does not
    exist, the hosted service's 403 if the caller may not."""
    facts = repo.access_facts(model_id)
    if facts is None:
        raise model_missing(model_id)
    authorize(caller, f"tunedModels/{model_id}", facts, action)
    return facts


@dataclass(frozen=True)
class Page:
    offset: int
    size: int


MAX_OFFSET = 2**31 - 1  # a page token's largest offset


def read_page(size: int | None, token: str | None, default: int, context: str) -> Page:
    """Page size and offset. A token is bound to the call that made it (`context`)."""
    if size is not None and size < 0:
        raise invalid([FieldViolation("pageSize", "pageSize must not be negative")])
    size = min(size or default, MAX_PAGE)
    if not token:
        return Page(0, size)
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode() + b"=="))
        offset, made_for = data["o"], data["c"]
    except (ValueError, KeyError, TypeError, RecursionError) as error:
        raise invalid([FieldViolation("pageToken", "pageToken is not valid")]) from error
    # Only tokens this module made hold a plain offset the store can take (int32, >= 0).
    if type(offset) is not int or not 0 <= offset <= MAX_OFFSET:
        raise invalid([FieldViolation("pageToken", "pageToken is not valid")])
    if made_for != context:
        raise invalid(
            [FieldViolation("pageToken", "pageToken was made for a call with other parameters")]
        )
    return Page(offset, size)


def next_page_token(page: Page, more: bool, context: str) -> str | None:
    if not more:
        return None
    data = json.dumps({"o": page.offset + page.size, "c": context}).encode()
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@dataclass(frozen=True)
class CheckpointList:
    """A tuned model's kept epoch adapters, their evaluations, and the epoch it serves."""

    checkpoints: list[EpochCheckpoint]
    evaluations: list[Evaluation]
    serving: int | None


def evaluation_plan(
    request: CreateTunedModel, seed: int
) -> tuple[list[TuningExample], EvaluationPlan]:
    """The examples the job trains on, and how it evaluates: on the validation examples
    given, or on a share of the training examples held out (chosen by the seed)."""
    examples, validation = request.examples, request.validation_examples or []
    if request.validation_split is not None:
        examples, validation = tuning.hold_out(examples, request.validation_split, seed)
    choice = CheckpointChoice.resolved(request.checkpoint_choice)
    return examples, EvaluationPlan(validation, request.evaluation_interval_steps or 0, choice)


class TuningService:
    def __init__(
        self, settings: Settings, repo: Repository, catalog: Catalog, engine: Engine
    ) -> None:
        self.settings, self.repo, self.catalog, self.engine = settings, repo, catalog, engine
        self.artifacts = Artifacts.of(settings)
        self.quota = ProjectQuota(
            settings.quota_tuned_models_per_project, settings.quota_concurrent_jobs_per_project
        )

    # ------------------------------------------------------------ base models

    def base_model(self, model_id: str) -> CatalogEntry:
        entry = self.catalog.get(f"models/{model_id}")
        if entry is None:
            raise not_found(
                f"models/{model_id} is not found for API version v1beta, or is not supported "
                "for generateContent. Call ListModels to see the list of available models and "
                "their supported methods."
            )
        return entry

    def list_base_models(self, page: Page) -> tuple[list[CatalogEntry], bool]:
        entries = self.catalog.list()
        return entries[page.offset : page.offset + page.size], len(
            entries
        ) > page.offset + page.size

    # ------------------------------------------------------------ tuned models

    def create(self, caller: Principal, request: CreateTunedModel) -> Operation:
        given = len(request.examples) + len(request.validation_examples or [])
        check_examples(given, self.settings.quota_examples_per_job)
        base_name, defaults, source = self._source(caller, request)
        seed = secrets.randbelow(2**31) if request.seed is None else request.seed
        examples, plan = evaluation_plan(request, seed)
        n = len(examples)
        epochs = request.epoch_count or tuning.DEFAULT_EPOCH_COUNT
        batch = request.batch_size or tuning.default_batch_size(n)
        rate = request.learning_rate or (
            tuning.default_learning_rate(n) * (request.learning_rate_multiplier or 1.0)
        )
        now = datetime.now(UTC)
        model = TunedModel(
            id=request.tuned_model_id or names.tuned_model_id(request.display_name),
            base_model=base_name,
            display_name=request.display_name,
            description=request.description,
            temperature=defaults[0] if request.temperature is None else request.temperature,
            top_p=defaults[1] if request.top_p is None else request.top_p,
            top_k=defaults[2] if request.top_k is None else request.top_k,
            state=TunedModelState.CREATING,
            create_time=now,
            update_time=now,
            hyperparameters=Hyperparameters(epochs, batch, rate),
            owner_id=caller.id,
            source_tuned_model=request.source_tuned_model,
            reader_project_numbers=request.reader_project_numbers,
            project_number=caller.project_number,
        )
        steps = tuning.total_steps(n, epochs, batch)
        operation_id = names.operation_id()
        self.repo.create_tuned_model(
            model,
            operation_id,
            examples,
            seed,
            steps,
            caller.email,
            self.quota,
            source_operation_id=source.id if source else None,
            source_served_epoch=source.served_epoch if source else None,
            plan=plan,
        )
        operation = self.repo.get_operation(model.id, operation_id)
        assert operation is not None
        return operation

    def _source(
        self, caller: Principal, request: CreateTunedModel
    ) -> tuple[str, tuple[float, float, int], Operation | None]:
        """The base model name, the sampling defaults the new model inherits, and for a
        tuned source the operation whose served adapter the job will start from: bound now
        (with its chosen checkpoint), so the job starts from exactly the model the caller
        was allowed to read."""
        if request.source_tuned_model:
            source = self.get(caller, request.source_tuned_model.removeprefix("tunedModels/"))
            operations = self.repo.list_operations(source.id)
            if source.state != TunedModelState.ACTIVE or not operations:
                raise ServiceError(
                    Code.FAILED_PRECONDITION,
                    f"Tuned model {source.name} is {source.state.name}; only an ACTIVE tuned "
                    "model can be the source of another.",
                )
            defaults = (source.temperature, source.top_p, source.top_k)
            return source.base_model, defaults, operations[-1]
        assert request.base_model is not None
        entry = self.catalog.get(request.base_model)
        if entry is None:
            known = ", ".join(e.name for e in self.catalog.list())
            raise invalid(
                [
                    FieldViolation(
                        "baseModel",
                        f"baseModel '{request.base_model}' is not a base model that can be tuned. "
                        f"Known: {known}",
                    )
                ]
            )
        return entry.name, (entry.temperature, entry.top_p, entry.top_k), None

    def get(self, caller: Principal, model_id: str) -> TunedModel:
        authorize_model(self.repo, caller, model_id, Action.READ)
        model = self.repo.get_tuned_model(model_id)
        if model is None:
            raise model_missing(model_id)
        return model

    def list(
        self, caller: Principal, page_size: int | None, page_token: str | None, text_filter: str
    ) -> tuple[list[TunedModel], str | None]:
        """Models the caller may read, less those shared only with everyone; the filter's
        operators narrow that (reference §1.3), its other words search the text."""
        words = text_filter.split()
        roles = [FILTER_ROLES[w] for w in words if w in FILTER_ROLES]
        text = " ".join(w for w in words if w not in FILTER_ROLES and w != EVERYONE_FILTER)
        scope = ListScope(caller, min(roles, default=Role.READER), EVERYONE_FILTER in words)
        context = f"tunedModels?{text_filter}"
        page = read_page(page_size, page_token, 10, context)
        models, more = self.repo.list_tuned_models(page.offset, page.size, scope, text)
        return models, next_page_token(page, more, context)

    def update(self, caller: Principal, model_id: str, change: TunedModelUpdate) -> TunedModel:
        authorize_model(self.repo, caller, model_id, Action.WRITE)
        model = self.repo.update_tuned_model(model_id, change)
        if model is None:
            raise model_missing(model_id)
        return model

    def delete(self, caller: Principal, model_id: str) -> None:
        authorize_model(self.repo, caller, model_id, Action.DELETE)
        operation_ids = self.repo.delete_tuned_model(model_id)
        if operation_ids is None:
            raise model_missing(model_id)
        self.artifacts.remove_model(model_id, operation_ids)

    def adapter_of(self, model_id: str) -> Path | None:
        """The local folder of the adapter a tuned model serves: its last tuning
        operation's (the epoch chosen of it, if one was); None when it is missing."""
        operations = self.repo.list_operations(model_id)
        if not operations:
            return None
        last = operations[-1]
        return self.artifacts.fetch_served(model_id, last.id, last.served_epoch)

    # ------------------------------------------------------------ evaluations, checkpoints

    def evaluations(self, caller: Principal, model_id: str) -> list[Evaluation]:
        """The evaluations of the model's last tuning job, by step."""
        self.get(caller, model_id)
        operations = self.repo.list_operations(model_id)
        return self.repo.operation_evaluations(operations[-1].id) if operations else []

    def checkpoints(self, caller: Principal, model_id: str) -> CheckpointList:
        self.get(caller, model_id)
        return self._checkpoints(model_id)

    def _checkpoints(self, model_id: str) -> CheckpointList:
        operations = self.repo.list_operations(model_id)
        if not operations:
            return CheckpointList([], [], None)
        last = operations[-1]
        kept = self.repo.epoch_checkpoints(last.id)
        evaluations = self.repo.operation_evaluations(last.id)
        return CheckpointList(kept, evaluations, checkpoints.serving_epoch(last, kept))

    def select_checkpoint(self, caller: Principal, model_id: str, epoch: int) -> CheckpointList:
        """Makes the model serve the adapter kept at `epoch`, from the next request on."""
        authorize_model(self.repo, caller, model_id, Action.WRITE)
        model = self.repo.get_tuned_model(model_id)
        if model is None:
            raise model_missing(model_id)
        if model.state != TunedModelState.ACTIVE:
            raise ServiceError(
                Code.FAILED_PRECONDITION,
                f"Tuned model {model.name} is {model.state.name}; only an ACTIVE tuned model "
                "can serve another checkpoint.",
            )
        operations = self.repo.list_operations(model_id)
        name = f"{model.name}/checkpoints/{epoch}"
        if not operations or not self.repo.serve_epoch(model_id, operations[-1].id, epoch):
            raise not_found(f"Checkpoint {name} does not exist.")
        return self._checkpoints(model_id)

    # ------------------------------------------------------------ operations

    def operation(
        self, caller: Principal, model_id: str, operation_id: str
    ) -> tuple[Operation, list[TuningSnapshot], TunedModel | None]:
        authorize_model(self.repo, caller, model_id, Action.READ)
        operation = self.repo.get_operation(model_id, operation_id)
        if operation is None:
            raise not_found(
                f"Operation tunedModels/{model_id}/operations/{operation_id} does not exist."
            )
        snapshots = self.repo.operation_snapshots(operation_id)
        model = self.repo.get_tuned_model(model_id) if operation.status.finished else None
        return operation, snapshots, model

    def operations(self, caller: Principal, model_id: str):
        self.get(caller, model_id)
        return [
            (
                op,
                self.repo.operation_snapshots(op.id),
                self.repo.get_tuned_model(model_id) if op.status.finished else None,
            )
            for op in self.repo.list_operations(model_id)
        ]

    def cancel(self, caller: Principal, model_id: str, operation_id: str | None = None) -> None:
        authorize_model(self.repo, caller, model_id, Action.WRITE)
        if operation_id is None:
            ops = self.repo.list_operations(model_id)
            if not ops:
                raise not_found(f"Tuned model tunedModels/{model_id} has no tuning operation.")
            operation_id = ops[-1].id
        operation = self.repo.get_operation(model_id, operation_id)
        if operation is None:
            raise not_found(
                f"Operation tunedModels/{model_id}/operations/{operation_id} does not exist."
            )
        if operation.status.finished:
            raise ServiceError(
                Code.FAILED_PRECONDITION,
                f"Operation {operation.name} has already finished ({operation.status.value}).",
            )
        self.repo.request_cancel(model_id, operation_id)

    # ------------------------------------------------------------ generation

    def _plan(
        self, caller: Principal, model_id: str | None, base_id: str | None, request: GenerateRequest
    ):
        if model_id is not None:
            model = self.get(caller, model_id)
            if model.state != TunedModelState.ACTIVE:
                raise ServiceError(
                    Code.FAILED_PRECONDITION,
                    f"Tuned model {model.name} is {model.state.name}, not ACTIVE: "
                    + (
                        "it is still being tuned."
                        if model.state == TunedModelState.CREATING
                        else "its tuning failed."
                    ),
                )
            entry = self.catalog.get(model.base_model)
            if entry is None:
                raise ServiceError(
                    Code.FAILED_PRECONDITION,
                    f"Base model {model.base_model} of {model.name} is not installed.",
                )
            defaults = (model.temperature, model.top_p, model.top_k)
            adapter = self.adapter_of(model.id)
            if adapter is None:
                raise ServiceError(
                    Code.FAILED_PRECONDITION, f"The adapter of {model.name} is missing."
                )
        else:
            entry = self.base_model(base_id or "")
            defaults = (entry.temperature, entry.top_p, entry.top_k)
            adapter = None
        v = Violations()
        check_generation(v, request, entry.output_token_limit)
        v.raise_if_any()
        self._check_prompt_length(entry, request)
        params = SamplingParams(
            temperature=defaults[0] if request.temperature is None else request.temperature,
            top_p=defaults[1] if request.top_p is None else request.top_p,
            top_k=defaults[2] if request.top_k is None else request.top_k,
            max_output_tokens=request.max_output_tokens
            or min(self.settings.default_max_output_tokens, entry.output_token_limit),
            stop_sequences=request.stop_sequences,
            candidate_count=request.candidate_count,
            seed=request.seed,
        )
        return entry.target, adapter, params

    def _check_prompt_length(self, entry: CatalogEntry, request: GenerateRequest) -> None:
        tokens = self.engine.count_prompt_tokens(entry.target, request.turns)
        if tokens > entry.input_token_limit:
            raise invalid(
                [
                    FieldViolation(
                        "contents",
                        f"The prompt is {tokens} tokens, more than the model's inputTokenLimit "
                        f"of {entry.input_token_limit} tokens.",
                    )
                ]
            )

    def stream(
        self, caller: Principal, model_id: str | None, base_id: str | None, request: GenerateRequest
    ) -> GenerationStream:
        """A queued generation; the caller reads it, and closes it if its client leaves."""
        spec, adapter, params = self._plan(caller, model_id, base_id, request)
        return self.engine.stream(spec, adapter, request.turns, params)

    def count_tokens(self, base_id: str, request: GenerateRequest) -> int:
        return self.engine.count_prompt_tokens(self.base_model(base_id).target, request.turns)
