"""Every read and write of the database, returning domain objects."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from tunesmith.domain import names
from tunesmith.domain.access import (
    AccessFacts,
    Account,
    ApiKeyInfo,
    GranteeType,
    ListScope,
    Permission,
    Role,
)
from tunesmith.domain.errors import Code, ServiceError
from tunesmith.domain.quotas import ProjectQuota
from tunesmith.domain.resources import (
    CANCELLED_ERROR,
    ClaimedJob,
    Hyperparameters,
    JobError,
    JobStatus,
    Operation,
    TunedModel,
    TunedModelState,
    TuningExample,
    TuningSnapshot,
)
from tunesmith.domain.validation import TunedModelUpdate
from tunesmith.store.tables import (
    api_keys,
    group_members,
    operations,
    permissions,
    principals,
    project_members,
    projects,
    reader_projects,
    snapshots,
    tuned_models,
)

ACTIVE_JOBS = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


def utcnow() -> datetime:
    return datetime.now(UTC)


class LeaseLost(Exception):
    """The worker no longer holds the job: it expired, was taken over, or was deleted."""


def _tuned_model_row(model: TunedModel) -> dict:
    hp = model.hyperparameters
    return {
        "id": model.id,
        "base_model": model.base_model,
        "source_tuned_model": model.source_tuned_model,
        "display_name": model.display_name,
        "description": model.description,
        "temperature": model.temperature,
        "top_p": model.top_p,
        "top_k": model.top_k,
        "state": int(model.state),
        "epoch_count": hp.epoch_count,
        "batch_size": hp.batch_size,
        "learning_rate": hp.learning_rate,
        "owner_id": model.owner_id,
        "project_number": model.project_number,
        "create_time": model.create_time,
        "update_time": model.update_time,
    }


def _operation_row(
    model: TunedModel, operation_id: str, status: JobStatus, training_data: str
) -> dict:
    """An operation's columns, but for its step count and seed."""
    return {
        "id": operation_id,
        "tuned_model_id": model.id,
        "status": status.value,
        "base_model": model.base_model,
        "source_tuned_model": model.source_tuned_model,
        "training_data": training_data,
        "completed_steps": 0,
        "cancel_requested": False,
        "attempts": 0,
        "project_number": model.project_number,
        "create_time": model.create_time,
        "update_time": model.create_time,
    }


def _like_literal(text: str) -> str:
    """`text` matched literally by LIKE ... ESCAPE '\\': its % and _ are no wildcards."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _account(row) -> Account:
    return Account(row.id, row.email, row.kind, row.display_name, row.default_project)


def _permission(row) -> Permission:
    return Permission(
        tuned_model_id=row.tuned_model_id,
        id=row.id,
        grantee_type=GranteeType(row.grantee_type),
        email=row.email or "",
        role=Role(row.role),
        create_time=row.create_time,
    )


def _tuned_model(row, snaps: list[TuningSnapshot], readers: list[int]) -> TunedModel:
    return TunedModel(
        id=row.id,
        base_model=row.base_model,
        display_name=row.display_name,
        description=row.description,
        temperature=row.temperature,
        top_p=row.top_p,
        top_k=row.top_k,
        state=TunedModelState(row.state),
        create_time=row.create_time,
        update_time=row.update_time,
        hyperparameters=Hyperparameters(row.epoch_count, row.batch_size, row.learning_rate),
        owner_id=row.owner_id,
        source_tuned_model=row.source_tuned_model,
        start_time=row.start_time,
        complete_time=row.complete_time,
        snapshots=snaps,
        reader_project_numbers=readers,
        project_number=row.project_number,
    )


def _operation(row) -> Operation:
    error = JobError(row.error_code, row.error_message) if row.error_code is not None else None
    return Operation(
        id=row.id,
        tuned_model_id=row.tuned_model_id,
        status=JobStatus(row.status),
        total_steps=row.total_steps,
        completed_steps=row.completed_steps,
        error=error,
    )


def _snapshot(row) -> TuningSnapshot:
    return TuningSnapshot(row.step, row.epoch, row.mean_loss, row.compute_time)


def _visible(scope: ListScope):
    """SQL condition: the caller may see this model in a list (see ListScope)."""
    grants = select(permissions.c.tuned_model_id)
    if scope.everyone:
        return tuned_models.c.id.in_(
            grants.where(permissions.c.grantee_type == int(GranteeType.EVERYONE))
        )
    caller = scope.caller
    grantee = and_(
        permissions.c.grantee_type == int(GranteeType.USER), permissions.c.email == caller.email
    )
    if caller.groups:
        grantee = or_(
            grantee,
            and_(
                permissions.c.grantee_type == int(GranteeType.GROUP),
                permissions.c.email.in_(sorted(caller.groups)),
            ),
        )
    condition = or_(
        tuned_models.c.owner_id == caller.id,
        tuned_models.c.id.in_(grants.where(grantee, permissions.c.role <= int(scope.least_role))),
    )
    if scope.least_role == Role.READER and caller.projects:
        readable_by_project = select(reader_projects.c.tuned_model_id).where(
            reader_projects.c.project_number.in_(sorted(caller.projects))
        )
        condition = or_(condition, tuned_models.c.id.in_(readable_by_project))
    return condition


class Repository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self.engine.begin() as connection:
            yield connection

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
        return _account(row) if row else None

    def accounts(self, kind: str) -> list[Account]:
        query = select(principals).where(principals.c.kind == kind).order_by(principals.c.email)
        with self.engine.connect() as c:
            return [_account(r) for r in c.execute(query)]

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
            return _account(row), frozenset(groups), frozenset(numbers)

    # ------------------------------------------------------------ tuned models

    def create_tuned_model(
        self,
        model: TunedModel,
        operation_id: str,
        examples: list[TuningExample],
        seed: int,
        total_steps: int,
        owner_email: str,
        quota: ProjectQuota,
        source_operation_id: str | None = None,
    ) -> None:
        """The model, its owner's permission and its queued job, in one transaction: all or
        nothing. The project's quotas are checked inside the same transaction.
        `source_operation_id` binds the exact adapter a job from a tuned model starts from."""
        training_data = json.dumps([[e.text_input, e.output] for e in examples])
        with self._adding(model, owner_email, quota) as c:
            c.execute(
                insert(operations).values(
                    **_operation_row(model, operation_id, JobStatus.QUEUED, training_data),
                    total_steps=total_steps,
                    seed=seed,
                    source_operation_id=source_operation_id,
                )
            )

    @contextmanager
    def _adding(
        self, model: TunedModel, owner_email: str, quota: ProjectQuota
    ) -> Iterator[Connection]:
        """A transaction that checks the project's quota, inserts `model` with its owner's
        grant and reader projects, and lets the caller add its operation; 409 if the id is
        taken."""
        try:
            with self._tx() as c:
                self._check_quota(c, model.project_number, quota)
                c.execute(insert(tuned_models).values(**_tuned_model_row(model)))
                self._grant_owner(c, model, owner_email)
                self._set_reader_projects(c, model.id, model.reader_project_numbers)
                yield c
        except IntegrityError as error:
            raise ServiceError(
                Code.ALREADY_EXISTS, f"Tuned model {model.name} already exists."
            ) from error

    def _check_quota(self, c: Connection, project: int | None, quota: ProjectQuota) -> None:
        if project is None:
            return
        models = c.execute(
            select(func.count()).where(tuned_models.c.project_number == project)
        ).scalar_one()
        jobs = c.execute(
            select(func.count()).where(
                operations.c.project_number == project, operations.c.status.in_(ACTIVE_JOBS)
            )
        ).scalar_one()
        quota.check(project, models=models, jobs=jobs)

    def _grant_owner(self, c: Connection, model: TunedModel, owner_email: str) -> None:
        c.execute(
            insert(permissions).values(
                tuned_model_id=model.id,
                id=names.permission_id(),
                grantee_type=int(GranteeType.USER),
                email=owner_email,
                role=int(Role.OWNER),
                create_time=model.create_time,
            )
        )

    def _set_reader_projects(self, c: Connection, model_id: str, numbers: list[int]) -> None:
        c.execute(delete(reader_projects).where(reader_projects.c.tuned_model_id == model_id))
        for number in sorted(set(numbers)):
            c.execute(
                insert(reader_projects).values(tuned_model_id=model_id, project_number=number)
            )

    def get_tuned_model(self, model_id: str) -> TunedModel | None:
        with self.engine.connect() as c:
            found = self._load_models(c, [model_id])
        return found[0] if found else None

    def _load_models(self, c: Connection, ids: list[str]) -> list[TunedModel]:
        """The models with these ids, in this order, in three queries however many."""
        rows = {r.id: r for r in c.execute(select(tuned_models).where(tuned_models.c.id.in_(ids)))}
        snaps: dict[str, list[TuningSnapshot]] = {i: [] for i in rows}
        for row in c.execute(
            select(snapshots, operations.c.tuned_model_id)
            .join(operations, operations.c.id == snapshots.c.operation_id)
            .where(operations.c.tuned_model_id.in_(list(rows)))
            .order_by(snapshots.c.step)
        ):
            snaps[row.tuned_model_id].append(_snapshot(row))
        readers: dict[str, list[int]] = {i: [] for i in rows}
        for row in c.execute(
            select(reader_projects)
            .where(reader_projects.c.tuned_model_id.in_(list(rows)))
            .order_by(reader_projects.c.project_number)
        ):
            readers[row.tuned_model_id].append(row.project_number)
        return [_tuned_model(rows[i], snaps[i], readers[i]) for i in ids if i in rows]

    def access_facts(self, model_id: str) -> AccessFacts | None:
        with self.engine.connect() as c:
            owner = c.execute(
                select(tuned_models.c.owner_id).where(tuned_models.c.id == model_id)
            ).scalar()
            if owner is None:
                return None
            grants = c.execute(
                select(permissions).where(permissions.c.tuned_model_id == model_id)
            ).all()
            readers = c.execute(
                select(reader_projects.c.project_number).where(
                    reader_projects.c.tuned_model_id == model_id
                )
            ).scalars()
            return AccessFacts(owner, [_permission(g) for g in grants], frozenset(readers))

    def list_tuned_models(
        self, offset: int, limit: int, scope: ListScope, text: str = ""
    ) -> tuple[list[TunedModel], bool]:
        """A page in creation order of the models `scope` allows, and whether more follow;
        `text` matches display name or description, case-insensitively, every word."""
        query = (
            select(tuned_models.c.id)
            .where(_visible(scope))
            .order_by(tuned_models.c.create_time, tuned_models.c.id)
        )
        for word in text.split():
            pattern = f"%{_like_literal(word.lower())}%"
            query = query.where(
                or_(
                    func.lower(tuned_models.c.display_name).like(pattern, escape="\\"),
                    func.lower(tuned_models.c.description).like(pattern, escape="\\"),
                )
            )
        with self.engine.connect() as c:
            ids = c.execute(query.offset(offset).limit(limit + 1)).scalars().all()
            return self._load_models(c, list(ids[:limit])), len(ids) > limit

    def update_tuned_model(self, model_id: str, change: TunedModelUpdate) -> TunedModel | None:
        values: dict = {
            name: getattr(change, name)
            for name in ("display_name", "description", "temperature", "top_p", "top_k")
            if getattr(change, name) is not None
        }
        values["update_time"] = utcnow()
        with self._tx() as c:
            result = c.execute(
                update(tuned_models).where(tuned_models.c.id == model_id).values(**values)
            )
            if result.rowcount and change.reader_project_numbers is not None:
                self._set_reader_projects(c, model_id, change.reader_project_numbers)
        return self.get_tuned_model(model_id) if result.rowcount else None

    def delete_tuned_model(self, model_id: str) -> list[str] | None:
        """Deletes the model, its grants, operations and snapshots, and returns the ids of
        the operations it had (None if there was no such model). A running job notices at
        its next step that its operation is gone and stops."""
        with self._tx() as c:
            op_ids = select(operations.c.id).where(operations.c.tuned_model_id == model_id)
            deleted_ops = list(c.execute(op_ids).scalars())
            c.execute(delete(snapshots).where(snapshots.c.operation_id.in_(op_ids)))
            c.execute(delete(operations).where(operations.c.tuned_model_id == model_id))
            c.execute(delete(permissions).where(permissions.c.tuned_model_id == model_id))
            c.execute(delete(reader_projects).where(reader_projects.c.tuned_model_id == model_id))
            result = c.execute(delete(tuned_models).where(tuned_models.c.id == model_id))
        return deleted_ops if result.rowcount else None

    # ------------------------------------------------------------ permissions

    def create_permission(self, permission: Permission) -> None:
        with self._tx() as c:
            c.execute(
                insert(permissions).values(
                    tuned_model_id=permission.tuned_model_id,
                    id=permission.id,
                    grantee_type=int(permission.grantee_type),
                    email=permission.email or None,
                    role=int(permission.role),
                    create_time=permission.create_time,
                )
            )

    def list_permissions(
        self, model_id: str, offset: int, limit: int
    ) -> tuple[list[Permission], bool]:
        query = (
            select(permissions)
            .where(permissions.c.tuned_model_id == model_id)
            .order_by(permissions.c.create_time, permissions.c.id)
            .offset(offset)
            .limit(limit + 1)
        )
        with self.engine.connect() as c:
            rows = c.execute(query).all()
        return [_permission(r) for r in rows[:limit]], len(rows) > limit

    def set_permission_role(self, model_id: str, permission_id: str, role: Role) -> None:
        with self._tx() as c:
            c.execute(
                update(permissions)
                .where(permissions.c.tuned_model_id == model_id, permissions.c.id == permission_id)
                .values(role=int(role))
            )

    def delete_permission(self, model_id: str, permission_id: str) -> bool:
        with self._tx() as c:
            result = c.execute(
                delete(permissions).where(
                    permissions.c.tuned_model_id == model_id, permissions.c.id == permission_id
                )
            )
        return bool(result.rowcount)

    def transfer_ownership(self, model_id: str, old: Account, new: Account) -> None:
        """The new owner gets OWNER (replacing any grant it had), the old one WRITER."""
        with self._tx() as c:
            user_grant = and_(
                permissions.c.tuned_model_id == model_id,
                permissions.c.grantee_type == int(GranteeType.USER),
            )
            c.execute(delete(permissions).where(user_grant, permissions.c.email == new.email))
            c.execute(
                update(permissions)
                .where(user_grant, permissions.c.email == old.email)
                .values(role=int(Role.WRITER))
            )
            c.execute(
                insert(permissions).values(
                    tuned_model_id=model_id,
                    id=names.permission_id(),
                    grantee_type=int(GranteeType.USER),
                    email=new.email,
                    role=int(Role.OWNER),
                    create_time=utcnow(),
                )
            )
            c.execute(
                update(tuned_models)
                .where(tuned_models.c.id == model_id)
                .values(owner_id=new.id, update_time=utcnow())
            )

    # ------------------------------------------------------------ operations

    def get_operation(self, model_id: str, operation_id: str) -> Operation | None:
        query = select(operations).where(
            operations.c.id == operation_id, operations.c.tuned_model_id == model_id
        )
        with self.engine.connect() as c:
            row = c.execute(query).first()
        return _operation(row) if row else None

    def operation_progress(self, operation_id: str) -> tuple[JobStatus, int] | None:
        """An operation's status and completed steps: what changes whenever its answer
        does, cheap enough to read several times a second while a poll waits."""
        query = select(operations.c.status, operations.c.completed_steps).where(
            operations.c.id == operation_id
        )
        with self.engine.connect() as c:
            row = c.execute(query).first()
        return (JobStatus(row.status), row.completed_steps) if row else None

    def list_operations(self, model_id: str) -> list[Operation]:
        query = (
            select(operations)
            .where(operations.c.tuned_model_id == model_id)
            .order_by(operations.c.create_time)
        )
        with self.engine.connect() as c:
            return [_operation(r) for r in c.execute(query)]

    def operation_snapshots(self, operation_id: str) -> list[TuningSnapshot]:
        query = (
            select(snapshots)
            .where(snapshots.c.operation_id == operation_id)
            .order_by(snapshots.c.step)
        )
        with self.engine.connect() as c:
            return [_snapshot(r) for r in c.execute(query)]

    def request_cancel(self, model_id: str, operation_id: str) -> Operation | None:
        """Cancels a queued job at once; flags a running one for its worker to stop."""
        with self._tx() as c:
            row = c.execute(
                select(operations).where(
                    operations.c.id == operation_id, operations.c.tuned_model_id == model_id
                )
            ).first()
            if row is None:
                return None
            if row.status == JobStatus.QUEUED.value:
                self._finish(c, operation_id, JobStatus.CANCELLED, CANCELLED_ERROR, utcnow())
            elif row.status == JobStatus.RUNNING.value:
                c.execute(
                    update(operations)
                    .where(operations.c.id == operation_id)
                    .values(cancel_requested=True, update_time=utcnow())
                )
        return self.get_operation(model_id, operation_id)

    # ------------------------------------------------------------ job queue

    def claim_job(self, worker_id: str, lease_seconds: float) -> ClaimedJob | None:
        """Takes the oldest queued job, or a running one whose worker stopped renewing its
        lease. The conditional UPDATE is the lock: of two workers racing, one wins."""
        now = utcnow()
        claimable = or_(
            operations.c.status == JobStatus.QUEUED.value,
            and_(
                operations.c.status == JobStatus.RUNNING.value,
                operations.c.lease_expires_at < now,
            ),
        )
        for _ in range(5):
            with self._tx() as c:
                row = c.execute(
                    select(operations).where(claimable).order_by(operations.c.create_time).limit(1)
                ).first()
                if row is None:
                    return None
                taken = c.execute(
                    update(operations)
                    .where(operations.c.id == row.id, claimable)
                    .values(
                        status=JobStatus.RUNNING.value,
                        worker_id=worker_id,
                        lease_expires_at=now + timedelta(seconds=lease_seconds),
                        attempts=operations.c.attempts + 1,
                        update_time=now,
                    )
                ).rowcount
                if not taken:
                    continue
                c.execute(
                    update(tuned_models)
                    .where(
                        tuned_models.c.id == row.tuned_model_id, tuned_models.c.start_time.is_(None)
                    )
                    .values(start_time=now)
                )
                hp = c.execute(
                    select(
                        tuned_models.c.epoch_count,
                        tuned_models.c.batch_size,
                        tuned_models.c.learning_rate,
                    ).where(tuned_models.c.id == row.tuned_model_id)
                ).one()
            return ClaimedJob(
                operation_id=row.id,
                tuned_model_id=row.tuned_model_id,
                base_model=row.base_model,
                source_tuned_model=row.source_tuned_model,
                source_operation_id=row.source_operation_id,
                examples=[TuningExample(i, o) for i, o in json.loads(row.training_data)],
                hyperparameters=Hyperparameters(hp.epoch_count, hp.batch_size, hp.learning_rate),
                total_steps=row.total_steps,
                seed=row.seed,
                attempt=row.attempts + 1,
                cancel_requested=row.cancel_requested,
            )
        return None

    def _held(self, c: Connection, operation_id: str, worker_id: str):
        row = c.execute(
            select(operations.c.cancel_requested, operations.c.status).where(
                operations.c.id == operation_id, operations.c.worker_id == worker_id
            )
        ).first()
        if row is None or row.status != JobStatus.RUNNING.value:
            raise LeaseLost(operation_id)
        return row

    def renew_lease(self, operation_id: str, worker_id: str, lease_seconds: float) -> bool:
        """Extends the lease; returns whether cancellation was asked for."""
        now = utcnow()
        with self._tx() as c:
            row = self._held(c, operation_id, worker_id)
            c.execute(
                update(operations)
                .where(operations.c.id == operation_id)
                .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
            )
        return bool(row.cancel_requested)

    def release_lease(self, operation_id: str, worker_id: str, *, failed: bool = False) -> None:
        """Makes a running job claimable now. A worker shutting down hands its job back
        without using up an attempt; a `failed` attempt (an error the job's own code did not
        handle) keeps its count, so a job that always fails reaches the attempt limit."""
        refund = 0 if failed else 1
        with self._tx() as c:
            c.execute(
                update(operations)
                .where(
                    operations.c.id == operation_id,
                    operations.c.worker_id == worker_id,
                    operations.c.status == JobStatus.RUNNING.value,
                )
                .values(lease_expires_at=utcnow(), attempts=operations.c.attempts - refund)
            )

    def record_step(
        self,
        operation_id: str,
        worker_id: str,
        snapshot: TuningSnapshot,
        lease_seconds: float,
        tokens: int = 0,
    ) -> bool:
        """Stores a step's snapshot and progress and adds the `tokens` it trained on,
        renewing the lease; returns whether cancellation was asked for."""
        with self._tx() as c:
            row = self._held(c, operation_id, worker_id)
            replaced = c.execute(
                delete(snapshots).where(
                    snapshots.c.operation_id == operation_id, snapshots.c.step == snapshot.step
                )
            ).rowcount
            c.execute(
                insert(snapshots).values(
                    operation_id=operation_id,
                    step=snapshot.step,
                    epoch=snapshot.epoch,
                    mean_loss=snapshot.mean_loss,
                    compute_time=snapshot.compute_time,
                )
            )
            c.execute(
                update(operations)
                .where(operations.c.id == operation_id)
                .values(
                    completed_steps=snapshot.step,
                    # A step stored again trained on the same batch: its tokens count once.
                    trained_tokens=operations.c.trained_tokens + (0 if replaced else tokens),
                    lease_expires_at=snapshot.compute_time + timedelta(seconds=lease_seconds),
                    update_time=snapshot.compute_time,
                )
            )
        return bool(row.cancel_requested)

    def rewind(self, operation_id: str, worker_id: str, step: int, trained_tokens: int = 0) -> None:
        """Forgets progress past `step`, where a resumed job picks up from its checkpoint.

        `trained_tokens` is what steps 1..`step` trained on, and replaces the stored count:
        snapshots keep no per-step token count to subtract, but a job's batches are fixed by
        its seed, so the worker recomputes it (0 for a fresh start). Steps past `step` are
        trained again and count again, once."""
        with self._tx() as c:
            self._held(c, operation_id, worker_id)
            c.execute(
                delete(snapshots).where(
                    snapshots.c.operation_id == operation_id, snapshots.c.step > step
                )
            )
            c.execute(
                update(operations)
                .where(operations.c.id == operation_id)
                .values(completed_steps=step, trained_tokens=trained_tokens)
            )

    def finish_job(
        self, operation_id: str, worker_id: str, status: JobStatus, error: JobError | None
    ) -> None:
        with self._tx() as c:
            self._held(c, operation_id, worker_id)
            self._finish(c, operation_id, status, error, utcnow())

    def _finish(
        self,
        c: Connection,
        operation_id: str,
        status: JobStatus,
        error: JobError | None,
        now: datetime,
    ) -> None:
        c.execute(
            update(operations)
            .where(operations.c.id == operation_id)
            .values(
                status=status.value,
                error_code=error.code if error else None,
                error_message=error.message if error else None,
                lease_expires_at=None,
                update_time=now,
            )
        )
        model_id = c.execute(
            select(operations.c.tuned_model_id).where(operations.c.id == operation_id)
        ).scalar_one()
        state = TunedModelState.ACTIVE if status == JobStatus.SUCCEEDED else TunedModelState.FAILED
        c.execute(
            update(tuned_models)
            .where(tuned_models.c.id == model_id)
            .values(state=int(state), update_time=now, complete_time=now)
        )

    # ------------------------------------------------------------ metrics (read-only)

    def count_jobs_by_status(self) -> dict[JobStatus, int]:
        query = select(operations.c.status, func.count()).group_by(operations.c.status)
        with self.engine.connect() as c:
            return {JobStatus(status): count for status, count in c.execute(query)}

    def count_tuned_models_by_state(self) -> dict[TunedModelState, int]:
        query = select(tuned_models.c.state, func.count()).group_by(tuned_models.c.state)
        with self.engine.connect() as c:
            return {TunedModelState(state): count for state, count in c.execute(query)}

    def training_totals(self) -> tuple[int, int]:
        """(steps completed, tokens trained on), summed over every stored tuning job."""
        query = select(
            func.coalesce(func.sum(operations.c.completed_steps), 0),
            func.coalesce(func.sum(operations.c.trained_tokens), 0),
        )
        with self.engine.connect() as c:
            steps, tokens = c.execute(query).one()
        return int(steps), int(tokens)

    # ------------------------------------------------------------ imported adapters

    def import_tuned_model(
        self, model: TunedModel, operation_id: str, owner_email: str, quota: ProjectQuota
    ) -> None:
        """An ACTIVE tuned model from an imported adapter: the model, its owner's
        permission and a finished operation of no steps (the operation names the adapter's
        folder, as a tuning job's does), in one transaction."""
        with self._adding(model, owner_email, quota) as c:
            c.execute(
                insert(operations).values(
                    **_operation_row(model, operation_id, JobStatus.SUCCEEDED, "[]"),
                    total_steps=0,
                    seed=0,
                )
            )
