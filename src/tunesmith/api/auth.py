"""Who is calling: API keys and signed access tokens. Every request's check is here.

On first start the data dir gets an owner principal, its API key (the database keeps only
its hash; the key itself is written once to an owner-only file so the CLI can print it)
and the key that signs access tokens.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
from fastapi import Request

from tunesmith.config import Settings
from tunesmith.domain.errors import Code, ServiceError
from tunesmith.store.repository import Repository

OWNER_ID = "owner"
OWNER_EMAIL = "owner@localhost"
TUNING_SCOPE = "https://www.googleapis.com/auth/generative-language.tuning"
ISSUER = "tunesmith"


def no_credentials() -> ServiceError:
    return ServiceError(
        Code.PERMISSION_DENIED,
        "Method doesn't allow unregistered callers (callers without established identity). "
        "Please use API Key or other form of API consumer identity to call this API.",
    )


def bad_api_key() -> ServiceError:
    return ServiceError(
        Code.INVALID_ARGUMENT,
        "API key not valid. Please pass a valid API key.",
        reason="API_KEY_INVALID",
    )


def bad_token() -> ServiceError:
    return ServiceError(
        Code.UNAUTHENTICATED,
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
        "cookie or other valid authentication credential.",
        reason="ACCESS_TOKEN_TYPE_UNSUPPORTED",
        headers={"WWW-Authenticate": 'Bearer realm="tunesmith", error="invalid_token"'},
    )


@dataclass(frozen=True)
class Principal:
    id: str
    email: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value)


class Credentials:
    def __init__(self, settings: Settings, repo: Repository) -> None:
        self.settings, self.repo = settings, repo

    @property
    def owner_key_path(self) -> Path:
        return self.settings.secrets_dir / "owner-api-key"

    @property
    def signing_key_path(self) -> Path:
        return self.settings.secrets_dir / "token-signing-key"

    def bootstrap(self) -> bool:
        """Creates the owner, its API key and the signing key if missing; True if it did."""
        self.repo.ensure_principal(OWNER_ID, OWNER_EMAIL)
        created = False
        if not self.signing_key_path.exists():
            _write_secret(self.signing_key_path, secrets.token_urlsafe(48))
            created = True
        if not self.owner_key_path.exists():
            key = "ts-" + secrets.token_urlsafe(30)
            self.repo.add_api_key(OWNER_ID, hash_key(key))
            _write_secret(self.owner_key_path, key)
            created = True
        return created

    def owner_api_key(self) -> str:
        return self.owner_key_path.read_text().strip()

    def _signing_key(self) -> str:
        return self.signing_key_path.read_text().strip()

    def issue_access_token(self, principal_id: str = OWNER_ID, ttl: int | None = None) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": principal_id,
            "scope": TUNING_SCOPE,
            "iat": now,
            "exp": now + (ttl or self.settings.access_token_ttl_seconds),
        }
        return jwt.encode(claims, self._signing_key(), algorithm="HS256")

    def from_api_key(self, key: str) -> Principal:
        found = self.repo.principal_for_key(hash_key(key))
        if found is None:
            raise bad_api_key()
        return Principal(*found)

    def from_access_token(self, token: str) -> Principal:
        try:
            claims = jwt.decode(token, self._signing_key(), algorithms=["HS256"], issuer=ISSUER)
        except jwt.PyJWTError as error:
            raise bad_token() from error
        found = self.repo.principal(str(claims.get("sub")))
        if found is None:
            raise bad_token()
        return Principal(*found)


def authenticate(request: Request) -> Principal:
    """FastAPI dependency: the calling principal, or the hosted service's error for the
    kind of credential that failed."""
    credentials: Credentials = request.app.state.credentials
    key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
    if key:
        return credentials.from_api_key(key)
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return credentials.from_access_token(token.strip())
    if token := request.query_params.get("access_token"):
        return credentials.from_access_token(token)
    raise no_credentials()
