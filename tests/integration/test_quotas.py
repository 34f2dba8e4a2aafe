"""Quotas on a real server: over one, 429 RESOURCE_EXHAUSTED with QuotaFailure or RetryInfo,
and nothing created."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from conftest import LiveServer, tiny_env

QUOTAS = {
    "TUNESMITH_QUOTA_TUNED_MODELS_PER_PROJECT": "3",
    "TUNESMITH_QUOTA_CONCURRENT_JOBS_PER_PROJECT": "2",
    "TUNESMITH_QUOTA_EXAMPLES_PER_JOB": "5",
    "TUNESMITH_QUOTA_REQUESTS_PER_MINUTE": "40",
    "TUNESMITH_WORKERS": "0",  # jobs stay queued, so the concurrency count is deterministic
}


@pytest.fixture(scope="module")
def quota_server(tiny_model_dir, tmp_path_factory) -> Iterator[LiveServer]:
    env = {**tiny_env(tiny_model_dir), **QUOTAS}
    live = LiveServer(tmp_path_factory.mktemp("quotas") / "data", env).start()
    yield live
    live.stop()


def create(client: httpx.Client, model_id: str, examples: int = 4) -> httpx.Response:
    body = {
        "baseModel": "models/tiny-random",
        "tuningTask": {
            "trainingData": {
                "examples": {
                    "examples": [{"textInput": str(n), "output": str(n)} for n in range(examples)]
                }
            }
        },
    }
    return client.post("/v1beta/tunedModels", json=body, params={"tunedModelId": model_id})


def quota_failure(reply: httpx.Response) -> dict:
    assert reply.status_code == 429, reply.text
    error = reply.json()["error"]
    assert error["status"] == "RESOURCE_EXHAUSTED"
    return next(d for d in error["details"] if d["@type"].endswith("QuotaFailure"))


def test_project_quotas_refuse_and_create_nothing(quota_server):
    with quota_server.client() as owner:
        too_many = create(owner, "too-many-examples", examples=6)
        assert quota_failure(too_many)["violations"][0]["subject"] == "tuningTask.trainingData"
        assert owner.get("/v1beta/tunedModels/too-many-examples").status_code == 404

        assert create(owner, "first").status_code == 200
        assert create(owner, "second").status_code == 200
        third = create(owner, "third")
        violation = quota_failure(third)["violations"][0]
        assert violation["subject"].startswith("projects/")
        assert "queued or running" in violation["description"]
        assert owner.get("/v1beta/tunedModels/third").status_code == 404

        # A cancelled job no longer counts against the concurrency quota; its model still
        # counts against the model quota.
        operations = owner.get("/v1/tunedModels/first/operations").json()["operations"]
        assert owner.post(f"/v1/{operations[0]['name']}:cancel").status_code == 200
        assert create(owner, "third").status_code == 200
        fourth = create(owner, "fourth")
        assert "tuned models" in quota_failure(fourth)["violations"][0]["description"]
        names = {m["name"] for m in owner.get("/v1beta/tunedModels").json()["tunedModels"]}
        assert names == {"tunedModels/first", "tunedModels/second", "tunedModels/third"}


def test_requests_per_minute_per_principal(quota_server):
    key = quota_server.new_api_key("busy@example.com")
    with httpx.Client(base_url=quota_server.url, headers={"x-goog-api-key": key}) as busy:
        statuses = [busy.get("/v1beta/models").status_code for _ in range(40)]
        assert statuses == [200] * 40
        refused = busy.get("/v1beta/models")
    assert refused.status_code == 429
    error = refused.json()["error"]
    retry = next(d for d in error["details"] if d["@type"].endswith("RetryInfo"))
    assert retry["retryDelay"].endswith("s") and float(retry["retryDelay"][:-1]) > 0
    assert int(refused.headers["retry-after"]) >= 1
    # Other principals keep their own budget.
    with quota_server.client() as owner:
        assert owner.get("/v1beta/models").status_code == 200
