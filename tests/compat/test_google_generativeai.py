"""google-generativeai 0.8.6, unchanged, pointed at a real server on loopback."""

from __future__ import annotations

import time

import google.generativeai as genai
import httpx
import pytest
from google.api_core import exceptions

EXAMPLES = [{"text_input": str(n), "output": str(n + 1)} for n in range(1, 9)]


@pytest.fixture(scope="module", autouse=True)
def configured(server):
    genai.configure(
        api_key=server.api_key, transport="rest", client_options={"api_endpoint": server.url}
    )


def test_base_models_are_listed_with_tuning_support():
    names = {m.name: m for m in genai.list_models()}
    assert "models/gemini-1.0-pro-001" in names
    alias = genai.get_model("models/gemini-1.5-flash-001-tuning")
    assert "createTunedModel" in alias.supported_generation_methods
    assert alias.input_token_limit > 0 and alias.output_token_limit > 0


def test_tune_poll_use_update_and_delete():
    operation = genai.create_tuned_model(
        "models/gemini-1.5-flash-001-tuning",
        training_data=EXAMPLES,
        id="generate-num-1234",
        display_name="sdk model",
        epoch_count=3,
        batch_size=4,
        learning_rate=0.001,
    )
    assert operation.metadata.total_steps == 6
    statuses = list(operation.wait_bar())  # a generator: the SDK polls while it is read
    assert statuses and statuses[-1].total_steps == 6
    model = operation.result()
    assert model.name == "tunedModels/generate-num-1234"
    assert model.state.name == "ACTIVE"
    assert len(model.tuning_task.snapshots) == 6
    assert model.tuning_task.hyperparameters.batch_size == 4

    assert "tunedModels/generate-num-1234" in {m.name for m in genai.list_tuned_models()}
    fetched = genai.get_tuned_model("tunedModels/generate-num-1234")
    assert fetched.display_name == "sdk model"
    updated = genai.update_tuned_model(
        "tunedModels/generate-num-1234", {"description": "counts up"}
    )
    assert updated.description == "counts up"
    assert genai.get_tuned_model("tunedModels/generate-num-1234").display_name == "sdk model"

    tuned = genai.GenerativeModel(model_name=model.name)
    reply = tuned.generate_content("5", generation_config={"max_output_tokens": 8})
    assert reply.candidates[0].finish_reason.name in ("STOP", "MAX_TOKENS")
    assert reply.usage_metadata.prompt_token_count > 0
    streamed = tuned.generate_content(
        "6", stream=True, generation_config={"max_output_tokens": 8, "temperature": 0}
    )
    text = "".join(chunk.text for chunk in streamed if chunk.candidates and chunk.parts)
    whole = tuned.generate_content(
        "6", generation_config={"max_output_tokens": 8, "temperature": 0}
    )
    assert text == whole.candidates[0].content.parts[0].text

    child = genai.create_tuned_model(
        source_model=model.name, training_data=EXAMPLES, id="generate-num-child", epoch_count=1
    )
    child_model = child.result()
    assert child_model.source_model == model.name
    assert child_model.base_model == "models/gemini-1.5-flash-001-tuning"

    genai.delete_tuned_model(child_model.name)
    genai.delete_tuned_model(model.name)
    with pytest.raises(exceptions.NotFound):
        genai.get_tuned_model(model.name)


def test_cancel_ends_the_operation_with_cancelled():
    operation = genai.create_tuned_model(
        "models/gemini-1.0-pro-001",
        training_data=EXAMPLES,
        id="long-job",
        epoch_count=1000,
        batch_size=1,
    )
    operation.cancel()
    with pytest.raises(exceptions.GoogleAPICallError):
        operation.result(timeout=60)
    assert operation.cancelled()
    assert genai.get_tuned_model("tunedModels/long-job").state.name == "FAILED"
    genai.delete_tuned_model("tunedModels/long-job")


def test_permission_calls_work_unchanged(server):
    """The old SDK's own sharing API: create, list, get, update, delete, transfer."""
    server.new_api_key("reader@example.com")
    server.new_api_key("heir@example.com")
    server.admin("groups", "create", "team@googlegroups.com")
    operation = genai.create_tuned_model(
        "models/gemini-1.5-flash-001-tuning",
        training_data=EXAMPLES,
        id="shared-by-sdk",
        epoch_count=1,
        batch_size=8,
    )
    model = operation.result()

    reader = model.permissions.create(role="READER", email_address="reader@example.com")
    assert reader.role.name == "READER" and reader.grantee_type.name == "USER"
    group = model.permissions.create(role="writer", email_address="team@googlegroups.com")
    assert group.grantee_type.name == "GROUP"  # the SDK infers GROUP from the address
    everyone = model.permissions.create(role="reader", grantee_type="everyone")
    assert everyone.grantee_type.name == "EVERYONE"

    listed = list(model.permissions.list(page_size=2))
    assert {p.name for p in listed} >= {reader.name, group.name, everyone.name}
    fetched = genai.types.Permission.get(reader.name)
    assert fetched.email_address == "reader@example.com"

    fetched.update({"role": "WRITER"})  # PATCH ...?updateMask=role
    assert genai.types.Permission.get(reader.name).role.name == "WRITER"
    fetched.delete()
    with pytest.raises(exceptions.NotFound):
        genai.types.Permission.get(reader.name)

    model.permissions.transfer_ownership("heir@example.com")
    roles = {p.email_address: p.role.name for p in model.permissions.list() if p.email_address}
    assert roles["heir@example.com"] == "OWNER"
    assert roles["owner@localhost"] == "WRITER"
    with pytest.raises(exceptions.Forbidden, match="permission to delete"):
        genai.delete_tuned_model("tunedModels/shared-by-sdk")


def operation_polls(server) -> float:
    """operations.get requests the server has answered, from its /metrics."""
    text = httpx.get(f"{server.url}/metrics").text
    route = 'route="/v1beta/tunedModels/{model_id}/operations/{operation_id}"'
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("tunesmith_http_requests_total") and route in line
    )


def test_wait_bar_polls_a_long_job_within_the_default_quota(server):
    """wait_bar() calls operations.get again the moment an answer arrives, with no sleep.
    On the default request quota (600 a minute) that once ended in 429 within 2 s; the
    server now answers such a loop about once a second, or as soon as a step lands."""
    polls_before = operation_polls(server)
    started = time.monotonic()
    operation = genai.create_tuned_model(
        "models/gemini-1.0-pro-001",
        training_data=EXAMPLES,
        id="polled-tightly",
        epoch_count=40,
        batch_size=1,
    )
    statuses = list(operation.wait_bar())
    elapsed = time.monotonic() - started
    polls = operation_polls(server) - polls_before
    assert operation.result().state.name == "ACTIVE"
    assert statuses[-1].completed_steps <= 320
    # At most one answer per second of the job to this tight loop (and a few at its ends).
    assert polls <= elapsed + 3, (polls, elapsed)
    genai.delete_tuned_model("tunedModels/polled-tightly")
