"""Where artifacts live when TUNESMITH_ARTIFACT_URL names a local or shared directory."""

from __future__ import annotations

import pytest

from tunesmith.artifacts import Artifacts
from tunesmith.training.lora import Checkpoint


def test_the_default_is_the_data_dir(tmp_path):
    artifacts = Artifacts(tmp_path / "data")
    assert artifacts.remote is None
    assert artifacts.adapter("m", "op") == tmp_path / "data" / "adapters" / "m" / "op"
    assert artifacts.resumable("op") == Checkpoint(tmp_path / "data" / "checkpoints" / "op.pt")


@pytest.mark.parametrize("scheme", ["", "file://"])
def test_a_shared_directory_is_used_in_place(tmp_path, scheme):
    shared = tmp_path / "shared"
    artifacts = Artifacts(tmp_path / "data", f"{scheme}{shared}")
    assert artifacts.remote is None  # no uploads, no copies
    staging = artifacts.staging("m", "op")
    staging.mkdir(parents=True)
    (staging / "adapter_config.json").write_text("{}")
    assert artifacts.publish("m", "op")
    assert artifacts.fetch_adapter("m", "op") == shared / "adapters" / "m" / "op"
    assert artifacts.checkpoint("op") == shared / "checkpoints" / "op.pt"
    artifacts.remove_model("m", ["op"])
    assert not (shared / "adapters" / "m").exists()
    assert not (tmp_path / "data").exists()


def test_a_missing_adapter_is_none(tmp_path):
    assert Artifacts(tmp_path).fetch_adapter("m", "op") is None
