"""The service's resources as plain objects: what the store keeps and the API shows."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum, StrEnum
from typing import Literal


class TunedModelState(IntEnum):
    STATE_UNSPECIFIED = 0
    CREATING = 1
    ACTIVE = 2
    FAILED = 3


class JobStatus(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass(frozen=True)
class Turn:
    """One turn of a conversation given to a model."""

    role: Literal["user", "model"]
    text: str


@dataclass(frozen=True)
class TuningExample:
    text_input: str
    output: str


@dataclass(frozen=True)
class Hyperparameters:
    epoch_count: int
    batch_size: int
    learning_rate: float  # the rate actually used (multiplier already applied)


class CheckpointChoice(IntEnum):
    """Which epoch's adapter a tuned model serves when its job ends (a Tunesmith extension)."""

    CHECKPOINT_CHOICE_UNSPECIFIED = 0  # LAST
    LAST = 1
    BEST_VALIDATION_LOSS = 2

    @classmethod
    def resolved(cls, value: int | None) -> CheckpointChoice:
        """The choice a job makes of `value`: unspecified (or nothing stored) is LAST."""
        return cls(value) if value else cls.LAST


@dataclass(frozen=True)
class EvaluationPlan:
    """How a job evaluates and which checkpoint it serves: stored with the job, so a
    resumed job evaluates the same way. No validation examples: no evaluation."""

    validation: list[TuningExample] = field(default_factory=list)
    interval_steps: int = 0  # 0: at epoch ends (and the last step) only
    choice: CheckpointChoice = CheckpointChoice.LAST


@dataclass(frozen=True)
class Evaluation:
    """The validation metrics of a job at one step."""

    step: int
    epoch: int
    training_loss: float | None  # mean of the epoch's step losses so far
    validation_loss: float
    exact_match: float  # share of greedy answers equal to the expected output, 0..1
    examples: int
    create_time: datetime


@dataclass(frozen=True)
class EpochCheckpoint:
    """The adapter kept at an epoch's end."""

    epoch: int
    step: int
    create_time: datetime


@dataclass(frozen=True)
class TuningSnapshot:
    step: int
    epoch: int
    mean_loss: float
    compute_time: datetime


@dataclass
class TunedModel:
    id: str
    base_model: str  # the catalog name the user asked for (aliases kept as given)
    display_name: str
    description: str
    temperature: float
    top_p: float
    top_k: int
    state: TunedModelState
    create_time: datetime
    update_time: datetime
    hyperparameters: Hyperparameters
    owner_id: str
    source_tuned_model: str | None = None  # tunedModels/... when tuned from a tuned model
    start_time: datetime | None = None
    complete_time: datetime | None = None
    snapshots: list[TuningSnapshot] = field(default_factory=list)
    reader_project_numbers: list[int] = field(default_factory=list)
    project_number: int | None = None  # the project its creation was billed to

    @property
    def name(self) -> str:
        return f"tunedModels/{self.id}"


@dataclass(frozen=True)
class JobError:
    code: int  # google.rpc.Code number
    message: str


CANCELLED_ERROR = JobError(1, "Tuning was cancelled.")  # google.rpc.Code CANCELLED


@dataclass
class Operation:
    """A tuning job as a long-running operation."""

    id: str
    tuned_model_id: str
    status: JobStatus
    total_steps: int
    completed_steps: int
    error: JobError | None = None
    served_epoch: int | None = None  # the kept epoch adapter served; None: the final one

    @property
    def name(self) -> str:
        return f"tunedModels/{self.tuned_model_id}/operations/{self.id}"

    @property
    def completed_percent(self) -> float:
        return 100.0 * self.completed_steps / self.total_steps if self.total_steps else 0.0


@dataclass(frozen=True)
class ClaimedJob:
    """What a worker needs to run one tuning job."""

    operation_id: str
    tuned_model_id: str
    base_model: str
    source_tuned_model: str | None
    source_operation_id: str | None  # the operation whose adapter the job starts from
    examples: list[TuningExample]
    hyperparameters: Hyperparameters
    total_steps: int
    seed: int
    attempt: int
    cancel_requested: bool = False
    plan: EvaluationPlan = field(default_factory=EvaluationPlan)
    source_served_epoch: int | None = None  # the source's chosen checkpoint, bound with it
