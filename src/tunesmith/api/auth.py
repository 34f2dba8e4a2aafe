"""Who is calling. Every request's credentials are checked here, and nowhere else.

Credentials are API keys (stored only as hashes), access tokens this server signs, and,
when configured, access tokens from an external OpenID Connect provider. On first start
the data dir gets an owner user, its API key (written once to an owner-only file so the
CLI can print it) and the key that signs access tokens.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from pathlib import Path

import jwt
from fastapi import Request

from tunesmith.config import Settings
from tunesmith.domain.access import SCOPE_PREFIX, TUNING_SCOPE, Principal, require_scope
from tunesmith.domain.errors import Code, ServiceError
from tunesmith.domain.quotas import RateLimiter
from tunesmith.store.repository import Repository

__all__ = ["Credentials", "Principal", "authenticate", "authenticate_reader"]

OWNER_ID = "owner"
OWNER_EMAIL = "owner@localhost"
ISSUER = "tunesmith"
KEY_PREFIX = "ts-"


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


def unknown_identity(email: str) -> ServiceError:
    return ServiceError(
        Code.PERMISSION_DENIED,
        f"The identity provider vouched for {email or 'a caller without an email'}, "
        "who is not a Tunesmith user. An admin adds users with `tunesmith users create`.",
        reason="USER_NOT_REGISTERED",
    )


def project_denied(project: str) -> ServiceError:
    return ServiceError(
        Code.PERMISSION_DENIED,
        f"Caller does not have required permission to use project {project}. An admin can "
        f"add the caller with `tunesmith projects add-member {project} EMAIL`.",
        reason="USER_PROJECT_DENIED",
    )


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> tuple[str, str]:
    """A key id (shown in lists, used to revoke) and the secret key itself."""
    return secrets.token_hex(6), KEY_PREFIX + secrets.token_urlsafe(30)


def write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value)


def normalize_scopes(claim: str | list[str] | None) -> frozenset[str]:
    """Space-separated or listed scopes; short names (`generative-language.tuning`) get the
    googleapis prefix, so an identity provider may use either."""
    names = claim.split() if isinstance(claim, str) else list(claim or [])
    return frozenset(n if n.startswith("https://") else SCOPE_PREFIX + n for n in names)


class Credentials:
    def __init__(self, settings: Settings, repo: Repository) -> None:
        self.settings, self.repo = settings, repo
        self._jwks: jwt.PyJWKClient | None = None

    @property
    def owner_key_path(self) -> Path:
        return self.settings.secrets_dir / "owner-api-key"

    @property
    def signing_key_path(self) -> Path:
        return self.settings.secrets_dir / "token-signing-key"

    def bootstrap(self) -> bool:
        """Creates the owner user, its project and API key, and the signing key, where
        missing; True if it created any."""
        self.repo.ensure_principal(OWNER_ID, OWNER_EMAIL)
        owner = self.repo.account(OWNER_ID)
        assert owner is not None
        created = False
        if owner.default_project is None:
            self.repo.set_default_project(OWNER_ID, new_project_number(), "user-owner")
            owner = self.repo.account(OWNER_ID)
            assert owner is not None
        if not self.signing_key_path.exists():
            write_secret(self.signing_key_path, secrets.token_urlsafe(48))
            created = True
        if not self.owner_key_path.exists():
            key_id, key = new_api_key()
            self.repo.add_api_key(OWNER_ID, hash_key(key), key_id, owner.default_project, "owner")
            write_secret(self.owner_key_path, key)
            created = True
        return created

    def owner_api_key(self) -> str:
        return self.owner_key_path.read_text().strip()

    def _signing_key(self) -> str:
        return self.signing_key_path.read_text().strip()

    def issue_access_token(
        self, principal_id: str, scopes: list[str] | None = None, ttl: int | None = None
    ) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": principal_id,
            "scope": " ".join(scopes or [TUNING_SCOPE]),
            "iat": now,
            "exp": now + (ttl or self.settings.access_token_ttl_seconds),
        }
        return jwt.encode(claims, self._signing_key(), algorithm="HS256")

    # ------------------------------------------------------------ verification

    def from_api_key(self, key: str) -> tuple[str, frozenset[str] | None, int | None]:
        found = self.repo.identity_for_key(hash_key(key))
        if found is None:
            raise bad_api_key()
        principal_id, project = found
        return principal_id, None, project

    def from_access_token(self, token: str) -> tuple[str, frozenset[str] | None, int | None]:
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as error:
            raise bad_token() from error
        if self.settings.oidc_issuer and unverified.get("iss") == self.settings.oidc_issuer:
            return self._from_oidc_token(token)
        try:
            claims = jwt.decode(token, self._signing_key(), algorithms=["HS256"], issuer=ISSUER)
        except jwt.PyJWTError as error:
            raise bad_token() from error
        return str(claims.get("sub")), normalize_scopes(claims.get("scope")), None

    def _from_oidc_token(self, token: str) -> tuple[str, frozenset[str] | None, int | None]:
        """A token from the configured OpenID Connect provider, checked against its JWKS;
        its `email` claim must name a Tunesmith user."""
        if self._jwks is None:
            self._jwks = jwt.PyJWKClient(self.settings.oidc_jwks_url, cache_keys=True)
        try:
            signing_key = self._jwks.get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token,
                signing_key.key,
                algorithms=["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"],
                issuer=self.settings.oidc_issuer,
                audience=self.settings.oidc_audience or None,
                options={"verify_aud": bool(self.settings.oidc_audience)},
            )
        except jwt.PyJWTError as error:
            raise bad_token() from error
        email = str(claims.get("email", "")).lower()
        account = self.repo.account(email) if email else None
        if account is None or account.kind != "user" or claims.get("email_verified") is False:
            raise unknown_identity(email)
        return account.id, normalize_scopes(claims.get("scope") or claims.get("scp")), None

    def principal(
        self,
        principal_id: str,
        scopes: frozenset[str] | None,
        key_project: int | None,
        requested_project: str | None,
    ) -> Principal:
        """The caller with its groups and projects, billed to the project it asked for (it
        must be a member), else its key's project, else its own. A project id this server
        does not know is not an error: the tutorials send a placeholder (`my-project-id`),
        and billing such a request to the caller's own project gives no way around a quota."""
        found = self.repo.membership(principal_id)
        if found is None or found[0].kind != "user":
            raise bad_token() if scopes is not None else bad_api_key()
        account, groups, projects = found
        project = key_project or account.default_project
        if requested_project:
            resolved = self.repo.project(requested_project)
            if resolved is not None:
                if resolved[0] not in projects:
                    raise project_denied(requested_project)
                project = resolved[0]
        return Principal(account.id, account.email, scopes, project, groups, projects)


def new_project_number() -> int:
    """Twelve digits, like a Google Cloud project number."""
    return 100_000_000_000 + secrets.randbelow(900_000_000_000)


def authenticate(request: Request) -> Principal:
    """FastAPI dependency of methods that change things: the caller, whose token (if it
    came with one) must carry a full tuning scope. Dependencies run before the body is
    read, so a refused caller learns nothing about its request."""
    principal = _identify(request)
    require_scope(principal, read_only=False)
    return principal


def authenticate_reader(request: Request) -> Principal:
    """FastAPI dependency of methods that only read or generate: the readonly scope will do."""
    principal = _identify(request)
    require_scope(principal, read_only=True)
    return principal


def _identify(request: Request) -> Principal:
    """The calling principal, or the hosted service's error for the kind of credential
    that failed. Also where the per-principal request rate is held."""
    credentials: Credentials = request.app.state.credentials
    key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    token = token.strip() if scheme.lower() == "bearer" else ""
    token = token or request.query_params.get("access_token", "")
    if key:
        identity = credentials.from_api_key(key)
    elif token:
        identity = credentials.from_access_token(token)
    else:
        raise no_credentials()
    principal = credentials.principal(*identity, request.headers.get("x-goog-user-project"))
    limiter: RateLimiter = request.app.state.rate_limiter
    limiter.admit(principal.id)
    return principal
