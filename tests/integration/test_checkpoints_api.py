"""The validation and checkpoint extensions over HTTP, on both databases: the create
request's extension fields, the evaluations and checkpoints endpoints, selectCheckpoint,
and that the Gemini resources carry none of it."""

from __future__ import annotations

import math

import httpx
import pytest

from conftest import wait_for_operation

EXAMPLES = [{"textInput": str(n), "output": str(n + 1)} for n in range(4)]
VALIDATION = [{"textInput": "7", "output": "8"}, {"textInput": "9", "output": "10"}]
# Google's fields (reference §2.1, §3.1): a response may hold these and no others.
TUNED_MODEL_FIELDS = {
    "name", "baseModel", "tunedModelSource", "displayName", "description", "state",
    "createTime", "updateTime", "tuningTask", "temperature", "topP", "topK",
    "readerProjectNumbers",
}  # fmt: skip
TUNING_TASK_FIELDS = {"startTime", "completeTime", "snapshots", "hyperparameters"}
METADATA_FIELDS = {
    "@type", "totalSteps", "completedSteps", "completedPercent", "snapshots", "tunedModel",
}  # fmt: skip
PROMPT = {"contents": [{"parts": [{"text": "5"}]}], "generationConfig": {"temperature": 0}}


def create(client: httpx.Client, epochs: int, **task) -> httpx.Response:
    body = {
        "baseModel": "models/tiny-random",
        "tuningTask": {
            "hyperparameters": {"epochCount": epochs, "batchSize": 2, "learningRate": 0.05},
            "trainingData": {"examples": {"examples": EXAMPLES}},
            **task,
        },
    }
    return client.post("/v1beta/tunedModels", json=body)


def tuned(client: httpx.Client, epochs: int, **task) -> tuple[str, dict]:
    reply = create(client, epochs, **task)
    assert reply.status_code == 200, reply.text
    operation = wait_for_operation(client, reply.json()["name"])
    assert "error" not in operation, operation
    return operation["metadata"]["tunedModel"], operation


def generate(client: httpx.Client, model: str) -> str:
    reply = client.post(f"/v1beta/{model}:generateContent", json=PROMPT)
    assert reply.status_code == 200, reply.text
    return reply.json()["candidates"][0]["content"]["parts"][0].get("text", "")


def assert_gemini_fields_only(operation: dict, model: dict) -> None:
    assert set(operation) <= {"name", "metadata", "done", "error", "response"}
    assert set(operation["metadata"]) <= METADATA_FIELDS
    for resource in (model, operation["response"]):
        assert set(resource) - {"@type"} <= TUNED_MODEL_FIELDS
        assert set(resource["tuningTask"]) <= TUNING_TASK_FIELDS


def test_a_curl_style_create_with_validation_is_evaluated_and_checkpointed(server):
    with server.client() as client:
        model, operation = tuned(
            client,
            3,
            validation_data={"examples": {"examples": VALIDATION}},  # snake_case, as curl users
            evaluationIntervalSteps=1,
            checkpointChoice="LAST",
            seed=7,
        )
        assert_gemini_fields_only(operation, client.get(f"/v1beta/{model}").json())

        evaluations = client.get(f"/v1beta/{model}/evaluations").json()["evaluations"]
        assert [e["step"] for e in evaluations] == [1, 2, 3, 4, 5, 6]
        for e in evaluations:
            assert math.isfinite(e["validationLoss"]) and 0 <= e["exactMatch"] <= 1
            assert e["examples"] == 2 and e["createTime"].endswith("Z")
        assert "epoch" not in evaluations[0]  # proto3: epoch 0 omitted

        listed = client.get(f"/v1/{model}/checkpoints").json()["checkpoints"]
        assert [(c["name"], c["epoch"], c["step"]) for c in listed] == [
            (f"{model}/checkpoints/{n}", n, 2 * n) for n in (1, 2, 3)
        ]
        assert [c.get("serving", False) for c in listed] == [False, False, True]
        assert listed[0]["validationLoss"] == evaluations[1]["validationLoss"]
        client.delete(f"/v1beta/{model}").raise_for_status()


def test_a_chosen_checkpoint_is_served_from_the_next_request_on(server):
    """Epoch 1 of a 3-epoch job is the whole of a 1-epoch job with the same seed and data,
    so the two answer alike once epoch 1 is chosen."""
    with server.client() as client:
        three, _ = tuned(client, 3, seed=5)
        one, _ = tuned(client, 1, seed=5)
        last_answer = generate(client, three)

        chosen = client.post(
            f"/v1beta/{three}:selectCheckpoint", json={"checkpoint": f"{three}/checkpoints/1"}
        )
        assert chosen.status_code == 200, chosen.text
        serving = [c["epoch"] for c in chosen.json()["checkpoints"] if c.get("serving")]
        assert serving == [1]
        assert generate(client, three) == generate(client, one)

        back = client.post(
            f"/v1/{three}:selectCheckpoint", json={"checkpoint": f"{three}/checkpoints/3"}
        )
        assert back.status_code == 200, back.text
        assert generate(client, three) == last_answer
        for model in (three, one):
            client.delete(f"/v1beta/{model}").raise_for_status()


def test_select_checkpoint_errors(server):
    with server.client() as client:
        model, _ = tuned(client, 1)
        malformed = client.post(f"/v1beta/{model}:selectCheckpoint", json={"checkpoint": "1"})
        assert malformed.status_code == 400
        violation = malformed.json()["error"]["details"][0]["fieldViolations"][0]
        assert violation["field"] == "checkpoint"
        for epoch in ("²", "01", "0", "-1", "1 "):  # canonical epoch numbers only
            odd = client.post(
                f"/v1beta/{model}:selectCheckpoint",
                json={"checkpoint": f"{model}/checkpoints/{epoch}"},
            )
            assert odd.status_code == 400, (epoch, odd.text)
        missing = client.post(
            f"/v1beta/{model}:selectCheckpoint", json={"checkpoint": f"{model}/checkpoints/9"}
        )
        assert missing.status_code == 404
        assert client.get(f"/v1beta/{model}/evaluations").json() == {}  # no validation
        client.delete(f"/v1beta/{model}").raise_for_status()
        gone = client.get(f"/v1beta/{model}/checkpoints")
        assert gone.status_code == 404


def test_a_held_out_share_with_the_best_checkpoint(server):
    with server.client() as client:
        reply = create(
            client, 2, validationSplit=0.25, checkpointChoice="BEST_VALIDATION_LOSS", seed=1
        )
        assert reply.status_code == 200, reply.text
        # 4 examples, 1 held out: 3 train, batch 2, 2 epochs = 3 steps.
        assert reply.json()["metadata"]["totalSteps"] == 3
        operation = wait_for_operation(client, reply.json()["name"])
        model = operation["metadata"]["tunedModel"]
        evaluations = client.get(f"/v1beta/{model}/evaluations").json()["evaluations"]
        assert {e["examples"] for e in evaluations} == {1}
        losses = {e["epoch"]: e["validationLoss"] for e in evaluations}
        best = min(losses, key=lambda epoch: (losses[epoch], epoch))
        listed = client.get(f"/v1beta/{model}/checkpoints").json()["checkpoints"]
        assert [c["epoch"] for c in listed if c.get("serving")] == [best]
        client.delete(f"/v1beta/{model}").raise_for_status()


@pytest.mark.parametrize(
    ("task", "field"),
    [
        (
            {"validationData": {"examples": {"examples": VALIDATION}}, "validationSplit": 0.2},
            "tuningTask.validationSplit",
        ),
        ({"validationSplit": 0.75}, "tuningTask.validationSplit"),
        ({"checkpointChoice": "BEST_VALIDATION_LOSS"}, "tuningTask.checkpointChoice"),
        ({"checkpointChoice": "FIRST"}, "tuningTask.checkpointChoice"),
        ({"evaluationIntervalSteps": 2}, "tuningTask.evaluationIntervalSteps"),
        ({"seed": -1}, "tuningTask.seed"),
        (
            {"validationData": {"examples": {"examples": VALIDATION * 1001}}},
            "tuningTask.validationData.examples.examples",
        ),
        (
            {"validationData": {"examples": {"examples": [{"textInput": "x"}]}}},
            "tuningTask.validationData.examples.examples[0].output",
        ),
    ],
)
def test_extension_fields_are_checked(server, task, field):
    with server.client() as client:
        reply = create(client, 1, **task)
    assert reply.status_code == 400, reply.text
    fields = [v["field"] for v in reply.json()["error"]["details"][0]["fieldViolations"]]
    assert field in fields
