"""`tunesmith auth ...`: credentials, managed directly in the local data dir."""

from __future__ import annotations

import typer

from tunesmith.cli.common import local_settings

auth_app = typer.Typer(help="Credentials for the local server's users.")


@auth_app.command("print-api-key")
def print_api_key() -> None:
    """Print the owner's API key (what the SDKs take as api_key)."""
    typer.echo(_credentials().owner_api_key())


@auth_app.command("print-access-token")
def print_access_token(
    ttl: int = typer.Option(3600, help="Seconds until the token expires"),
) -> None:
    """Print a signed, expiring access token for the owner (Authorization: Bearer ...)."""
    typer.echo(_credentials().issue_access_token(ttl=ttl))


def _credentials():
    from tunesmith.api.auth import Credentials
    from tunesmith.store.db import make_engine, migrate
    from tunesmith.store.repository import Repository

    settings = local_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.sqlalchemy_url)
    migrate(engine)
    credentials = Credentials(settings, Repository(engine))
    credentials.bootstrap()
    return credentials
