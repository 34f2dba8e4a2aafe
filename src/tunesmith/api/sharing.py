"""tunedModels.permissions and transferOwnership: who a tuned model is shared with."""

from __future__ import annotations

from datetime import UTC, datetime

from tunesmith.api.service import Page, authorize_model, next_page_token, read_page
from tunesmith.domain import names
from tunesmith.domain.access import (
    AccessFacts,
    Account,
    Action,
    GranteeType,
    Permission,
    Principal,
    Role,
    role_of,
)
from tunesmith.domain.errors import Code, FieldViolation, ServiceError, invalid, not_found
from tunesmith.domain.validation import PermissionGrant
from tunesmith.store.repository import Repository


def permission_missing(model_id: str, permission_id: str) -> ServiceError:
    return not_found(
        f"Permission tunedModels/{model_id}/permissions/{permission_id} does not exist."
    )


def owner_only(model_id: str) -> ServiceError:
    return ServiceError(
        Code.PERMISSION_DENIED,
        f"Only an OWNER of tunedModels/{model_id} may grant, change or remove the OWNER role.",
    )


class SharingService:
    def __init__(self, repo: Repository) -> None:
        self.repo = repo

    def _share(self, caller: Principal, model_id: str) -> tuple[AccessFacts, Role]:
        facts = authorize_model(self.repo, caller, model_id, Action.SHARE)
        role = role_of(caller, facts)
        assert role is not None
        return facts, role

    def _find(self, facts: AccessFacts, model_id: str, permission_id: str) -> Permission:
        for grant in facts.grants:
            if grant.id == permission_id:
                return grant
        raise permission_missing(model_id, permission_id)

    def _owner_email(self, facts: AccessFacts) -> str:
        owner = self.repo.account(facts.owner_id)
        return owner.email if owner else ""

    def _is_owner_grant(self, facts: AccessFacts, grant: Permission) -> bool:
        """The grant that makes the model's owner its owner; only transferOwnership moves it."""
        return (
            grant.grantee_type == GranteeType.USER
            and grant.role == Role.OWNER
            and grant.email == self._owner_email(facts)
        )

    def _grantee(self, grant: PermissionGrant) -> None:
        """USER and GROUP grants must name an existing user or group."""
        if grant.grantee_type == GranteeType.EVERYONE:
            return
        kind = "user" if grant.grantee_type == GranteeType.USER else "group"
        account = self.repo.account(grant.email)
        if account is None or account.kind != kind:
            other = f"; {grant.email} is a {account.kind}" if account else ""
            raise invalid(
                [
                    FieldViolation(
                        "emailAddress",
                        f"emailAddress {grant.email} is not a Tunesmith {kind}{other}",
                    )
                ]
            )

    def create(self, caller: Principal, model_id: str, grant: PermissionGrant) -> Permission:
        facts, role = self._share(caller, model_id)
        if grant.role == Role.OWNER and role != Role.OWNER:
            raise owner_only(model_id)
        self._grantee(grant)
        for existing in facts.grants:
            if (existing.grantee_type, existing.email) == (grant.grantee_type, grant.email):
                who = grant.email or "EVERYONE"
                raise ServiceError(
                    Code.ALREADY_EXISTS,
                    f"{existing.name} already grants {existing.role.name} to {who}; "
                    "update that permission instead.",
                )
        permission = Permission(
            model_id,
            names.permission_id(),
            grant.grantee_type,
            grant.email,
            grant.role,
            datetime.now(UTC),
        )
        self.repo.create_permission(permission)
        return permission

    def list(
        self, caller: Principal, model_id: str, page_size: int | None, page_token: str | None
    ) -> tuple[list[Permission], str | None]:
        self._share(caller, model_id)
        context = f"tunedModels/{model_id}/permissions"
        page: Page = read_page(page_size, page_token, 10, context)
        found, more = self.repo.list_permissions(model_id, page.offset, page.size)
        return found, next_page_token(page, more, context)

    def get(self, caller: Principal, model_id: str, permission_id: str) -> Permission:
        facts, _ = self._share(caller, model_id)
        return self._find(facts, model_id, permission_id)

    def update(
        self, caller: Principal, model_id: str, permission_id: str, new_role: Role
    ) -> Permission:
        facts, role = self._share(caller, model_id)
        grant = self._find(facts, model_id, permission_id)
        if Role.OWNER in (grant.role, new_role) and role != Role.OWNER:
            raise owner_only(model_id)
        if grant.grantee_type == GranteeType.EVERYONE and new_role != Role.READER:
            raise invalid([FieldViolation("role", "EVERYONE can only be granted READER")])
        if self._is_owner_grant(facts, grant) and new_role != Role.OWNER:
            raise ServiceError(
                Code.FAILED_PRECONDITION,
                f"{grant.name} makes {grant.email} the owner; use transferOwnership to "
                "change the owner.",
            )
        self.repo.set_permission_role(model_id, permission_id, new_role)
        return Permission(
            model_id, grant.id, grant.grantee_type, grant.email, new_role, grant.create_time
        )

    def delete(self, caller: Principal, model_id: str, permission_id: str) -> None:
        facts, role = self._share(caller, model_id)
        grant = self._find(facts, model_id, permission_id)
        if grant.role == Role.OWNER and role != Role.OWNER:
            raise owner_only(model_id)
        if self._is_owner_grant(facts, grant):
            raise ServiceError(
                Code.FAILED_PRECONDITION,
                f"{grant.name} makes {grant.email} the owner and cannot be deleted; use "
                "transferOwnership to change the owner.",
            )
        if not self.repo.delete_permission(model_id, permission_id):
            raise permission_missing(model_id, permission_id)

    def transfer_ownership(self, caller: Principal, model_id: str, email: str) -> None:
        """The new owner must be a user; the old owner keeps WRITER."""
        facts = authorize_model(self.repo, caller, model_id, Action.TRANSFER)
        new_owner = self.repo.account(email)
        if new_owner is None or new_owner.kind != "user":
            raise invalid(
                [FieldViolation("emailAddress", f"emailAddress {email} is not a Tunesmith user")]
            )
        if new_owner.id == facts.owner_id:
            return
        old_owner: Account | None = self.repo.account(facts.owner_id)
        assert old_owner is not None
        self.repo.transfer_ownership(model_id, old_owner, new_owner)
