"""`tunesmith serve` on a fresh data folder: the folder is private to its user, even though
the base model's folder inside it is prepared, and the workers started, before the app."""

from __future__ import annotations

import stat

from conftest import LiveServer, tiny_env


def test_a_fresh_data_folder_is_private_with_base_models_inside_it(tiny_model_dir, tmp_path):
    data = tmp_path / "data"
    env = {**tiny_env(tiny_model_dir), "TUNESMITH_BASE_MODEL_DIR": str(data / "base-models")}
    live = LiveServer(data, env).start()
    try:
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert (data / "base-models").is_dir()
    finally:
        live.stop()
