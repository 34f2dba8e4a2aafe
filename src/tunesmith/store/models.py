"""Tuned models, their grants and reader projects."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from tunesmith.domain import names
from tunesmith.domain.access import (
    AccessFacts,
    Account,
    GranteeType,
    ListScope,
    Permission,
    Role,
)
from tunesmith.domain.errors import Code, ServiceError
from tunesmith.domain.quotas import ProjectQuota
from tunesmith.domain.resources import (
    EvaluationPlan,
    JobStatus,
    TunedModel,
    TunedModelState,
    TuningExample,
    TuningSnapshot,
)
from tunesmith.domain.validation import TunedModelUpdate
from tunesmith.store.rows import (
    ACTIVE_JOBS,
    StoreBase,
    like_literal,
    operation_row,
    permission_from_row,
    snapshot_from_row,
    tuned_model_from_row,
    tuned_model_row,
    utcnow,
    visible_in_list,
)
from tunesmith.store.tables import (
    epoch_checkpoints,
    evaluations,
    operations,
    permissions,
    projects,
    reader_projects,
    snapshots,
    tuned_models,
)


class ModelStore(StoreBase):
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
        source_served_epoch: int | None = None,
        plan: EvaluationPlan | None = None,
    ) -> None:
        """The model, its owner's permission and its queued job, in one transaction: all or
        nothing. The project's quotas are checked inside the same transaction.
        `source_operation_id` and `source_served_epoch` bind the exact adapter a job from a
        tuned model starts from;
        `plan` is how the job evaluates and which checkpoint it serves."""
        training_data = json.dumps([[e.text_input, e.output] for e in examples])
        plan = plan or EvaluationPlan()
        validation = [[e.text_input, e.output] for e in plan.validation]
        with self._adding(model, owner_email, quota) as c:
            c.execute(
                insert(operations).values(
                    **operation_row(model, operation_id, JobStatus.QUEUED, training_data),
                    total_steps=total_steps,
                    seed=seed,
                    source_operation_id=source_operation_id,
                    source_served_epoch=source_served_epoch,
                    validation_data=json.dumps(validation) if validation else None,
                    evaluation_interval_steps=plan.interval_steps,
                    checkpoint_choice=int(plan.choice),
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
                c.execute(insert(tuned_models).values(**tuned_model_row(model)))
                self._grant_owner(c, model, owner_email)
                self._set_reader_projects(c, model.id, model.reader_project_numbers)
                yield c
        except IntegrityError as error:
            raise ServiceError(
                Code.ALREADY_EXISTS, f"Tuned model {model.name} already exists."
            ) from error

    def _check_quota(self, c: Connection, project: int | None, quota: ProjectQuota) -> None:
        """Counts under a lock of the project's row (PostgreSQL; SQLite's write transaction
        holds the whole database), so API replicas creating at once stay within quota."""
        if project is None:
            return
        c.execute(select(projects.c.number).where(projects.c.number == project).with_for_update())
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
            snaps[row.tuned_model_id].append(snapshot_from_row(row))
        readers: dict[str, list[int]] = {i: [] for i in rows}
        for row in c.execute(
            select(reader_projects)
            .where(reader_projects.c.tuned_model_id.in_(list(rows)))
            .order_by(reader_projects.c.project_number)
        ):
            readers[row.tuned_model_id].append(row.project_number)
        return [tuned_model_from_row(rows[i], snaps[i], readers[i]) for i in ids if i in rows]

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
            return AccessFacts(owner, [permission_from_row(g) for g in grants], frozenset(readers))

    def list_tuned_models(
        self, offset: int, limit: int, scope: ListScope, text: str = ""
    ) -> tuple[list[TunedModel], bool]:
        """A page in creation order of the models `scope` allows, and whether more follow;
        `text` matches display name or description, case-insensitively, every word."""
        query = (
            select(tuned_models.c.id)
            .where(visible_in_list(scope))
            .order_by(tuned_models.c.create_time, tuned_models.c.id)
        )
        for word in text.split():
            pattern = f"%{like_literal(word.lower())}%"
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
            c.execute(delete(evaluations).where(evaluations.c.operation_id.in_(op_ids)))
            c.execute(delete(epoch_checkpoints).where(epoch_checkpoints.c.operation_id.in_(op_ids)))
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
        return [permission_from_row(r) for r in rows[:limit]], len(rows) > limit

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

    def count_tuned_models_by_state(self) -> dict[TunedModelState, int]:
        query = select(tuned_models.c.state, func.count()).group_by(tuned_models.c.state)
        with self.engine.connect() as c:
            return {TunedModelState(state): count for state, count in c.execute(query)}

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
                    **operation_row(model, operation_id, JobStatus.SUCCEEDED, "[]"),
                    total_steps=0,
                    seed=0,
                )
            )
