"""A worker loads and warms up the default base model before it polls for its first job."""

from __future__ import annotations

import os
import subprocess
import sys
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


def test_serve_starts_its_workers_before_it_imports_torch(tmp_path):
    """A worker's start overlaps the server's: the server imports torch (most of a second)
    only after it has started its workers."""
    script = """
import sys
from tunesmith.cli import server
from tunesmith.training import base_models


class Pool:
    def start(self):
        print("torch imported before the workers started:", "torch" in sys.modules)
        raise SystemExit(0)


base_models.ensure_cached = lambda spec, root: root
server._executor = lambda settings: Pool()
server.serve(host=None, port=None, workers=None)
"""
    env = {**os.environ, "TUNESMITH_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "torch imported before the workers started: False" in done.stdout


def test_the_worker_command_collects_garbage_again_once_it_is_ready(tmp_path):
    """The cyclic garbage collector is off while a worker starts and back on, with the
    start's heap frozen, before the worker claims its first job."""
    script = """
import gc
from tunesmith.cli import server
from tunesmith.jobs import worker


class Started:
    def run_forever(self, stop, ready):
        print("collecting while starting:", gc.isenabled())
        ready()
        print("collecting once ready:", gc.isenabled(), gc.get_freeze_count() > 0)


worker.Worker.from_settings = staticmethod(lambda settings: Started())
server.worker(supervisor=0)
"""
    env = {**os.environ, "TUNESMITH_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "collecting while starting: False" in done.stdout
    assert "collecting once ready: True True" in done.stdout
