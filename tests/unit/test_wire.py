import json
from datetime import UTC, datetime

import pytest

from tunesmith.api import wire
from tunesmith.domain.errors import Code, ServiceError
from tunesmith.domain.resources import (
    Hyperparameters,
    JobError,
    JobStatus,
    Operation,
    TunedModel,
    TunedModelState,
    TuningSnapshot,
)

TUTORIAL_BODY = b"""
      {
        "display_name": "number generator model",
        "base_model": "models/gemini-1.0-pro-001",
        "tuning_task": {
          "hyperparameters": {
            "batch_size": 2,
            "learning_rate": 0.001,
            "epoch_count":5,
          },
          "training_data": {
            "examples": {
              "examples": [
                {
                    "text_input": "1",
                    "output": "2",
                },{
                    "text_input": "3",
                    "output": "4",
                }
              ]
            }
          }
        }
      }"""


def test_trailing_commas_and_snake_case_are_read():
    request = wire.decode_create(wire.parse_body(TUTORIAL_BODY), None)
    assert request.base_model == "models/gemini-1.0-pro-001"
    assert request.display_name == "number generator model"
    assert (request.batch_size, request.epoch_count, request.learning_rate) == (2, 5, 0.001)
    assert [(e.text_input, e.output) for e in request.examples] == [("1", "2"), ("3", "4")]


def test_malformed_json_is_invalid_argument():
    with pytest.raises(ServiceError) as caught:
        wire.parse_body(b'{"a": ')
    assert caught.value.code is Code.INVALID_ARGUMENT
    assert "Invalid JSON payload received" in caught.value.message


def test_unknown_field_is_named():
    body = {"baseModel": "models/x", "tuningTask": {"hyperparameters": {"epochs": 3}}}
    with pytest.raises(ServiceError) as caught:
        wire.read_message(body, "TunedModel")
    violation = caught.value.violations[0]
    assert violation.field == "tuningTask.hyperparameters.epochs"
    assert 'Unknown name "epochs"' in violation.description
    assert "tuning_task.hyperparameters" in violation.description


def test_enums_accepted_as_names_and_numbers():
    assert wire.read_message({"state": 2}, "TunedModel")["state"] is TunedModelState.ACTIVE
    assert wire.read_message({"state": "FAILED"}, "TunedModel")["state"] is TunedModelState.FAILED


def test_int64_accepted_as_strings_and_int32_from_strings():
    data = wire.read_message({"readerProjectNumbers": ["123", 4], "topK": "5"}, "TunedModel")
    assert data == {"readerProjectNumbers": [123, 4], "topK": 5}


def test_missing_training_data_names_the_field():
    body = {"baseModel": "models/x", "tuningTask": {"hyperparameters": {"epochCount": 5}}}
    with pytest.raises(ServiceError) as caught:
        wire.decode_create(body, None)
    assert caught.value.code is Code.INVALID_ARGUMENT
    assert caught.value.violations[0].field == "tuningTask.trainingData"
    assert "tuningTask.trainingData" in caught.value.message


def test_every_violation_is_reported():
    body = {
        "displayName": "x" * 41,
        "tuningTask": {
            "hyperparameters": {"epochCount": 0, "batchSize": -1},
            "trainingData": {"examples": {"examples": [{"textInput": "a"}]}},
        },
    }
    with pytest.raises(ServiceError) as caught:
        wire.decode_create(body, "Bad_Id")
    fields = {v.field for v in caught.value.violations}
    assert {
        "tunedModelId",
        "baseModel",
        "displayName",
        "tuningTask.hyperparameters.epochCount",
        "tuningTask.hyperparameters.batchSize",
        "tuningTask.trainingData.examples.examples[0].output",
    } <= fields


def test_update_without_mask_takes_updatable_fields_and_ignores_output_only():
    body = {"description": "new", "state": 2, "createTime": "2024-01-01T00:00:00Z", "topK": 3}
    change = wire.decode_update(body, None)
    assert (change.description, change.top_k, change.display_name) == ("new", 3, None)


def test_update_mask_rejects_immutable_paths():
    with pytest.raises(ServiceError) as caught:
        wire.decode_update({"baseModel": "models/y"}, "baseModel")
    assert caught.value.violations[0].field == "updateMask"


def test_update_mask_in_snake_case():
    assert wire.decode_update({"displayName": "n"}, "display_name").display_name == "n"


def _model(**changes) -> TunedModel:
    at = datetime(2024, 3, 14, 15, 11, 23, 766989, tzinfo=UTC)
    values = dict(
        id="number-generator-abc",
        base_model="models/gemini-1.0-pro-001",
        display_name="number generator",
        description="",
        temperature=0.9,
        top_p=1.0,
        top_k=1,
        state=TunedModelState.CREATING,
        create_time=at,
        update_time=at,
        hyperparameters=Hyperparameters(5, 4, 0.001),
        owner_id="owner",
        snapshots=[TuningSnapshot(1, 0, 3.5, at), TuningSnapshot(4, 1, 1.25, at)],
    )
    values.update(changes)
    return TunedModel(**values)


def test_tuned_model_json_has_only_fields_the_old_sdk_accepts():
    data = wire.tuned_model_json(_model())
    assert list(data) == [
        "name", "baseModel", "displayName", "state", "createTime", "updateTime",
        "tuningTask", "temperature", "topP", "topK",
    ]  # fmt: skip
    assert data["state"] == "CREATING"
    assert data["createTime"] == "2024-03-14T15:11:23.766989Z"
    assert set(data["tuningTask"]) == {"snapshots", "hyperparameters"}
    assert data["tuningTask"]["hyperparameters"] == {
        "epochCount": 5,
        "batchSize": 4,
        "learningRate": 0.001,
    }
    first, second = data["tuningTask"]["snapshots"]
    assert "epoch" not in first  # zero is omitted
    assert second["epoch"] == 1


def test_tuned_from_tuned_model_uses_the_source_oneof():
    data = wire.tuned_model_json(_model(source_tuned_model="tunedModels/parent"))
    assert "baseModel" not in data
    assert data["tunedModelSource"] == {
        "tunedModel": "tunedModels/parent",
        "baseModel": "models/gemini-1.0-pro-001",
    }


def test_new_operation_json_matches_the_recorded_create_response():
    op = Operation("bvl8dymw0fhw", "number-generator-abc", JobStatus.QUEUED, 38, 0)
    data = wire.operation_json(op, [], None)
    assert data == {
        "name": "tunedModels/number-generator-abc/operations/bvl8dymw0fhw",
        "metadata": {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.CreateTunedModelMetadata",
            "totalSteps": 38,
            "tunedModel": "tunedModels/number-generator-abc",
        },
    }


def test_finished_operations_carry_response_or_error():
    model = _model(state=TunedModelState.ACTIVE)
    done = Operation("op", model.id, JobStatus.SUCCEEDED, 19, 19)
    data = wire.operation_json(done, model.snapshots, model)
    assert data["done"] is True
    assert data["metadata"]["completedPercent"] == 100.0
    assert data["response"]["@type"].endswith("v1beta.TunedModel")
    assert "error" not in data
    cancelled = Operation("op", model.id, JobStatus.CANCELLED, 19, 3, JobError(1, "cancelled"))
    data = wire.operation_json(cancelled, [], model)
    assert data["error"] == {"code": 1, "message": "cancelled"}
    assert "response" not in data
    json.dumps(data)


def test_generate_request_reads_config_and_rejects_non_text():
    request = wire.decode_generate(
        {
            "contents": [{"parts": [{"text": "LXIII"}]}],
            "generationConfig": {"temperature": 0, "stopSequences": ["\n"], "candidateCount": 2},
        }
    )
    assert request.turns[0].text == "LXIII" and request.turns[0].role == "user"
    assert (request.temperature, request.candidate_count) == (0.0, 2)
    with pytest.raises(ServiceError):
        wire.decode_generate({"contents": [{"parts": [{"inlineData": {"data": "x"}}]}]})
    with pytest.raises(ServiceError):
        wire.decode_generate(
            {"contents": [{"parts": [{"text": "x"}]}],
             "generationConfig": {"responseMimeType": "application/json"}}
        )  # fmt: skip
