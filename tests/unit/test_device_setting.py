"""TUNESMITH_DEVICE: where models train and generate."""

from __future__ import annotations

import pydantic
import pytest
import torch

from tunesmith.config import Settings
from tunesmith.training.base_models import torch_device


@pytest.mark.parametrize("value", ["auto", "cpu", "cuda", "cuda:1"])
def test_the_device_setting_takes_auto_cpu_and_cuda(value, tmp_path):
    assert Settings(data_dir=tmp_path, device=value).device == value


@pytest.mark.parametrize("value", ["gpu", "cuda:", "mps", ""])
def test_other_devices_are_refused_when_the_settings_load(value, tmp_path):
    with pytest.raises(pydantic.ValidationError, match="device"):
        Settings(data_dir=tmp_path, device=value)


def test_auto_is_cuda_only_where_torch_sees_it():
    assert torch_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert torch_device("cpu") == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_asking_for_cuda_without_one_says_so():
    with pytest.raises(RuntimeError, match="TUNESMITH_DEVICE is cuda, but torch sees no CUDA"):
        torch_device("cuda")
