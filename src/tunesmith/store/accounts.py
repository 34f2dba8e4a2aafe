"""Users, groups, projects and API keys."""

from __future__ import annotations

from sqlalchemy import Connection, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from tunesmith.domain.access import (
    Account,
    ApiKeyInfo,
)
from tunesmith.domain.errors import Code, ServiceError
from tunesmith.store.rows import StoreBase, account_from_row, utcnow
from tunesmith.store.tables import (
    api_keys,
    group_members,
    principals,
    project_members,
    projects,
)


class AccountStore(StoreBase):
    # ------------------------------------------------------------ principals

    def ensure_principal(self, principal_id: str, email: str) -> None:
        with self._tx() as c:
            if c.execute(select(principals.c.id).where(principals.c.id == principal_id)).first():
                return
            c.execute(insert(principals).values(id=principal_id, email=email, create_time=utcnow()))

    def create_principal(self, account: Account) -> None:
        """A user (with its personal project, which it is a member of) or a group."""
        try:
            with self._tx() as c:
                c.execute(
                    insert(principals).values(
                        id=account.id,
                        email=account.email,
                        kind=account.kind,
                        display_name=account.display_name,
                        default_project=account.default_project,
                        create_time=utcnow(),
                    )
                )
                if account.default_project is not None:
                    self._insert_project(c, account.default_project, account.id)
                    c.execute(
                        insert(project_members).values(
                            project_number=account.default_project, principal_id=account.id
                        )
                    )
        except IntegrityError as error:
            raise ServiceError(
                Code.ALREADY_EXISTS, f"{account.email} is already a user or a group."
            ) from error

    def set_default_project(self, principal_id: str, project: int, project_id: str) -> None:
        with self._tx() as c:
            self._insert_project(c, project, project_id)
            c.execute(
                insert(project_members).values(project_number=project, principal_id=principal_id)
            )
            c.execute(
                update(principals)
                .where(principals.c.id == principal_id)
                .values(default_project=project)
            )

    def account(self, id_or_email: str) -> Account | None:
        query = select(principals).where(
            or_(principals.c.id == id_or_email, principals.c.email == id_or_email.lower())
        )
        with self.engine.connect() as c:
            row = c.execute(query).first()
        return account_from_row(row) if row else None

    def accounts(self, kind: str) -> list[Account]:
        query = select(principals).where(principals.c.kind == kind).order_by(principals.c.email)
        with self.engine.connect() as c:
            return [account_from_row(r) for r in c.execute(query)]

    def add_group_member(self, group_id: str, member_id: str) -> None:
        with self._tx() as c:
            exists = c.execute(
                select(group_members).where(
                    group_members.c.group_id == group_id, group_members.c.member_id == member_id
                )
            ).first()
            if not exists:
                c.execute(insert(group_members).values(group_id=group_id, member_id=member_id))

    def remove_group_member(self, group_id: str, member_id: str) -> bool:
        with self._tx() as c:
            result = c.execute(
                delete(group_members).where(
                    group_members.c.group_id == group_id, group_members.c.member_id == member_id
                )
            )
        return bool(result.rowcount)

    def group_members(self, group_id: str) -> list[str]:
        query = (
            select(principals.c.email)
            .join(group_members, group_members.c.member_id == principals.c.id)
            .where(group_members.c.group_id == group_id)
            .order_by(principals.c.email)
        )
        with self.engine.connect() as c:
            return list(c.execute(query).scalars())

    # ------------------------------------------------------------ projects

    def _insert_project(self, c: Connection, number: int, project_id: str) -> None:
        c.execute(insert(projects).values(number=number, id=project_id, create_time=utcnow()))

    def create_project(self, number: int, project_id: str) -> None:
        try:
            with self._tx() as c:
                self._insert_project(c, number, project_id)
        except IntegrityError as error:
            raise ServiceError(
                Code.ALREADY_EXISTS, f"Project {project_id} ({number}) already exists."
            ) from error

    def project(self, id_or_number: str) -> tuple[int, str] | None:
        condition = projects.c.id == id_or_number
        if id_or_number.isdigit():
            condition = or_(condition, projects.c.number == int(id_or_number))
        with self.engine.connect() as c:
            row = c.execute(select(projects).where(condition)).first()
        return (row.number, row.id) if row else None

    def list_projects(self) -> list[tuple[int, str, list[str]]]:
        with self.engine.connect() as c:
            rows = c.execute(select(projects).order_by(projects.c.id)).all()
            members = c.execute(
                select(project_members.c.project_number, principals.c.email).join(
                    principals, principals.c.id == project_members.c.principal_id
                )
            ).all()
        return [
            (r.number, r.id, sorted(m.email for m in members if m.project_number == r.number))
            for r in rows
        ]

    def add_project_member(self, number: int, principal_id: str) -> None:
        with self._tx() as c:
            exists = c.execute(
                select(project_members).where(
                    project_members.c.project_number == number,
                    project_members.c.principal_id == principal_id,
                )
            ).first()
            if not exists:
                c.execute(
                    insert(project_members).values(project_number=number, principal_id=principal_id)
                )

    # ------------------------------------------------------------ API keys

    def add_api_key(
        self,
        principal_id: str,
        key_hash: str,
        key_id: str,
        project_number: int | None,
        display_name: str = "",
    ) -> None:
        with self._tx() as c:
            c.execute(
                insert(api_keys).values(
                    key_hash=key_hash,
                    key_id=key_id,
                    principal_id=principal_id,
                    project_number=project_number,
                    display_name=display_name,
                    create_time=utcnow(),
                    revoked=False,
                )
            )

    def api_keys(self, principal_id: str | None = None) -> list[ApiKeyInfo]:
        query = (
            select(api_keys, principals.c.email)
            .join(principals, principals.c.id == api_keys.c.principal_id)
            .order_by(api_keys.c.create_time)
        )
        if principal_id is not None:
            query = query.where(api_keys.c.principal_id == principal_id)
        with self.engine.connect() as c:
            return [
                ApiKeyInfo(
                    r.key_id, r.email, r.display_name, r.project_number, r.create_time, r.revoked
                )
                for r in c.execute(query)
            ]

    def revoke_api_key(self, key_id: str) -> bool:
        with self._tx() as c:
            result = c.execute(
                update(api_keys)
                .where(api_keys.c.key_id == key_id, api_keys.c.revoked.is_(False))
                .values(revoked=True)
            )
        return bool(result.rowcount)

    def identity_for_key(self, key_hash: str) -> tuple[str, int | None] | None:
        """The principal id and billing project of a key that is not revoked."""
        query = select(api_keys.c.principal_id, api_keys.c.project_number).where(
            api_keys.c.key_hash == key_hash, api_keys.c.revoked.is_(False)
        )
        with self.engine.connect() as c:
            row = c.execute(query).first()
        return (row.principal_id, row.project_number) if row else None

    def membership(
        self, principal_id: str
    ) -> tuple[Account, frozenset[str], frozenset[int]] | None:
        """A user with the emails of its groups and the numbers of its projects."""
        with self.engine.connect() as c:
            row = c.execute(select(principals).where(principals.c.id == principal_id)).first()
            if row is None:
                return None
            groups = c.execute(
                select(principals.c.email)
                .join(group_members, group_members.c.group_id == principals.c.id)
                .where(group_members.c.member_id == principal_id)
            ).scalars()
            numbers = c.execute(
                select(project_members.c.project_number).where(
                    project_members.c.principal_id == principal_id
                )
            ).scalars()
            return account_from_row(row), frozenset(groups), frozenset(numbers)
