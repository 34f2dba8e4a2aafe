"""A database made by the first release keeps its models, their owners and readers."""

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from tunesmith.domain.access import GranteeType, Role
from tunesmith.store.db import MIGRATIONS, make_engine, migrate
from tunesmith.store.repository import Repository


def test_upgrade_from_0001_grants_owners_and_keeps_reader_projects(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        connection.execute(
            text(
                "INSERT INTO principals (id, email, create_time) "
                "VALUES ('owner', 'owner@localhost', '2024-01-01 00:00:00')"
            )
        )
        connection.execute(
            text(
                "INSERT INTO tuned_models (id, base_model, display_name, description, "
                "temperature, top_p, top_k, state, epoch_count, batch_size, learning_rate, "
                "reader_project_numbers, owner_id, create_time, update_time) VALUES ('old', "
                "'models/x', '', '', 1, 1, 1, 2, 1, 1, 0.001, '[123, 456]', 'owner', "
                "'2024-01-01 00:00:00', '2024-01-01 00:00:00')"
            )
        )
    migrate(engine)
    repo = Repository(engine)
    facts = repo.access_facts("old")
    assert facts is not None and facts.owner_id == "owner"
    [grant] = facts.grants
    assert (grant.grantee_type, grant.email, grant.role) == (
        GranteeType.USER,
        "owner@localhost",
        Role.OWNER,
    )
    assert facts.reader_projects == {123, 456}
    model = repo.get_tuned_model("old")
    assert model is not None and model.reader_project_numbers == [123, 456]
