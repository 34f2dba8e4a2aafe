"""Every read and write of the database, returning domain objects: one class made of the
store's parts, each of which also stands alone (a worker needs only the job queue)."""

from __future__ import annotations

from tunesmith.store.accounts import AccountStore
from tunesmith.store.jobs import JobQueue
from tunesmith.store.models import ModelStore


class Repository(AccountStore, ModelStore, JobQueue):
    pass
