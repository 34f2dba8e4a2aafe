"""Engine creation and schema migration (Alembic, applied on start).

SQLite is the embedded default, PostgreSQL the scale-out store. On SQLite every write
transaction starts with BEGIN IMMEDIATE, so a transaction that reads and then writes (a
quota count, then the insert it allows) holds the write lock from its first read, across
threads and processes alike; reads begin deferred and never block a writer (WAL)."""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, make_url

MIGRATIONS = Path(__file__).parent / "migrations"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        _owner_only_database_file(make_url(url).database)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_pre_ping=True)


def writer(engine: Engine) -> Engine:
    """`engine` for transactions that write (BEGIN IMMEDIATE on SQLite)."""
    return engine.execution_options(tunesmith_write=True)


def _owner_only_database_file(path: str | None) -> None:
    """The database holds key hashes and people's training data: owner-only, like the
    secrets beside it. SQLite gives its -wal and -shm files the same mode as this one."""
    if not path or path == ":memory:":
        return
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    os.chmod(path, 0o600)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # The driver's own implicit transactions off: _sqlite_begin says when they begin.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL lets the API read while a worker writes snapshots; NORMAL sync is safe under WAL.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    write = connection.get_execution_options().get("tunesmith_write")
    connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


MIGRATION_LOCK = 0x7475_6E65  # any constant: the advisory lock that serialises migrations


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision; of several processes starting at once on
    one PostgreSQL, one migrates while the others wait, then find nothing to do."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with writer(engine).begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
