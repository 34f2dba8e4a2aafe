"""A worker loads and warms up the default base model before it polls for its first job."""

from __future__ import annotations

import threading

from conftest import TINY, tiny_env
from tunesmith.config import Settings
from tunesmith.jobs import worker as worker_module
from tunesmith.jobs.worker import Worker
from tunesmith.training.base_models import Catalog


def test_a_worker_preloads_and_warms_the_default_base_at_start(
    tmp_path, tiny_model_dir, monkeypatch
):
    for key, value in tiny_env(tiny_model_dir).items():
        monkeypatch.setenv(key, value)
    settings = Settings(data_dir=tmp_path / "data", base_model_dir=tmp_path / "base-models")
    warmed = []

    def warm_up(model) -> None:
        warmed.append(model)
        real_warm_up(model)

    real_warm_up = worker_module.warm_up
    monkeypatch.setattr(worker_module, "warm_up", warm_up)
    worker = Worker(settings, repo=None, catalog=Catalog(settings))  # stopped before it polls
    stop = threading.Event()
    stop.set()
    worker.run_forever(stop)

    base = worker._base(TINY)
    assert list(worker._bases) == [TINY]
    assert warmed == [base.model]
    assert not base.model.training and not any(p.requires_grad for p in base.model.parameters())
