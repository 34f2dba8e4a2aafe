"""Admin commands: users, groups, projects, API keys and access tokens. They act directly
on the local data dir (run them where the server's data lives), never over HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import typer
from rich.console import Console
from rich.table import Table

from tunesmith.cli.common import JSON_OPTION, local_settings
from tunesmith.domain.errors import ServiceError

auth_app = typer.Typer(help="API keys and access tokens.", no_args_is_help=True)
users_app = typer.Typer(help="Users (people, identified by email).", no_args_is_help=True)
groups_app = typer.Typer(help="Groups of users, to share models with.", no_args_is_help=True)
projects_app = typer.Typer(help="Projects: where requests are billed and quotas counted.")
keys_app = typer.Typer(help="API keys (stored only as hashes; shown once).", no_args_is_help=True)

console = Console()
T = TypeVar("T")


def _accounts():
    from tunesmith.api.accounts import Accounts
    from tunesmith.api.auth import Credentials
    from tunesmith.store.db import make_engine, migrate
    from tunesmith.store.repository import Repository

    settings = local_settings()
    settings.make_data_dir()
    engine = make_engine(settings.sqlalchemy_url)
    migrate(engine)
    repo = Repository(engine)
    credentials = Credentials(settings, repo)
    credentials.bootstrap()
    return Accounts(credentials, repo)


@contextmanager
def _clear_errors() -> Iterator[None]:
    """A refused command prints the reason, not a traceback."""
    try:
        yield
    except ServiceError as error:
        console.print(f"[red]error:[/red] {error.message}")
        for violation in error.violations:
            if violation.description != error.message:
                console.print(f"  {violation.field}: {violation.description}")
        raise typer.Exit(1) from None


def _run(action: Callable[..., T], *args) -> T:
    with _clear_errors():
        return action(*args)


def _table(title: str, columns: list[str], rows: list[list[str]], as_json: bool) -> None:
    if as_json:
        keys = [c.lower().replace(" ", "_") for c in columns]
        typer.echo(json.dumps([dict(zip(keys, r, strict=True)) for r in rows], indent=2))
        return
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    console.print(table)


# ---------------------------------------------------------------- auth


@auth_app.command("print-api-key")
def print_api_key() -> None:
    """Print the owner's API key (what the SDKs take as api_key)."""
    typer.echo(_accounts().credentials.owner_api_key())


@auth_app.command("print-access-token")
def print_access_token(
    user: str = typer.Option("owner@localhost", help="Email of the user the token is for"),
    scope: str = typer.Option("tuning", help="tuning (full) or readonly (read and generate)"),
    ttl: int = typer.Option(3600, help="Seconds until the token expires"),
) -> None:
    """Print a signed, expiring access token (send it as Authorization: Bearer ...)."""
    typer.echo(_run(_accounts().access_token, user, scope, ttl))


# ---------------------------------------------------------------- users and groups


@users_app.command("create")
def create_user(email: str, display_name: str = typer.Option("", help="A name to show")) -> None:
    """Add a user, with a personal project their requests are billed to."""
    account = _run(_accounts().create_user, email, display_name)
    typer.echo(f"created user {account.email} (project {account.default_project})")


@users_app.command("list")
def list_users(as_json: bool = JSON_OPTION) -> None:
    rows = [
        [a.email, a.id, a.display_name, str(a.default_project or "")]
        for a in _accounts().repo.accounts("user")
    ]
    _table("Users", ["Email", "Id", "Display name", "Project"], rows, as_json)


@groups_app.command("create")
def create_group(email: str, display_name: str = typer.Option("", help="A name to show")) -> None:
    """Add a group; share a model with it by its email and granteeType GROUP."""
    account = _run(_accounts().create_group, email, display_name)
    typer.echo(f"created group {account.email}")


@groups_app.command("add-member")
def add_group_member(group: str, user: str) -> None:
    _run(_accounts().add_member, group, user)
    typer.echo(f"{user} is a member of {group}")


@groups_app.command("remove-member")
def remove_group_member(group: str, user: str) -> None:
    _run(_accounts().remove_member, group, user)
    typer.echo(f"{user} is no longer a member of {group}")


@groups_app.command("list")
def list_groups(as_json: bool = JSON_OPTION) -> None:
    accounts = _accounts()
    rows = [
        [g.email, g.display_name, ", ".join(accounts.repo.group_members(g.id))]
        for g in accounts.repo.accounts("group")
    ]
    _table("Groups", ["Email", "Display name", "Members"], rows, as_json)


# ---------------------------------------------------------------- projects


@projects_app.command("create")
def create_project(
    project_id: str, number: int = typer.Option(0, help="Project number [default: random]")
) -> None:
    """Add a shared project; members name it in x-goog-user-project to be billed to it."""
    created = _run(_accounts().create_project, project_id, number or None)
    typer.echo(f"created project {project_id} ({created})")


@projects_app.command("add-member")
def add_project_member(project: str, user: str) -> None:
    _run(_accounts().add_project_member, project, user)
    typer.echo(f"{user} is a member of project {project}")


@projects_app.command("list")
def list_projects(as_json: bool = JSON_OPTION) -> None:
    rows = [
        [project_id, str(number), ", ".join(members)]
        for number, project_id, members in _accounts().repo.list_projects()
    ]
    _table("Projects", ["Id", "Number", "Members"], rows, as_json)


# ---------------------------------------------------------------- API keys


@keys_app.command("create")
def create_key(
    user: str = typer.Option(..., help="Email of the user the key acts as"),
    project: str = typer.Option("", help="Project to bill [default: the user's own]"),
    name: str = typer.Option("", help="A label, to tell keys apart"),
) -> None:
    """Create an API key. It is printed once and stored only as a hash."""
    key_id, key = _run(_accounts().create_api_key, user, project or None, name)
    console.print(f"key id {key_id} for {user}; the key (shown only now):", style="dim")
    typer.echo(key)


@keys_app.command("list")
def list_keys(
    user: str = typer.Option("", help="Only this user's keys"), as_json: bool = JSON_OPTION
) -> None:
    keys = _run(_accounts().api_keys, user or None)
    rows = [
        [
            k.key_id,
            k.email,
            k.display_name,
            str(k.project_number or ""),
            k.create_time.isoformat(timespec="seconds"),
            "revoked" if k.revoked else "active",
        ]
        for k in keys
    ]
    _table("API keys", ["Key id", "User", "Name", "Project", "Created", "Status"], rows, as_json)


@keys_app.command("revoke")
def revoke_key(key_id: str) -> None:
    """Revoke a key at once; requests with it then get API_KEY_INVALID."""
    _run(_accounts().revoke_api_key, key_id)
    typer.echo(f"revoked {key_id}")
