"""Access tokens from an external OpenID Connect provider: a key pair made here, its JWKS
served on loopback, and a real server configured with the issuer and JWKS URL."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import LiveServer, tiny_env

ISSUER = "https://idp.example.test"
AUDIENCE = "tunesmith"


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def idp_key() -> rsa.RSAPrivateKey:
    return rsa_key()


@pytest.fixture(scope="module")
def jwks_url(idp_key) -> Iterator[str]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(idp_key.public_key()))
    body = json.dumps({"keys": [{**jwk, "kid": "test-key", "use": "sig", "alg": "RS256"}]})

    class Jwks(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *_args) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/jwks.json"
    httpd.shutdown()


@pytest.fixture(scope="module")
def oidc_server(tiny_model_dir, tmp_path_factory, jwks_url) -> Iterator[LiveServer]:
    env = {
        **tiny_env(tiny_model_dir),
        "TUNESMITH_OIDC_ISSUER": ISSUER,
        "TUNESMITH_OIDC_JWKS_URL": jwks_url,
        "TUNESMITH_OIDC_AUDIENCE": AUDIENCE,
    }
    live = LiveServer(tmp_path_factory.mktemp("oidc") / "data", env).start()
    live.admin("users", "create", "ivy@example.com")
    yield live
    live.stop()


def id_token(key: rsa.RSAPrivateKey, **claims) -> str:
    now = int(time.time())
    payload = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "idp-user-1",
        "email": "ivy@example.com",
        "email_verified": True,
        "scope": "openid email generative-language.tuning",
        "iat": now,
        "exp": now + 600,
        **claims,
    }
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": "test-key"})


def call(server: LiveServer, token: str, method: str = "GET") -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    if method == "GET":
        return httpx.get(f"{server.url}/v1beta/tunedModels", headers=headers)
    return httpx.post(f"{server.url}/v1beta/tunedModels", headers=headers, json={})


def test_provider_token_acts_as_the_user(oidc_server, idp_key):
    assert call(oidc_server, id_token(idp_key)).status_code == 200
    # Full scope: a create gets past authentication to validation of its (empty) body.
    assert call(oidc_server, id_token(idp_key), "POST").status_code == 400


def test_provider_scopes_are_honoured(oidc_server, idp_key):
    token = id_token(idp_key, scope="openid generative-language.tuning.readonly")
    assert call(oidc_server, token).status_code == 200
    refused = call(oidc_server, token, "POST")
    assert refused.status_code == 403
    assert refused.json()["error"]["message"] == "Request had insufficient authentication scopes."


@pytest.mark.parametrize(
    ("claims", "status"),
    [
        ({"email": "stranger@example.com"}, 403),
        ({"email_verified": False}, 403),
        ({"aud": "someone-else"}, 401),
        ({"exp": int(time.time()) - 60}, 401),
    ],
)
def test_bad_provider_tokens_are_refused(oidc_server, idp_key, claims, status):
    reply = call(oidc_server, id_token(idp_key, **claims))
    assert reply.status_code == status, reply.text
    assert reply.json()["error"]["status"] == (
        "PERMISSION_DENIED" if status == 403 else "UNAUTHENTICATED"
    )


def test_token_signed_by_another_key_is_refused(oidc_server):
    reply = call(oidc_server, id_token(rsa_key()))
    assert reply.status_code == 401
