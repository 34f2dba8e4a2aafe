"""Administration of users, groups, projects and API keys. The admin commands call this
directly on the local data dir, as `createsuperuser`-style tools do; the HTTP API has no
admin surface, so a leaked API key cannot mint others."""

from __future__ import annotations

import re
import secrets

from tunesmith.api.auth import Credentials, hash_key, new_api_key, new_project_number
from tunesmith.domain.access import READONLY_SCOPE, TUNING_SCOPE, Account, ApiKeyInfo
from tunesmith.domain.errors import Code, FieldViolation, ServiceError, invalid, not_found
from tunesmith.store.repository import Repository

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
PROJECT_ID = re.compile(r"^[a-z][a-z0-9-]{3,61}[a-z0-9]$")
SCOPES = {"tuning": TUNING_SCOPE, "readonly": READONLY_SCOPE}


def _email(value: str) -> str:
    email = value.strip().lower()
    if not EMAIL.match(email):
        raise invalid([FieldViolation("email", f"'{value}' is not an email address")])
    return email


class Accounts:
    def __init__(self, credentials: Credentials, repo: Repository) -> None:
        self.credentials, self.repo = credentials, repo

    def user(self, email: str) -> Account:
        return self._get(email, "user")

    def group(self, email: str) -> Account:
        return self._get(email, "group")

    def _get(self, email: str, kind: str) -> Account:
        account = self.repo.account(email.strip().lower())
        if account is None or account.kind != kind:
            raise not_found(f"There is no {kind} {email}.")
        return account

    def create_user(self, email: str, display_name: str = "") -> Account:
        account = Account(
            "user-" + secrets.token_hex(5),
            _email(email),
            "user",
            display_name,
            new_project_number(),
        )
        self.repo.create_principal(account)
        return account

    def create_group(self, email: str, display_name: str = "") -> Account:
        account = Account("group-" + secrets.token_hex(5), _email(email), "group", display_name)
        self.repo.create_principal(account)
        return account

    def add_member(self, group_email: str, user_email: str) -> None:
        self.repo.add_group_member(self.group(group_email).id, self.user(user_email).id)

    def remove_member(self, group_email: str, user_email: str) -> None:
        if not self.repo.remove_group_member(self.group(group_email).id, self.user(user_email).id):
            raise not_found(f"{user_email} is not a member of {group_email}.")

    def create_project(self, project_id: str, number: int | None = None) -> int:
        if not PROJECT_ID.match(project_id):
            raise invalid(
                [
                    FieldViolation(
                        "projectId",
                        f"'{project_id}' is not a project id: 5 to 63 lowercase letters, digits "
                        "or hyphens, starting with a letter",
                    )
                ]
            )
        number = number or new_project_number()
        self.repo.create_project(number, project_id)
        return number

    def project_number(self, id_or_number: str) -> int:
        found = self.repo.project(id_or_number)
        if found is None:
            raise not_found(f"There is no project {id_or_number}.")
        return found[0]

    def add_project_member(self, project: str, user_email: str) -> None:
        self.repo.add_project_member(self.project_number(project), self.user(user_email).id)

    def create_api_key(
        self, user_email: str, project: str | None = None, display_name: str = ""
    ) -> tuple[str, str]:
        """A new key for the user (billed to `project`, which it must belong to, or to its
        own project): its id and the key itself, which is stored only as a hash."""
        user = self.user(user_email)
        number = user.default_project
        if project:
            number = self.project_number(project)
            membership = self.repo.membership(user.id)
            if membership is None or number not in membership[2]:
                raise ServiceError(
                    Code.FAILED_PRECONDITION, f"{user.email} is not a member of project {project}."
                )
        key_id, key = new_api_key()
        self.repo.add_api_key(user.id, hash_key(key), key_id, number, display_name)
        return key_id, key

    def api_keys(self, user_email: str | None = None) -> list[ApiKeyInfo]:
        return self.repo.api_keys(self.user(user_email).id if user_email else None)

    def revoke_api_key(self, key_id: str) -> None:
        if not self.repo.revoke_api_key(key_id):
            raise not_found(f"There is no active API key {key_id}.")

    def access_token(self, user_email: str, scope: str = "tuning", ttl: int | None = None) -> str:
        if scope not in SCOPES:
            raise invalid(
                [FieldViolation("scope", f"scope must be one of {', '.join(SCOPES)}, not {scope}")]
            )
        return self.credentials.issue_access_token(self.user(user_email).id, [SCOPES[scope]], ttl)
