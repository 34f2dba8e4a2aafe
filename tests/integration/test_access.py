"""Every role x method x scope x grantee combination, through HTTP against a real server.

The expected outcomes are written out here from the reference (§1.7: readers use, writers
also edit and share, owners also delete; the readonly scope only reads and generates), not
derived from the server's own rules."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import jwt
import pytest

from conftest import LiveServer, tiny_env, wait_for_operation

EXAMPLES = [{"textInput": str(n), "output": str(n + 1)} for n in range(4)]
OWNER = "owner@localhost"
DENIED = "You do not have permission to access tuned model tunedModels/"
SCOPE_DENIED = "Request had insufficient authentication scopes."
FULL, READONLY, NO_SCOPE = "tuning", "readonly", "none"
CREDENTIALS = ["api-key", FULL, READONLY, NO_SCOPE]


@dataclass(frozen=True)
class Setup:
    """How a caller comes to hold a role on the model (or none)."""

    name: str
    caller: str
    role: str | None  # the role the grant gives
    grantee: str  # USER, GROUP, EVERYONE, PROJECT or NONE


SETUPS = [
    Setup("no-grant", "eve@example.com", None, "NONE"),
    Setup("user-reader", "uma@example.com", "READER", "USER"),
    Setup("user-writer", "uma@example.com", "WRITER", "USER"),
    Setup("user-owner", "uma@example.com", "OWNER", "USER"),
    Setup("group-reader", "gil@example.com", "READER", "GROUP"),
    Setup("group-writer", "gil@example.com", "WRITER", "GROUP"),
    Setup("group-owner", "gil@example.com", "OWNER", "GROUP"),
    Setup("everyone-reader", "eve@example.com", "READER", "EVERYONE"),
    Setup("project-reader", "pia@example.com", "READER", "PROJECT"),
]
RANK = {"OWNER": 1, "WRITER": 2, "READER": 3}


@dataclass(frozen=True)
class Method:
    name: str
    least_role: str
    read_only_ok: bool
    call: Callable[[httpx.Client, World], httpx.Response]


@dataclass
class World:
    server: LiveServer
    owner: httpx.Client
    model: str  # an ACTIVE tuned model of the owner
    operation: str
    project_number: str
    keys: dict[str, str]
    signing_key: str
    tokens: dict[tuple[str, str], str] = field(default_factory=dict)


def create(client: httpx.Client, model_id: str | None = None) -> dict:
    body = {
        "baseModel": "models/tiny-random",
        "tuningTask": {
            "hyperparameters": {"epochCount": 1, "batchSize": 2},
            "trainingData": {"examples": {"examples": EXAMPLES}},
        },
    }
    params = {"tunedModelId": model_id} if model_id else None
    reply = client.post("/v1beta/tunedModels", json=body, params=params)
    assert reply.status_code == 200, reply.text
    return reply.json()


@pytest.fixture(scope="module")
def world(tiny_model_dir, tmp_path_factory) -> Iterator[World]:
    live = LiveServer(tmp_path_factory.mktemp("access") / "data", tiny_env(tiny_model_dir))
    live.start()
    keys = {email: live.new_api_key(email) for email in sorted({s.caller for s in SETUPS})}
    live.admin("users", "create", "nobody@example.com")  # only ever granted, never calls
    live.admin("groups", "create", "team@example.com")
    live.admin("groups", "add-member", "team@example.com", "gil@example.com")
    live.admin("projects", "create", "readers-proj")
    live.admin("projects", "add-member", "readers-proj", "pia@example.com")
    projects = {p["id"]: p["number"] for p in live.admin_json("projects", "list")}
    signing_key = (live.data_dir / "secrets" / "token-signing-key").read_text().strip()
    with live.client() as owner:
        operation = create(owner, "shared-model")["name"]
        assert "error" not in wait_for_operation(owner, operation)
        yield World(
            live,
            owner,
            "tunedModels/shared-model",
            operation,
            projects["readers-proj"],
            keys,
            signing_key,
        )
    live.stop()


def grant(world: World, setup: Setup, model: str) -> Callable[[], None]:
    """Gives the setup's role on `model`; returns how to take it back."""
    owner = world.owner
    if setup.grantee == "NONE":
        return lambda: None
    if setup.grantee == "PROJECT":
        body = {"readerProjectNumbers": [world.project_number]}
        patched = owner.patch(
            f"/v1beta/{model}", json=body, params={"updateMask": "readerProjectNumbers"}
        )
        assert patched.status_code == 200, patched.text
        return lambda: owner.patch(
            f"/v1beta/{model}",
            json={"readerProjectNumbers": []},
            params={"updateMask": "readerProjectNumbers"},
        ).raise_for_status()
    body = {"granteeType": setup.grantee, "role": setup.role}
    if setup.grantee == "USER":
        body["emailAddress"] = setup.caller
    if setup.grantee == "GROUP":
        body["emailAddress"] = "team@example.com"
    created = owner.post(f"/v1beta/{model}/permissions", json=body)
    assert created.status_code == 200, created.text
    name = created.json()["name"]
    return lambda: owner.delete(f"/v1beta/{name}").raise_for_status()


def token(world: World, email: str, credential: str) -> str:
    if (email, credential) in world.tokens:
        return world.tokens[email, credential]
    if credential == NO_SCOPE:
        # A validly signed token whose scopes grant nothing here, as an OAuth client that
        # asked only for sign-in scopes would hold.
        users = world.server.admin_json("users", "list")
        sub = next(u["id"] for u in users if u["email"] == email)
        now = int(time.time())
        claims = {"iss": "tunesmith", "sub": sub, "scope": "openid email", "iat": now}
        value = jwt.encode({**claims, "exp": now + 3600}, world.signing_key, algorithm="HS256")
    else:
        value = world.server.admin(
            "auth", "print-access-token", "--user", email, "--scope", credential
        )
    world.tokens[email, credential] = value
    return value


def caller_client(world: World, setup: Setup, credential: str) -> httpx.Client:
    if credential == "api-key":
        headers = {"x-goog-api-key": world.keys[setup.caller]}
    else:
        headers = {"Authorization": f"Bearer {token(world, setup.caller, credential)}"}
    return httpx.Client(base_url=world.server.url, headers=headers, timeout=120)


def listed(client: httpx.Client, world: World, text_filter: str = "") -> httpx.Response:
    reply = client.get("/v1beta/tunedModels", params={"filter": text_filter, "pageSize": 1000})
    if reply.status_code != 200:
        return reply
    names = {m["name"] for m in reply.json().get("tunedModels", [])}
    # A model missing from the list reads as 403 here, so lists share the table's verdicts.
    return httpx.Response(200 if world.model in names else 403, json={"listed": sorted(names)})


def add_and_remove_grant(client: httpx.Client, world: World) -> httpx.Response:
    body = {"granteeType": "USER", "emailAddress": "nobody@example.com", "role": "READER"}
    reply = client.post(f"/v1beta/{world.model}/permissions", json=body)
    if reply.status_code == 200:
        world.owner.delete(f"/v1beta/{reply.json()['name']}").raise_for_status()
    return reply


METHODS = [
    Method("get", "READER", True, lambda c, w: c.get(f"/v1beta/{w.model}")),
    Method("list", "READER", True, lambda c, w: listed(c, w)),
    Method("list-readers-me", "READER", True, lambda c, w: listed(c, w, "readers:me")),
    Method("list-writers-me", "WRITER", True, lambda c, w: listed(c, w, "writers:me")),
    Method("list-owner-me", "OWNER", True, lambda c, w: listed(c, w, "owner:me")),
    Method("operations.get", "READER", True, lambda c, w: c.get(f"/v1/{w.operation}")),
    Method("operations.list", "READER", True, lambda c, w: c.get(f"/v1/{w.model}/operations")),
    Method(
        "generateContent",
        "READER",
        True,
        lambda c, w: c.post(
            f"/v1beta/{w.model}:generateContent",
            json={
                "contents": [{"parts": [{"text": "1"}]}],
                "generationConfig": {"maxOutputTokens": 2},
            },
        ),
    ),
    Method(
        "patch",
        "WRITER",
        False,
        lambda c, w: c.patch(
            f"/v1beta/{w.model}",
            json={"description": "edited"},
            params={"updateMask": "description"},
        ),
    ),
    Method("operations.cancel", "WRITER", False, lambda c, w: c.post(f"/v1/{w.operation}:cancel")),
    Method("evaluations", "READER", True, lambda c, w: c.get(f"/v1beta/{w.model}/evaluations")),
    Method("checkpoints", "READER", True, lambda c, w: c.get(f"/v1beta/{w.model}/checkpoints")),
    Method(
        "selectCheckpoint",
        "WRITER",
        False,
        lambda c, w: c.post(
            f"/v1beta/{w.model}:selectCheckpoint",
            json={"checkpoint": f"{w.model}/checkpoints/1"},
        ),
    ),
    Method(
        "permissions.list", "WRITER", False, lambda c, w: c.get(f"/v1beta/{w.model}/permissions")
    ),
    Method("permissions.create", "WRITER", False, add_and_remove_grant),
]


def expected(setup: Setup, credential: str, method: Method) -> str:
    """'ok', 'scope' (403 insufficient scopes) or 'denied' (403 no permission)."""
    if credential == NO_SCOPE or (credential == READONLY and not method.read_only_ok):
        return "scope"
    if setup.role is None:
        return "denied"
    if setup.grantee == "EVERYONE" and method.name.startswith("list"):
        return "denied"  # lists leave out models shared only with everyone
    return "ok" if RANK[setup.role] <= RANK[method.least_role] else "denied"


def check(reply: httpx.Response, outcome: str, where: str) -> None:
    if outcome == "ok":
        # A finished operation cannot be cancelled: FAILED_PRECONDITION, past the access check.
        assert reply.status_code in (200, 400), f"{where}: {reply.status_code} {reply.text}"
        if reply.status_code == 400:
            assert reply.json()["error"]["status"] == "FAILED_PRECONDITION", where
        return
    assert reply.status_code == 403, f"{where}: {reply.status_code} {reply.text}"
    if "listed" in reply.text:
        return
    error = reply.json()["error"]
    assert error["status"] == "PERMISSION_DENIED", where
    if outcome == "scope":
        assert error["message"] == SCOPE_DENIED, where
        assert 'error="insufficient_scope"' in reply.headers["www-authenticate"], where
        assert "generative-language.tuning.readonly" in reply.headers["www-authenticate"]
    else:
        assert error["message"].startswith("You do not have permission to"), where


@pytest.mark.parametrize("credential", CREDENTIALS)
@pytest.mark.parametrize("setup", SETUPS, ids=lambda s: s.name)
def test_role_method_scope_grantee(world: World, setup: Setup, credential: str) -> None:
    revoke = grant(world, setup, world.model)
    try:
        with caller_client(world, setup, credential) as client:
            for method in METHODS:
                outcome = expected(setup, credential, method)
                where = f"{setup.name}/{credential}/{method.name}"
                reply = method.call(client, world)
                check(reply, outcome, where)
                if outcome == "denied" and setup.role is None and "listed" not in reply.text:
                    # The hosted service's words, and nothing about the model itself.
                    assert reply.json()["error"]["message"] == DENIED + "shared-model", where
    finally:
        revoke()


@pytest.mark.parametrize("credential", CREDENTIALS)
@pytest.mark.parametrize("setup", SETUPS, ids=lambda s: s.name)
def test_delete_needs_owner(world: World, setup: Setup, credential: str) -> None:
    model = create(world.owner)["name"].rsplit("/operations/", 1)[0]
    grant(world, setup, model)
    with caller_client(world, setup, credential) as client:
        outcome = expected(setup, credential, Method("delete", "OWNER", False, lambda c, w: None))
        reply = client.delete(f"/v1beta/{model}")
        check(reply, outcome, f"{setup.name}/{credential}/delete")
        gone = world.owner.get(f"/v1beta/{model}").status_code == 404
        assert gone == (outcome == "ok")
    if not gone:
        world.owner.delete(f"/v1beta/{model}").raise_for_status()


def test_unknown_model_is_404_for_everyone(world: World) -> None:
    setup = SETUPS[0]
    with caller_client(world, setup, "api-key") as client:
        reply = client.get("/v1beta/tunedModels/no-such-model")
    assert reply.status_code == 404
    assert (
        reply.json()["error"]["message"] == "Tuned model tunedModels/no-such-model does not exist."
    )
