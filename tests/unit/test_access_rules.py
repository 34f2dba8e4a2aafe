from datetime import UTC, datetime

import pytest

from tunesmith.domain.access import (
    AccessFacts,
    Action,
    GranteeType,
    Permission,
    Principal,
    Role,
    authorize,
    role_of,
)
from tunesmith.domain.errors import ServiceError

ALICE = Principal("u1", "alice@example.com", groups=frozenset({"team@example.com"}))


def grant(grantee: GranteeType, email: str, role: Role) -> Permission:
    return Permission("m", "p", grantee, email, role, datetime.now(UTC))


def test_every_action_is_distinct():
    # Equal enum values would silently alias one action to another.
    assert len(Action) == 5
    assert len({a.verb for a in Action}) == 5


@pytest.mark.parametrize(
    ("facts", "role"),
    [
        (AccessFacts("u1"), Role.OWNER),
        (AccessFacts("u2"), None),
        (
            AccessFacts("u2", [grant(GranteeType.USER, "alice@example.com", Role.WRITER)]),
            Role.WRITER,
        ),
        (AccessFacts("u2", [grant(GranteeType.USER, "bob@example.com", Role.WRITER)]), None),
        (
            AccessFacts("u2", [grant(GranteeType.GROUP, "team@example.com", Role.READER)]),
            Role.READER,
        ),
        (AccessFacts("u2", [grant(GranteeType.EVERYONE, "", Role.READER)]), Role.READER),
        (AccessFacts("u2", reader_projects=frozenset({7})), None),
        (
            AccessFacts(
                "u2",
                [
                    grant(GranteeType.EVERYONE, "", Role.READER),
                    grant(GranteeType.GROUP, "team@example.com", Role.OWNER),
                ],
            ),
            Role.OWNER,
        ),
    ],
)
def test_role_is_the_strongest_grant(facts, role):
    assert role_of(ALICE, facts) == role


def test_project_members_read():
    member = Principal("u3", "p@example.com", projects=frozenset({7}))
    assert role_of(member, AccessFacts("u2", reader_projects=frozenset({7}))) == Role.READER


def test_a_weaker_role_names_the_action():
    facts = AccessFacts("u2", [grant(GranteeType.USER, "alice@example.com", Role.WRITER)])
    with pytest.raises(ServiceError, match="permission to delete tuned model m"):
        authorize(ALICE, "m", facts, Action.DELETE)
    assert authorize(ALICE, "m", facts, Action.SHARE) == Role.WRITER
