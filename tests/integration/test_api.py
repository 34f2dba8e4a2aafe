"""The HTTP contract's edges on a real server: auth, errors, paging, filters, conventions."""

from __future__ import annotations

import httpx
import pytest

from conftest import wait_for_operation

EXAMPLES = [{"textInput": str(n), "output": str(n + 1)} for n in range(4)]


def create(client: httpx.Client, **fields) -> httpx.Response:
    body = {
        "baseModel": "models/tiny-random",
        "tuningTask": {
            "hyperparameters": {"epochCount": 1, "batchSize": 2},
            "trainingData": {"examples": {"examples": EXAMPLES}},
        },
        **fields,
    }
    params = {"tunedModelId": fields.pop("id")} if "id" in fields else None
    body.pop("id", None)
    return client.post("/v1beta/tunedModels", json=body, params=params)


def test_no_credentials_is_permission_denied(server):
    reply = httpx.get(f"{server.url}/v1beta/tunedModels")
    assert reply.status_code == 403
    assert reply.json()["error"]["status"] == "PERMISSION_DENIED"
    assert "unregistered callers" in reply.json()["error"]["message"]


def test_invalid_api_key_is_400_api_key_invalid(server):
    reply = httpx.get(f"{server.url}/v1beta/tunedModels", headers={"x-goog-api-key": "nope"})
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["message"] == "API key not valid. Please pass a valid API key."
    assert error["details"][0]["reason"] == "API_KEY_INVALID"


def test_bad_token_is_401(server):
    reply = httpx.get(f"{server.url}/v1/tunedModels", headers={"Authorization": "Bearer x.y.z"})
    assert reply.status_code == 401
    assert reply.json()["error"]["status"] == "UNAUTHENTICATED"
    assert "www-authenticate" in reply.headers


def test_key_in_query_and_system_parameters_are_accepted(server):
    reply = httpx.get(
        f"{server.url}/v1beta/models",
        params={"key": server.api_key, "$alt": "json;enum-encoding=int", "prettyPrint": "false"},
    )
    assert reply.status_code == 200
    assert reply.text.startswith('{"models":[')


def test_unknown_field_is_rejected_with_field_violation(server):
    with server.client() as client:
        reply = create(client, colour="blue")
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    assert error["details"][0]["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert error["details"][0]["fieldViolations"][0]["field"] == "colour"


def test_unknown_base_model_names_the_field(server):
    with server.client() as client:
        reply = create(client, baseModel="models/nope")
    assert reply.status_code == 400
    assert reply.json()["error"]["details"][0]["fieldViolations"][0]["field"] == "baseModel"


def test_duplicate_id_conflicts_and_nothing_half_written(server):
    with server.client() as client:
        assert create(client, id="dup-model").status_code == 200
        again = create(client, id="dup-model", displayName="other")
        assert again.status_code == 409
        assert again.json()["error"]["status"] == "ALREADY_EXISTS"
        assert client.get("/v1beta/tunedModels/dup-model").json().get("displayName") is None
        wait_for_operation(client, client.get("/v1beta/tunedModels/dup-model/operations")
                           .json()["operations"][0]["name"])  # fmt: skip
        assert client.delete("/v1beta/tunedModels/dup-model").status_code == 200


def test_generate_on_unfinished_and_missing_models(server):
    with server.client() as client:
        long = {"epochCount": 1000, "batchSize": 1}
        body = {
            "baseModel": "models/tiny-random",
            "tuningTask": {
                "hyperparameters": long,
                "trainingData": {"examples": {"examples": EXAMPLES}},
            },
        }
        operation = client.post("/v1beta/tunedModels", json=body).json()
        name = operation["metadata"]["tunedModel"]
        request = {"contents": [{"parts": [{"text": "1"}]}]}
        busy = client.post(f"/v1beta/{name}:generateContent", json=request)
        assert busy.status_code == 400
        assert busy.json()["error"]["status"] == "FAILED_PRECONDITION"
        assert client.post(f"/v1/{operation['name']}:cancel", json={}).json() == {}
        done = wait_for_operation(client, operation["name"])
        assert done["error"]["code"] == 1
        again = client.post(f"/v1beta/{operation['name']}:cancel")
        assert again.json()["error"]["status"] == "FAILED_PRECONDITION"
        client.delete(f"/v1beta/{name}")
        missing = client.post("/v1beta/tunedModels/nope:generateContent", json=request)
        assert missing.status_code == 404


def test_filter_and_operations_list(server):
    with server.client() as client:
        create(client, id="filter-me", displayName="Sentence Translator")
        found = client.get("/v1beta/tunedModels", params={"filter": "translator"}).json()
        assert [m["name"] for m in found["tunedModels"]] == ["tunedModels/filter-me"]
        assert client.get("/v1beta/tunedModels", params={"filter": "zzz"}).json() == {}
        mine = client.get("/v1beta/tunedModels", params={"filter": "owner:me translator"}).json()
        assert len(mine["tunedModels"]) == 1
        ops = client.get("/v1/tunedModels/filter-me/operations").json()["operations"]
        assert len(ops) == 1
        wait_for_operation(client, ops[0]["name"])
        client.delete("/v1beta/tunedModels/filter-me")


@pytest.mark.parametrize("path", ["/v1beta/nothing", "/v1/tunedModels/x/permissions/y/z"])
def test_unknown_paths_get_google_errors(server, path):
    reply = httpx.get(f"{server.url}{path}", headers=server.headers())
    assert reply.status_code == 404
    assert reply.json()["error"]["status"] == "NOT_FOUND"


def test_patch_with_old_sdk_body(server):
    with server.client() as client:
        created = create(client, id="patch-me", displayName="before").json()
        wait_for_operation(client, created["name"])
        model = client.get("/v1beta/tunedModels/patch-me").json()
        body = {k: v for k, v in model.items() if k != "name"} | {"state": 2, "description": "d"}
        patched = client.patch(
            "/v1beta/tunedModels/patch-me",
            params={"updateMask": "description,displayName"},
            json=body,
        ).json()
        assert patched["description"] == "d" and patched["displayName"] == "before"
        assert patched["state"] == "ACTIVE"
        client.delete("/v1beta/tunedModels/patch-me")


def test_generation_does_not_block_other_requests(server):
    """While a long generation runs, list requests are answered (ordering, not timing)."""
    import threading

    with server.client() as client:
        body = {
            "contents": [{"parts": [{"text": "go"}]}],
            "generationConfig": {"maxOutputTokens": 500, "temperature": 1.0, "seed": 3},
        }
        reply: list[httpx.Response] = []
        generating = threading.Thread(
            target=lambda: reply.append(
                client.post("/v1beta/models/tiny-random:generateContent", json=body)
            )
        )
        generating.start()
        answered_during = 0
        for _ in range(20):
            assert client.get("/v1beta/tunedModels").status_code == 200
            answered_during += generating.is_alive()
        generating.join()
        assert reply[0].status_code == 200, reply[0].text
        assert reply[0].json()["usageMetadata"]["candidatesTokenCount"] > 20
        assert answered_during > 0


def test_a_prompt_over_the_input_token_limit_is_refused_before_generation(server):
    with server.client() as client:
        limit = client.get("/v1beta/models/tiny-random").json()["inputTokenLimit"]
        long = {"contents": [{"parts": [{"text": "seven " * (limit + 10)}]}]}
        refused = client.post("/v1beta/models/tiny-random:generateContent", json=long)
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        violation = error["details"][0]["fieldViolations"][0]
        assert violation["field"] == "contents"
        assert f"inputTokenLimit of {limit} tokens" in violation["description"]
        streamed = client.post("/v1beta/models/tiny-random:streamGenerateContent", json=long)
        assert streamed.status_code == 400
        short = {
            "contents": [{"parts": [{"text": "seven"}]}],
            "generationConfig": {"maxOutputTokens": 2},
        }
        assert client.post("/v1beta/models/tiny-random:generateContent", json=short).is_success
