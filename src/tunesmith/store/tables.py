"""The schema. Alembic migrations in store/migrations create and evolve it."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes on every backend (SQLite keeps no zone of its own)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


metadata = MetaData()

# Users and groups share one email namespace; `kind` tells them apart.
principals = Table(
    "principals",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("email", String(320), nullable=False, unique=True),
    Column("create_time", UTCDateTime, nullable=False),
    Column("kind", String(8), nullable=False, default="user"),
    Column("display_name", String(200), nullable=False, default=""),
    Column("default_project", BigInteger),  # users only
)

group_members = Table(
    "group_members",
    metadata,
    Column("group_id", String(64), ForeignKey("principals.id"), primary_key=True),
    Column("member_id", String(64), ForeignKey("principals.id"), primary_key=True),
)

projects = Table(
    "projects",
    metadata,
    Column("number", BigInteger, primary_key=True, autoincrement=False),
    Column("id", String(64), nullable=False, unique=True),
    Column("create_time", UTCDateTime, nullable=False),
)

project_members = Table(
    "project_members",
    metadata,
    Column("project_number", BigInteger, ForeignKey("projects.number"), primary_key=True),
    Column("principal_id", String(64), ForeignKey("principals.id"), primary_key=True),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_hash", String(64), primary_key=True),
    Column("principal_id", String(64), ForeignKey("principals.id"), nullable=False),
    Column("create_time", UTCDateTime, nullable=False),
    Column("revoked", Boolean, nullable=False, default=False),
    Column("key_id", String(32), unique=True),  # public handle, for listing and revoking
    Column("display_name", String(200), nullable=False, default=""),
    Column("project_number", BigInteger),  # requests with this key are billed here
)

# Grants on tuned models. The owner is a row too (role OWNER), kept beside tuned_models.owner_id.
permissions = Table(
    "permissions",
    metadata,
    Column("tuned_model_id", String(64), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("grantee_type", Integer, nullable=False),
    Column("email", String(320), index=True),  # empty for EVERYONE
    Column("role", Integer, nullable=False),
    Column("create_time", UTCDateTime, nullable=False),
)

tuned_models = Table(
    "tuned_models",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("base_model", String(200), nullable=False),
    Column("source_tuned_model", String(200)),
    Column("display_name", String(200), nullable=False, default=""),
    Column("description", Text, nullable=False, default=""),
    Column("temperature", Float, nullable=False),
    Column("top_p", Float, nullable=False),
    Column("top_k", Integer, nullable=False),
    Column("state", Integer, nullable=False),
    Column("epoch_count", Integer, nullable=False),
    Column("batch_size", Integer, nullable=False),
    Column("learning_rate", Float, nullable=False),
    Column("owner_id", String(64), ForeignKey("principals.id"), nullable=False),
    Column("create_time", UTCDateTime, nullable=False),
    Column("update_time", UTCDateTime, nullable=False),
    Column("start_time", UTCDateTime),
    Column("complete_time", UTCDateTime),
    Column("project_number", BigInteger),  # the project its creation was billed to
)
Index("ix_tuned_models_create_time", tuned_models.c.create_time)

# readerProjectNumbers: members of these projects may read the model.
reader_projects = Table(
    "reader_projects",
    metadata,
    Column("tuned_model_id", String(64), primary_key=True),
    Column("project_number", BigInteger, primary_key=True, autoincrement=False),
)

operations = Table(
    "operations",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tuned_model_id", String(64), nullable=False, index=True),
    Column("status", String(16), nullable=False, index=True),
    Column("base_model", String(200), nullable=False),
    Column("source_tuned_model", String(200)),
    # The operation whose adapter a job starts from, bound when the job is accepted.
    Column("source_operation_id", String(64)),
    Column("source_served_epoch", Integer),  # its chosen checkpoint when the job was accepted
    Column("training_data", Text, nullable=False),  # JSON list of [text_input, output]
    Column("total_steps", Integer, nullable=False),
    Column("completed_steps", Integer, nullable=False, default=0),
    Column("seed", Integer, nullable=False),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("worker_id", String(128)),
    Column("lease_expires_at", UTCDateTime),
    Column("attempts", Integer, nullable=False, default=0),
    Column("error_code", Integer),
    Column("error_message", Text),
    Column("create_time", UTCDateTime, nullable=False),
    Column("update_time", UTCDateTime, nullable=False),
    Column("project_number", BigInteger),
    Column("trained_tokens", BigInteger, nullable=False, default=0),  # tokens through training
    # Evaluation and checkpoints (Tunesmith extensions): JSON list of [text_input, output].
    Column("validation_data", Text),
    Column("evaluation_interval_steps", Integer, nullable=False, default=0),
    Column("checkpoint_choice", Integer, nullable=False, default=0),
    # The epoch whose kept adapter the model serves; NULL: the job's final adapter.
    Column("served_epoch", Integer),
)

snapshots = Table(
    "snapshots",
    metadata,
    Column("operation_id", String(64), primary_key=True),
    Column("step", Integer, primary_key=True),
    Column("epoch", Integer, nullable=False),
    Column("mean_loss", Float, nullable=False),
    Column("compute_time", UTCDateTime, nullable=False),
)

evaluations = Table(
    "evaluations",
    metadata,
    Column("operation_id", String(64), primary_key=True),
    Column("step", Integer, primary_key=True),
    Column("epoch", Integer, nullable=False),
    Column("training_loss", Float),
    Column("validation_loss", Float, nullable=False),
    Column("exact_match", Float, nullable=False),
    Column("examples", Integer, nullable=False),
    Column("create_time", UTCDateTime, nullable=False),
)

# The adapters kept at epoch ends (artifacts.epoch_adapter holds their files).
epoch_checkpoints = Table(
    "epoch_checkpoints",
    metadata,
    Column("operation_id", String(64), primary_key=True),
    Column("epoch", Integer, primary_key=True),
    Column("step", Integer, nullable=False),
    Column("create_time", UTCDateTime, nullable=False),
)
