"""Who may do what to a tuned model: principals, roles, grants, scopes. Every rule is here;
the service asks these functions and the store only fetches the facts they need."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum, IntEnum

from tunesmith.domain.errors import Code, ServiceError

SCOPE_PREFIX = "https://www.googleapis.com/auth/"
TUNING_SCOPE = SCOPE_PREFIX + "generative-language.tuning"
READONLY_SCOPE = SCOPE_PREFIX + "generative-language.tuning.readonly"
# Scopes that carry full tuning rights; the readonly one only reads and generates.
FULL_SCOPES = frozenset(
    {TUNING_SCOPE, SCOPE_PREFIX + "generative-language", SCOPE_PREFIX + "cloud-platform"}
)
# What the hosted service lists in its insufficient_scope challenge (reference §5).
CHALLENGE_SCOPES = " ".join(
    SCOPE_PREFIX + s
    for s in (
        "generative-language",
        "generative-language.tuning",
        "generative-language.tuning.readonly",
        "generative-language.retriever",
        "generative-language.retriever.readonly",
    )
)
PERMISSION_ID = re.compile(r"^[a-z0-9]{1,63}$")  # google-generativeai requires [a-z0-9]+


class Role(IntEnum):
    """google.ai.generativelanguage Permission.Role; a lower number holds more rights."""

    OWNER = 1
    WRITER = 2
    READER = 3


class GranteeType(IntEnum):
    USER = 1
    GROUP = 2
    EVERYONE = 3


class Action(Enum):
    """What a method does to a tuned model: the least role it needs, and the verb that
    names it in errors (which also keeps equal roles from making enum aliases)."""

    READ = (Role.READER, "use")  # get, operations, generateContent, export
    WRITE = (Role.WRITER, "change")  # patch, cancel
    SHARE = (Role.WRITER, "share")  # permissions
    DELETE = (Role.OWNER, "delete")
    TRANSFER = (Role.OWNER, "transfer the ownership of")

    @property
    def least_role(self) -> Role:
        return self.value[0]

    @property
    def verb(self) -> str:
        return self.value[1]


@dataclass(frozen=True)
class Principal:
    """The caller of one request, as authentication established it."""

    id: str
    email: str
    scopes: frozenset[str] | None = None  # None: an API key, with all of its user's rights
    project_number: int | None = None  # the project the request is billed to
    groups: frozenset[str] = frozenset()  # emails of the groups the user belongs to
    projects: frozenset[int] = frozenset()  # projects the user is a member of


@dataclass(frozen=True)
class Permission:
    tuned_model_id: str
    id: str
    grantee_type: GranteeType
    email: str  # empty for EVERYONE
    role: Role
    create_time: datetime

    @property
    def name(self) -> str:
        return f"tunedModels/{self.tuned_model_id}/permissions/{self.id}"


@dataclass(frozen=True)
class AccessFacts:
    """What the store knows about who may use one tuned model."""

    owner_id: str
    grants: list[Permission] = field(default_factory=list)
    reader_projects: frozenset[int] = frozenset()


def insufficient_scope() -> ServiceError:
    return ServiceError(
        Code.PERMISSION_DENIED,
        "Request had insufficient authentication scopes.",
        reason="ACCESS_TOKEN_SCOPE_INSUFFICIENT",
        headers={
            "WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", '
            f'error="insufficient_scope", scope="{CHALLENGE_SCOPES}"'
        },
    )


def require_scope(caller: Principal, read_only: bool) -> None:
    """An access token must carry a scope that allows the method (`read_only`: one that only
    reads or generates); API keys always do."""
    if caller.scopes is None or caller.scopes & FULL_SCOPES:
        return
    if read_only and READONLY_SCOPE in caller.scopes:
        return
    raise insufficient_scope()


def role_of(caller: Principal, facts: AccessFacts) -> Role | None:
    """The strongest role any grant gives the caller, or None if it may not read."""
    roles = [Role.OWNER] if facts.owner_id == caller.id else []
    for grant in facts.grants:
        if (
            grant.grantee_type == GranteeType.EVERYONE
            or (grant.grantee_type == GranteeType.USER and grant.email == caller.email)
            or (grant.grantee_type == GranteeType.GROUP and grant.email in caller.groups)
        ):
            roles.append(grant.role)
    if facts.reader_projects & caller.projects:
        roles.append(Role.READER)
    return min(roles, default=None)


def access_denied(model_name: str) -> ServiceError:
    return ServiceError(
        Code.PERMISSION_DENIED, f"You do not have permission to access tuned model {model_name}"
    )


def role_too_weak(model_name: str, action: Action, role: Role) -> ServiceError:
    return ServiceError(
        Code.PERMISSION_DENIED,
        f"You do not have permission to {action.verb} tuned model {model_name}: "
        f"it needs the {action.least_role.name} role and you have {role.name}.",
    )


def authorize(caller: Principal, model_name: str, facts: AccessFacts, action: Action) -> Role:
    """The caller's role on the model if it allows `action`; the hosted service's 403
    otherwise (a caller who may not even read learns nothing more than that)."""
    role = role_of(caller, facts)
    if role is None:
        raise access_denied(model_name)
    if role > action.least_role:
        raise role_too_weak(model_name, action, role)
    return role


@dataclass(frozen=True)
class Account:
    """A user or a group, as the admin commands manage them."""

    id: str
    email: str
    kind: str  # "user" or "group"
    display_name: str = ""
    default_project: int | None = None  # users only: where their requests are billed


@dataclass(frozen=True)
class ApiKeyInfo:
    """What may be shown about an API key: never the key itself, nor its hash."""

    key_id: str
    email: str
    display_name: str
    project_number: int | None
    create_time: datetime
    revoked: bool


@dataclass(frozen=True)
class ListScope:
    """Which models a list call may return for its caller: those the caller holds at least
    `least_role` on, or, with `everyone`, only those shared with everyone."""

    caller: Principal
    least_role: Role = Role.READER
    everyone: bool = False
