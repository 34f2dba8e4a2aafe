"""access control: groups, projects, permissions, API key handles, quota columns

Revision ID: 0002
Revises: 0001
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("principals") as batch:
        batch.add_column(sa.Column("kind", sa.String(8), nullable=False, server_default="user"))
        batch.add_column(
            sa.Column("display_name", sa.String(200), nullable=False, server_default="")
        )
        batch.add_column(sa.Column("default_project", sa.BigInteger(), nullable=True))
    op.create_table(
        "group_members",
        sa.Column("group_id", sa.String(64), sa.ForeignKey("principals.id"), primary_key=True),
        sa.Column("member_id", sa.String(64), sa.ForeignKey("principals.id"), primary_key=True),
    )
    op.create_table(
        "projects",
        sa.Column("number", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("create_time", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "project_members",
        sa.Column(
            "project_number", sa.BigInteger(), sa.ForeignKey("projects.number"), primary_key=True
        ),
        sa.Column("principal_id", sa.String(64), sa.ForeignKey("principals.id"), primary_key=True),
    )
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("key_id", sa.String(32), nullable=True))
        batch.add_column(
            sa.Column("display_name", sa.String(200), nullable=False, server_default="")
        )
        batch.add_column(sa.Column("project_number", sa.BigInteger(), nullable=True))
    # Keys made before handles existed get one from their hash (which is not secret).
    op.execute("UPDATE api_keys SET key_id = substr(key_hash, 1, 12) WHERE key_id IS NULL")
    op.create_index("ix_api_keys_key_id", "api_keys", ["key_id"], unique=True)
    op.create_table(
        "permissions",
        sa.Column("tuned_model_id", sa.String(64), primary_key=True),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("grantee_type", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(320), nullable=True),
        sa.Column("role", sa.Integer(), nullable=False),
        sa.Column("create_time", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_permissions_email", "permissions", ["email"])
    # Every existing model's owner becomes an OWNER permission (role 1, grantee USER 1).
    op.execute(
        "INSERT INTO permissions (tuned_model_id, id, grantee_type, email, role, create_time) "
        "SELECT m.id, 'owner', 1, p.email, 1, m.create_time "
        "FROM tuned_models m JOIN principals p ON p.id = m.owner_id"
    )
    op.create_table(
        "reader_projects",
        sa.Column("tuned_model_id", sa.String(64), primary_key=True),
        sa.Column("project_number", sa.BigInteger(), primary_key=True, autoincrement=False),
    )
    _move_reader_projects_to_table()
    with op.batch_alter_table("tuned_models") as batch:
        batch.add_column(sa.Column("project_number", sa.BigInteger(), nullable=True))
        batch.drop_column("reader_project_numbers")
    with op.batch_alter_table("operations") as batch:
        batch.add_column(sa.Column("project_number", sa.BigInteger(), nullable=True))
        batch.add_column(
            sa.Column("trained_tokens", sa.BigInteger(), nullable=False, server_default="0")
        )


def _move_reader_projects_to_table() -> None:
    connection = op.get_bind()
    rows = connection.execute(sa.text("SELECT id, reader_project_numbers FROM tuned_models"))
    for model_id, numbers in rows.all():
        for number in set(json.loads(numbers or "[]")):
            connection.execute(
                sa.text("INSERT INTO reader_projects VALUES (:m, :n)"), {"m": model_id, "n": number}
            )


def downgrade() -> None:
    with op.batch_alter_table("operations") as batch:
        batch.drop_column("trained_tokens")
        batch.drop_column("project_number")
    with op.batch_alter_table("tuned_models") as batch:
        batch.drop_column("project_number")
        batch.add_column(
            sa.Column("reader_project_numbers", sa.Text(), nullable=False, server_default="[]")
        )
    op.drop_table("reader_projects")
    op.drop_index("ix_permissions_email", "permissions")
    op.drop_table("permissions")
    op.drop_index("ix_api_keys_key_id", "api_keys")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("project_number")
        batch.drop_column("display_name")
        batch.drop_column("key_id")
    op.drop_table("project_members")
    op.drop_table("projects")
    op.drop_table("group_members")
    with op.batch_alter_table("principals") as batch:
        batch.drop_column("default_project")
        batch.drop_column("display_name")
        batch.drop_column("kind")
