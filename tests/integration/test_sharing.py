"""Sharing a tuned model with a second user, step by step, over HTTP on a real server."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from conftest import LiveServer, wait_for_operation

EXAMPLES = [{"textInput": str(n), "output": str(n + 1)} for n in range(4)]
GENERATE = {"contents": [{"parts": [{"text": "1"}]}], "generationConfig": {"maxOutputTokens": 2}}


def create(client: httpx.Client, model_id: str, display_name: str = "") -> str:
    body = {
        "baseModel": "models/tiny-random",
        "displayName": display_name,
        "tuningTask": {
            "hyperparameters": {"epochCount": 1, "batchSize": 2},
            "trainingData": {"examples": {"examples": EXAMPLES}},
        },
    }
    reply = client.post("/v1beta/tunedModels", json=body, params={"tunedModelId": model_id})
    assert reply.status_code == 200, reply.text
    return reply.json()["name"]


def user(server: LiveServer, email: str) -> httpx.Client:
    key = server.new_api_key(email)
    return httpx.Client(base_url=server.url, headers={"x-goog-api-key": key}, timeout=120)


def listed(client: httpx.Client, text_filter: str = "") -> set[str]:
    reply = client.get("/v1beta/tunedModels", params={"filter": text_filter, "pageSize": 1000})
    assert reply.status_code == 200, reply.text
    return {m["name"] for m in reply.json().get("tunedModels", [])}


def attempts(client: httpx.Client, model: str, operation: str) -> dict[str, int]:
    """The status of every kind of call a second user might make on the model."""
    share = {"granteeType": "USER", "emailAddress": "owner@localhost", "role": "READER"}
    return {
        "get": client.get(f"/v1beta/{model}").status_code,
        "generate": client.post(f"/v1beta/{model}:generateContent", json=GENERATE).status_code,
        "operation": client.get(f"/v1/{operation}").status_code,
        "operations": client.get(f"/v1/{model}/operations").status_code,
        "patch": client.patch(f"/v1beta/{model}", json={"description": "mine now"}).status_code,
        "share": client.post(f"/v1beta/{model}/permissions", json=share).status_code,
        "permissions": client.get(f"/v1beta/{model}/permissions").status_code,
        "delete": client.delete(f"/v1beta/{model}").status_code,
    }


def test_second_user_is_locked_out_until_granted_and_after_revoked(server):
    with server.client() as owner, user(server, "bob@example.com") as bob:
        operation = create(owner, "alices-model", "secret project")
        model = "tunedModels/alices-model"
        wait_for_operation(owner, operation)

        assert set(attempts(bob, model, operation).values()) == {403}
        assert model not in listed(bob)
        reply = bob.get(f"/v1beta/{model}")
        assert reply.json()["error"]["message"] == (
            "You do not have permission to access tuned model tunedModels/alices-model"
        )

        grant = owner.post(
            f"/v1beta/{model}/permissions",
            json={"granteeType": "USER", "emailAddress": "Bob@Example.com", "role": "READER"},
        )
        assert grant.status_code == 200, grant.text
        assert grant.json()["emailAddress"] == "bob@example.com"
        as_reader = attempts(bob, model, operation)
        assert as_reader == {
            "get": 200,
            "generate": 200,
            "operation": 200,
            "operations": 200,
            "patch": 403,
            "share": 403,
            "permissions": 403,
            "delete": 403,
        }
        assert model in listed(bob)
        assert model in listed(bob, "readers:me")
        assert model not in listed(bob, "writers:me")

        assert owner.delete(f"/v1beta/{grant.json()['name']}").status_code == 200
        assert set(attempts(bob, model, operation).values()) == {403}
        assert model not in listed(bob)
        assert owner.get(f"/v1beta/{model}").status_code == 200


def test_permissions_crud_and_transfer_ownership(server):
    with server.client() as owner, user(server, "carl@example.com") as carl:
        create(owner, "transfer-me")
        model = "tunedModels/transfer-me"
        permissions = owner.get(f"/v1beta/{model}/permissions").json()["permissions"]
        assert [(p["granteeType"], p["emailAddress"], p["role"]) for p in permissions] == [
            ("USER", "owner@localhost", "OWNER")
        ]
        owner_grant = permissions[0]["name"]
        assert re.fullmatch(r"tunedModels/transfer-me/permissions/[a-z0-9]+", owner_grant)
        refused = owner.delete(f"/v1beta/{owner_grant}")
        assert refused.json()["error"]["status"] == "FAILED_PRECONDITION"

        created = owner.post(
            f"/v1beta/{model}/permissions",
            json={"granteeType": 1, "emailAddress": "carl@example.com", "role": 3},
        ).json()
        assert created["role"] == "READER"
        assert owner.get(f"/v1beta/{created['name']}").json() == created
        again = owner.post(
            f"/v1beta/{model}/permissions",
            json={"granteeType": "USER", "emailAddress": "carl@example.com", "role": "WRITER"},
        )
        assert again.status_code == 409
        no_mask = owner.patch(f"/v1beta/{created['name']}", json={"role": "WRITER"})
        assert no_mask.status_code == 400
        assert no_mask.json()["error"]["details"][0]["fieldViolations"][0]["field"] == "updateMask"
        patched = owner.patch(
            f"/v1beta/{created['name']}", json={"role": 2}, params={"updateMask": "role"}
        )
        assert patched.json()["role"] == "WRITER"

        # A writer shares and edits, but cannot hand out OWNER or delete.
        escalate = carl.post(
            f"/v1beta/{model}/permissions",
            json={"granteeType": "USER", "emailAddress": "carl@example.com", "role": "OWNER"},
        )
        assert escalate.status_code == 403
        assert carl.delete(f"/v1beta/{model}").status_code == 403

        transfer = owner.post(
            f"/v1beta/{model}:transferOwnership", json={"emailAddress": "carl@example.com"}
        )
        assert transfer.status_code == 200 and transfer.json() == {}
        roles = {
            p["emailAddress"]: p["role"]
            for p in carl.get(f"/v1beta/{model}/permissions").json()["permissions"]
        }
        assert roles == {"owner@localhost": "WRITER", "carl@example.com": "OWNER"}
        assert model in listed(carl, "owner:me")
        assert model not in listed(owner, "owner:me")
        assert model in listed(owner, "writers:me")
        assert owner.delete(f"/v1beta/{model}").status_code == 403
        assert carl.delete(f"/v1beta/{model}").status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"granteeType": "EVERYONE", "emailAddress": "a@b.c", "role": "READER"}, "emailAddress"),
        ({"granteeType": "EVERYONE", "role": "WRITER"}, "role"),
        ({"granteeType": "USER", "role": "READER"}, "emailAddress"),
        ({"granteeType": "USER", "emailAddress": "bob@example.com"}, "role"),
        (
            {"granteeType": "USER", "emailAddress": "ghost@example.com", "role": "READER"},
            "emailAddress",
        ),
        (
            {"granteeType": "GROUP", "emailAddress": "bob@example.com", "role": "READER"},
            "emailAddress",
        ),
        ({"granteeType": "USER", "emailAddress": "bob@example.com", "role": "ADMIN"}, "role"),
    ],
)
def test_bad_grants_name_the_field(server, body, field):
    server.new_api_key("bob@example.com")
    with server.client() as owner:
        if owner.get("/v1beta/tunedModels/grant-rules").status_code == 404:
            create(owner, "grant-rules")
        reply = owner.post("/v1beta/tunedModels/grant-rules/permissions", json=body)
    assert reply.status_code == 400, reply.text
    violations = reply.json()["error"]["details"][0]["fieldViolations"]
    assert field in {v["field"] for v in violations}


def test_shared_with_everyone_is_listed_only_on_request(server):
    with server.client() as owner, user(server, "dora@example.com") as dora:
        create(owner, "for-everyone", "public numbers")
        model = "tunedModels/for-everyone"
        everyone = {"granteeType": "EVERYONE", "role": "READER"}
        assert owner.post(f"/v1beta/{model}/permissions", json=everyone).status_code == 200
        assert dora.get(f"/v1beta/{model}").status_code == 200
        assert model not in listed(dora)
        assert model in listed(dora, "readers:everyone")
        assert model in listed(dora, "readers:everyone public")
        assert model not in listed(dora, "readers:everyone private")


def test_billing_project_must_be_one_of_the_callers(server):
    with user(server, "erin@example.com") as erin:
        denied = erin.get("/v1beta/tunedModels", headers={"x-goog-user-project": "user-owner"})
        assert denied.status_code == 403
        error = denied.json()["error"]
        assert error["details"][0]["reason"] == "USER_PROJECT_DENIED"
        server.admin("projects", "create", "erins-team")
        server.admin("projects", "add-member", "erins-team", "erin@example.com")
        allowed = erin.get("/v1beta/tunedModels", headers={"x-goog-user-project": "erins-team"})
        assert allowed.status_code == 200


def test_revoked_key_is_invalid(server):
    key = server.new_api_key("fay@example.com")
    headers = {"x-goog-api-key": key}
    assert httpx.get(f"{server.url}/v1beta/tunedModels", headers=headers).status_code == 200
    key_id = next(
        k["key_id"]
        for k in server.admin_json("keys", "list", "--user", "fay@example.com")
        if k["status"] == "active"
    )
    server.admin("keys", "revoke", key_id)
    reply = httpx.get(f"{server.url}/v1beta/tunedModels", headers=headers)
    assert reply.status_code == 400
    assert reply.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    listing = server.admin("keys", "list")
    assert key not in listing  # keys are shown once, never listed


def test_expired_access_token_is_401(server):
    server.new_api_key("gus@example.com")
    token = server.admin("auth", "print-access-token", "--user", "gus@example.com", "--ttl", "1")
    time.sleep(2.5)
    reply = httpx.get(
        f"{server.url}/v1beta/tunedModels", headers={"Authorization": f"Bearer {token}"}
    )
    assert reply.status_code == 401
    assert reply.json()["error"]["status"] == "UNAUTHENTICATED"
    assert 'error="invalid_token"' in reply.headers["www-authenticate"]
