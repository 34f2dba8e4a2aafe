"""google-genai 3.3.0, unchanged, on both of its API versions."""

from __future__ import annotations

import time

import httpx
import pytest
from google import genai
from google.genai import errors, types

EXAMPLES = [{"textInput": str(n), "output": str(n + 1)} for n in range(1, 9)]


@pytest.fixture(scope="module")
def tuned_model(server) -> str:
    """A model tuned through REST (google-genai's tune sends no training data)."""
    with server.client() as client:
        body = {
            "baseModel": "models/gemini-1.5-flash-001-tuning",
            "displayName": "genai model",
            "tuningTask": {
                "hyperparameters": {"epochCount": 2, "batchSize": 4},
                "trainingData": {"examples": {"examples": EXAMPLES}},
            },
        }
        operation = client.post("/v1beta/tunedModels", json=body).json()
        while not client.get(f"/v1/{operation['name']}").json().get("done"):
            time.sleep(0.2)
        return operation["metadata"]["tunedModel"]


@pytest.fixture(params=["v1", "v1beta"])
def client(server, request) -> genai.Client:
    return genai.Client(
        api_key=server.api_key,
        http_options=types.HttpOptions(base_url=server.url, api_version=request.param),
    )


def test_tune_without_training_data_gets_a_clear_400(client):
    with pytest.raises(errors.ClientError) as caught:
        client.tunings.tune(
            base_model="models/gemini-1.5-flash-001-tuning",
            training_dataset=types.TuningDataset(
                examples=[types.TuningExample(text_input="1", output="2")]
            ),
            config=types.CreateTuningJobConfig(epoch_count=1, tuned_model_display_name="x"),
        )
    assert caught.value.code == 400
    assert "tuningTask.trainingData" in caught.value.message


def test_get_list_update_and_generate(client, tuned_model):
    job = client.tunings.get(name=tuned_model)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED
    assert job.tuned_model.model == tuned_model

    model = client.models.get(model=tuned_model)
    assert model.name == tuned_model and model.display_name == "genai model"
    listed = [m.name for m in client.models.list(config={"query_base": False, "page_size": 5})]
    assert tuned_model in listed

    updated = client.models.update(model=tuned_model, config={"description": "d2"})
    assert updated.description == "d2"

    config = types.GenerateContentConfig(temperature=0, max_output_tokens=6)
    reply = client.models.generate_content(model=tuned_model, contents="III", config=config)
    assert reply.candidates[0].finish_reason in (
        types.FinishReason.STOP, types.FinishReason.MAX_TOKENS
    )  # fmt: skip
    assert reply.usage_metadata.total_token_count > 0
    chunks = list(
        client.models.generate_content_stream(model=tuned_model, contents="III", config=config)
    )
    assert "".join(c.text or "" for c in chunks) == (reply.text or "")
    assert chunks[-1].usage_metadata.candidates_token_count == (
        reply.usage_metadata.candidates_token_count
    )


def test_delete(client, server):
    with server.client() as http:
        body = {
            "baseModel": "models/gemini-1.0-pro-001",
            "tuningTask": {"trainingData": {"examples": {"examples": EXAMPLES[:2]}}},
        }
        name = http.post("/v1beta/tunedModels", json=body).json()["metadata"]["tunedModel"]
    client.models.delete(model=name)
    assert httpx.get(f"{server.url}/v1beta/{name}", headers=server.headers()).status_code == 404
