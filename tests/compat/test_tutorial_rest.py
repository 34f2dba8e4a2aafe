"""The REST tuning tutorial, run as published: curl, its bodies, its polling loop."""

from __future__ import annotations

import time

import httpx
import pytest

from conftest import TUTORIAL_REQUESTS_BODY
from tutorial_flow import access_token, run_tutorial_curl_flow


@pytest.fixture(scope="module")
def token(server) -> str:
    return access_token(server)


def test_tutorial_curl_flow(server, token):
    run_tutorial_curl_flow(server, token)


def test_tutorial_python_requests_flow(server, token):
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "x-goog-user-project": "my-project",
    }
    body = TUTORIAL_REQUESTS_BODY
    operation = httpx.post(f"{server.url}/v1beta/tunedModels", headers=headers, json=body)
    assert operation.status_code == 200
    op_json = operation.json()
    assert op_json["metadata"]["totalSteps"] == 19
    name = op_json["metadata"]["tunedModel"]
    while op_json.get("response") is None and op_json.get("error") is None:
        time.sleep(0.2)
        op_json = httpx.get(f"{server.url}/v1/{op_json['name']}", headers=headers).json()
    assert op_json["metadata"]["snapshots"][-1]["step"] == 19
    assert op_json["response"]["state"] == "ACTIVE"

    answer = httpx.post(
        f"{server.url}/v1beta/{name}:generateContent",
        headers=headers,
        json={"contents": [{"parts": [{"text": "六"}]}]},
    )
    assert answer.status_code == 200, answer.text

    page = httpx.get(f"{server.url}/v1beta/tunedModels?page_size=1", headers=headers).json()
    assert len(page["tunedModels"]) == 1 and page["nextPageToken"]
    following = httpx.get(
        f"{server.url}/v1beta/tunedModels",
        headers=headers,
        params={"page_size": 1, "page_token": page["nextPageToken"]},
    ).json()
    assert following["tunedModels"][0]["name"] != page["tunedModels"][0]["name"]

    assert httpx.delete(f"{server.url}/v1beta/{name}", headers=headers).json() == {}
    gone = httpx.get(f"{server.url}/v1beta/{name}", headers=headers)
    assert gone.status_code == 404
    assert gone.json()["error"] == {
        "code": 404,
        "message": f"Tuned model {name} does not exist.",
        "status": "NOT_FOUND",
    }
