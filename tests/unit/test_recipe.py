"""The training recipe: its learning-rate schedule, its noise, and that a seed fixes the result."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY
from tunesmith.config import LocalBaseModel, Settings
from tunesmith.domain.resources import Hyperparameters, TuningExample
from tunesmith.training.base_models import Catalog, LoadedBaseModel, load_base_model
from tunesmith.training.forward import decoder_for, pack, step_loss
from tunesmith.training.lora import Checkpoint, StepResult, train_lora
from tunesmith.training.recipe import DEFAULT_RECIPE, Recipe, WeightAverage, embedding_noise

EXAMPLES = [TuningExample("1", "2"), TuningExample("three", "four"), TuningExample("9", "10")]
HP = Hyperparameters(epoch_count=3, batch_size=2, learning_rate=0.01)  # 5 steps
NOISY = replace(DEFAULT_RECIPE, dropout=0.1, neftune_alpha=5.0, average_last=0.6)


@pytest.fixture(scope="module")
def base(tiny_model_dir, tmp_path_factory) -> LoadedBaseModel:
    cache = tmp_path_factory.mktemp("cache")
    settings = Settings(
        data_dir=cache, extra_base_models=[LocalBaseModel(name=TINY, path=tiny_model_dir)]
    )
    return load_base_model(Catalog(settings).get(TINY).target, cache)


@pytest.mark.parametrize("decay", ["constant", "linear", "cosine"])
def test_the_rate_warms_up_from_near_zero_and_never_exceeds_the_users(decay):
    recipe = Recipe(warmup=0.2, decay=decay)
    scales = [recipe.learning_rate_scale(step, 19) for step in range(1, 20)]
    assert 0 < scales[0] < scales[1] < scales[3] <= 1.0
    assert all(0 < s <= 1.0 for s in scales)
    if decay == "constant":
        assert scales[-1] == 1.0
    else:
        assert scales[-1] < 0.2 and scales == sorted(scales[:4]) + sorted(scales[4:], reverse=True)


def test_the_default_recipe_uses_the_users_rate_as_given():
    assert [DEFAULT_RECIPE.learning_rate_scale(s, 19) for s in range(1, 20)] == [1.0] * 19


def test_embedding_noise_is_bounded_by_the_batchs_longest_example():
    embedded = torch.zeros(10, 4)
    noisy = embedding_noise(embedded, 5.0, length=3)
    assert 0 < noisy.abs().max() <= 5.0 / (3 * 4) ** 0.5
    assert embedding_noise(embedded, 0.0, length=3) is embedded


def train(base: LoadedBaseModel, folder: Path, recipe: Recipe, crash_after: int = 0) -> dict:
    """The adapter's tensors; with `crash_after`, the run is killed after that step (a
    checkpoint after every step) and resumed."""

    class Crash(Exception):
        pass

    crash_at = {crash_after}

    def on_step(result: StepResult) -> None:
        if result.step in crash_at:
            crash_at.clear()
            raise Crash

    def run() -> None:
        train_lora(
            base, EXAMPLES, HP, 11, folder / "adapter", Checkpoint(folder / "checkpoint.pt"),
            on_step, checkpoint_interval=0, recipe=recipe,
        )  # fmt: skip

    if crash_after:
        with pytest.raises(Crash):
            run()
    run()
    return load_file(folder / "adapter" / "adapter_model.safetensors")


def test_the_same_data_and_seed_give_the_same_adapter(base, tmp_path):
    first = train(base, tmp_path / "a", NOISY)
    second = train(base, tmp_path / "b", NOISY)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_a_resumed_run_draws_the_same_noise_as_an_uninterrupted_one(base, tmp_path):
    whole = train(base, tmp_path / "whole", NOISY)
    resumed = train(base, tmp_path / "resumed", NOISY, crash_after=3)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    clean = train(base, tmp_path / "clean", DEFAULT_RECIPE)
    assert not all(torch.equal(whole[k], clean[k]) for k in whole)  # the noise is real


def test_the_weight_average_is_the_mean_of_the_last_steps():
    weight = torch.nn.Parameter(torch.zeros(2))
    average = WeightAverage([weight], share=0.5, steps=4)  # steps 3 and 4
    for step, value in enumerate([10.0, 20.0, 1.0, 3.0], start=1):
        with torch.no_grad():
            weight.fill_(value)
        average.add(step)
    average.apply()
    assert weight.tolist() == [2.0, 2.0]
    assert WeightAverage([weight], share=0.0, steps=4).first_step == 5  # never averages


def test_the_prompt_loss_joins_the_objective_but_not_the_reported_loss(base):
    causal_lm = base.model
    pairs = [base.codec.encode_example(e.text_input, e.output) for e in EXAMPLES]
    decode = decoder_for(causal_lm)
    with torch.no_grad():
        plain, reported = step_loss(causal_lm, decode, pack(pairs))
        weighted, same = step_loss(causal_lm, decode, pack(pairs, 0.5))
    assert plain is reported
    assert same.item() == pytest.approx(reported.item(), rel=1e-6)
    assert weighted > reported
