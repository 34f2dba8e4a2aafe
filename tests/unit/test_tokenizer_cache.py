"""A converted base model's tokenizer_config.json names the tokenizer's added tokens, so a
load need not parse tokenizer.json twice; the tokenizer it loads is the same."""

from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

from transformers import AutoTokenizer

from conftest import BASE_MODEL_CACHE
from tunesmith.config import Settings
from tunesmith.training.base_models import (
    DEFAULT_BASE_MODEL,
    BaseModelSpec,
    Catalog,
    Source,
    ensure_cached,
    record_added_tokens,
)

TEXTS = ["1", "twenty two", "  héllo 世界\n", "six\n六 🤖", "<|im_start|>user\nhi<|im_end|>"]


def tokenizer_files(model: Path, dest: Path) -> Path:
    shutil.copytree(model, dest, ignore=lambda _dir, names: [n for n in names if "safet" in n])
    return dest


def config(folder: Path) -> dict:
    return json.loads((folder / "tokenizer_config.json").read_text())


def assert_same_tokenizer(plain: Path, recorded: Path, tmp_path: Path) -> None:
    mine, theirs = AutoTokenizer.from_pretrained(recorded), AutoTokenizer.from_pretrained(plain)
    assert type(mine) is type(theirs)
    assert repr(mine.added_tokens_decoder) == repr(theirs.added_tokens_decoder)
    assert mine._tokenizer.to_str() == theirs._tokenizer.to_str()
    assert mine.all_special_tokens == theirs.all_special_tokens
    for text in TEXTS:
        for special in (True, False):
            ids = mine(text, add_special_tokens=special)["input_ids"]
            assert ids == theirs(text, add_special_tokens=special)["input_ids"]
            assert mine.decode(ids) == theirs.decode(ids)
    mine.save_pretrained(tmp_path / "saved-mine")
    theirs.save_pretrained(tmp_path / "saved-theirs")
    names = sorted(p.name for p in (tmp_path / "saved-theirs").iterdir())
    assert sorted(p.name for p in (tmp_path / "saved-mine").iterdir()) == names
    _, mismatch, errors = filecmp.cmpfiles(
        tmp_path / "saved-mine", tmp_path / "saved-theirs", names, shallow=False
    )
    assert not mismatch and not errors


def test_named_added_tokens_load_the_same_tokenizer(tiny_model_dir, tmp_path):
    plain = tokenizer_files(tiny_model_dir, tmp_path / "plain")
    recorded = tokenizer_files(tiny_model_dir, tmp_path / "recorded")
    assert "added_tokens_decoder" not in config(plain)  # as transformers 5 saves it
    record_added_tokens(recorded)
    added = json.loads((plain / "tokenizer.json").read_text())["added_tokens"]
    named = config(recorded).pop("added_tokens_decoder")
    assert named == {str(t.pop("id")): t for t in added}  # the same tokens, in order
    assert config(recorded) == config(plain) | {"added_tokens_decoder": named}
    assert_same_tokenizer(plain, recorded, tmp_path)


def test_named_added_tokens_load_the_same_gemma_tokenizer(tmp_path):
    """Gemma's tokenizer class builds its own backend from the vocabulary and merges."""
    cached = ensure_cached(Catalog(Settings()).default, BASE_MODEL_CACHE)  # converted if new
    plain = tokenizer_files(cached, tmp_path / "plain")
    without = {k: v for k, v in config(plain).items() if k != "added_tokens_decoder"}
    (plain / "tokenizer_config.json").write_text(json.dumps(without))  # as converted before
    recorded = tokenizer_files(plain, tmp_path / "recorded")
    record_added_tokens(recorded)
    assert len(config(recorded)["added_tokens_decoder"]) > 6000
    assert_same_tokenizer(plain, recorded, tmp_path)


def spec_at(folder: Path) -> BaseModelSpec:
    return BaseModelSpec(
        name=DEFAULT_BASE_MODEL, display_name="", description="", version="001", license="",
        context_length=2048, output_token_limit=512, temperature=1.0, top_p=0.95, top_k=64,
        locate=lambda _scratch: Source(folder),
    )  # fmt: skip


def test_a_cache_converted_before_gets_its_added_tokens_named_once(tiny_model_dir, tmp_path):
    spec = spec_at(tiny_model_dir)
    cached = tokenizer_files(tiny_model_dir, tmp_path / "cache" / spec.cache_key)
    assert ensure_cached(spec, tmp_path / "cache") == cached
    config_file = cached / "tokenizer_config.json"
    assert "added_tokens_decoder" in config(cached)
    written = config_file.stat()
    ensure_cached(spec, tmp_path / "cache")
    assert config_file.stat().st_ino == written.st_ino  # not rewritten
    assert sorted(p.name for p in cached.iterdir()) == sorted(
        p.name for p in tiny_model_dir.iterdir() if "safet" not in p.name
    )  # no temporary file left behind


def test_a_model_folder_of_its_own_is_left_as_it_is(tiny_model_dir, tmp_path):
    """A model registered from a folder of its own is loaded from there, unchanged; and a
    tokenizer with files only transformers' other path reads keeps that path."""
    own = tokenizer_files(tiny_model_dir, tmp_path / "own")
    before = config(own)
    assert ensure_cached(spec_at(own), tmp_path / "cache") == own
    assert config(own) == before
    (own / "special_tokens_map.json").write_text("{}")
    record_added_tokens(own)
    assert config(own) == before
