"""Settings: every knob is an environment variable prefixed ``TUNESMITH_``."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "tunesmith"


def database_url(url: str) -> str:
    """PostgreSQL URLs as people write them, with the psycopg 3 driver SQLAlchemy needs."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url.removeprefix(plain)
    return url


class LocalBaseModel(BaseModel):
    """A base model registered from a local Hugging Face folder or GGUF file."""

    name: str = Field(description="Catalog name, e.g. models/my-llama")
    path: Path
    display_name: str = ""
    description: str = ""
    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 64


class ModelAlias(BaseModel):
    """A catalog name that resolves to another base model, with its own sampling defaults."""

    target: str = ""  # empty: the default base model
    display_name: str = ""
    description: str = ""
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None


def _tutorial_aliases() -> dict[str, ModelAlias]:
    # The sampling defaults are the recorded values of the real models (reference §1.8).
    return {
        "models/gemini-1.0-pro-001": ModelAlias(
            display_name="Gemini 1.0 Pro (Tunesmith alias)",
            description="Alias of the default local base model, for the Gemini tuning tutorials.",
            temperature=0.9,
            top_p=1.0,
            top_k=1,
        ),
        "models/gemini-1.5-flash-001-tuning": ModelAlias(
            display_name="Gemini 1.5 Flash 001 Tuning (Tunesmith alias)",
            description="Alias of the default local base model, for the Gemini tuning tutorials.",
            temperature=1.0,
            top_p=0.95,
            top_k=64,
        ),
    }


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNESMITH_", env_nested_delimiter="__")

    data_dir: Path = Field(default_factory=_default_data_dir)
    base_model_dir: Path | None = None  # converted base models; default: data_dir/base-models
    database_url: str = ""  # empty: SQLite file in data_dir
    host: str = "127.0.0.1"
    port: int = 8080
    # A request's headers must arrive within this many seconds of the connection opening
    # (or of the previous response); a request body may not stall for longer than the other.
    http_header_timeout_seconds: float = Field(10.0, gt=0)
    http_body_timeout_seconds: float = Field(30.0, gt=0)
    workers: int = 1  # training workers `tunesmith serve` starts (Ray actors with executor=ray)

    # Adapters and checkpoints: empty is the data dir; any fsspec URL (a shared directory,
    # s3://bucket/prefix); options are the file system's, e.g. {"endpoint_url": ...} for S3.
    artifact_url: str = ""
    artifact_options: dict[str, Any] = Field(default_factory=dict)

    # Where training runs: "local" worker subprocesses, or "ray": named worker actors on the
    # Ray cluster at RAY_ADDRESS, each asking Ray for these resources.
    executor: str = Field("local", pattern="^(local|ray)$")
    ray_num_cpus: float = 1.0
    ray_num_gpus: float = 0.0
    ray_namespace: str = "tunesmith"

    default_base_model: str = "models/gemma-3-270m"
    base_model_aliases: dict[str, ModelAlias] = Field(default_factory=_tutorial_aliases)
    extra_base_models: list[LocalBaseModel] = Field(default_factory=list)

    job_lease_seconds: float = 30.0
    # An idle worker's wait between looks at the queue: a new job waits half of it on
    # average before it starts (a look is one short transaction, about 1-5 ms).
    worker_poll_seconds: float = 0.2
    checkpoint_interval_seconds: float = 10.0
    # Epoch-end adapters a job keeps (the most recent; and the best when it serves the best).
    max_epoch_checkpoints: int = Field(10, ge=1)
    adapter_cache_size: int = 8
    # Continuous batching, per base model: rows (candidates) decoded together, requests
    # waiting beyond them (more: 429), and the longest a generation may queue and run.
    serving_max_batch_rows: int = Field(32, ge=1)
    serving_max_queued_requests: int = Field(64, ge=0)
    serving_request_timeout_seconds: float = Field(600.0, gt=0)
    default_max_output_tokens: int = 1024  # when a request sets no maxOutputTokens
    torch_threads: int = 0  # 0: torch's own default
    # Where models train and generate: "auto" is the first CUDA device where torch sees one.
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    access_token_ttl_seconds: int = 3600

    # Observability: "json" writes one JSON object per log line; /metrics without
    # credentials when true, with a reader's when false, unset: only while host is loopback.
    log_format: str = Field("text", pattern="^(text|json)$")
    metrics_public: bool | None = None

    # Quotas; 0 turns one off.
    quota_tuned_models_per_project: int = 100
    quota_concurrent_jobs_per_project: int = 4
    quota_examples_per_job: int = 10_000
    quota_requests_per_minute: int = 600  # per principal

    # Access tokens from an external OpenID Connect provider (off while oidc_issuer is empty).
    oidc_issuer: str = ""
    oidc_jwks_url: str = ""
    oidc_audience: str = ""

    # What the client commands (tune, models, generate, ...) talk to.
    server_url: str = ""  # empty: http://{host}:{port}
    api_key: str = ""  # empty: the owner's key from the local data dir

    @property
    def client_base_url(self) -> str:
        return self.server_url.rstrip("/") or f"http://{self.host}:{self.port}"

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return database_url(self.database_url)
        return f"sqlite:///{self.data_dir / 'tunesmith.db'}"

    @property
    def base_model_cache_dir(self) -> Path:
        return self.base_model_dir or self.data_dir / "base-models"

    @property
    def secrets_dir(self) -> Path:
        return self.data_dir / "secrets"

    def make_data_dir(self) -> Path:
        """Creates the data folder, readable by this user alone, if it is not there yet:
        adapters, checkpoints and exports inside it are created with default modes. Call
        it before anything else creates a folder inside it."""
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self.data_dir


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
