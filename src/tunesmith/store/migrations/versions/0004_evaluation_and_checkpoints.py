"""validation data, evaluations and the adapters kept at epoch ends

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("operations") as batch:
        batch.add_column(sa.Column("validation_data", sa.Text(), nullable=True))
        batch.add_column(
            sa.Column("evaluation_interval_steps", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("checkpoint_choice", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("served_epoch", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("source_served_epoch", sa.Integer(), nullable=True))
    op.create_table(
        "evaluations",
        sa.Column("operation_id", sa.String(64), primary_key=True),
        sa.Column("step", sa.Integer(), primary_key=True),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("training_loss", sa.Float(), nullable=True),
        sa.Column("validation_loss", sa.Float(), nullable=False),
        sa.Column("exact_match", sa.Float(), nullable=False),
        sa.Column("examples", sa.Integer(), nullable=False),
        sa.Column("create_time", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "epoch_checkpoints",
        sa.Column("operation_id", sa.String(64), primary_key=True),
        sa.Column("epoch", sa.Integer(), primary_key=True),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("create_time", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("epoch_checkpoints")
    op.drop_table("evaluations")
    with op.batch_alter_table("operations") as batch:
        for column in (
            "source_served_epoch",
            "served_epoch",
            "checkpoint_choice",
            "evaluation_interval_steps",
            "validation_data",
        ):
            batch.drop_column(column)
