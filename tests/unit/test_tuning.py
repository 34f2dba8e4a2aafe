import pytest

from tunesmith.domain import names, tuning

# Every recorded real run (reference §3.3): (examples, batch, epochs, totalSteps)
RECORDED = [(15, 2, 5, 38), (15, 4, 5, 19), (15, 4, 100, 375), (15, 2, 3, 23), (15, 4, 3, 12)]


@pytest.mark.parametrize(("n", "batch", "epochs", "steps"), RECORDED)
def test_total_steps_matches_recorded_runs(n, batch, epochs, steps):
    assert tuning.total_steps(n, epochs, batch) == steps


def test_epoch_after_step_matches_recorded_traces():
    assert [tuning.epoch_after_step(s, 4, 15) for s in range(1, 13)] == [0] * 3 + [1] * 4 + [
        2
    ] * 4 + [3]
    assert [tuning.epoch_after_step(s, 2, 15) for s in (7, 8, 14, 15, 22, 23)] == [0, 1, 1, 2, 2, 3]
    assert [tuning.epoch_after_step(s, 16, 25) for s in (1, 2, 3, 4, 5, 16)] == [0, 1, 1, 2, 3, 10]


def test_batches_cover_the_epoch_stream_once():
    stream = 15 * 5
    bounds = [tuning.batch_bounds(s, 4, stream) for s in range(1, tuning.total_steps(15, 5, 4) + 1)]
    assert bounds[0] == (0, 4)
    assert bounds[-1] == (72, 75)
    assert sum(end - start for start, end in bounds) == stream


def test_defaults_depend_on_dataset_size():
    assert tuning.default_batch_size(15) == 4
    assert tuning.default_learning_rate(15) == 0.001
    assert tuning.default_batch_size(1000) == 16
    assert tuning.default_learning_rate(1000) == 0.0002


def test_generated_ids_follow_the_hosted_service():
    generated = names.tuned_model_id("Number generator model")
    assert generated.startswith("number-generator-model-")
    assert len(generated) <= 40
    assert len(generated.rsplit("-", 1)[1]) == 12
    assert names.tuned_model_id("")[0].isalpha()
    assert names.tuned_model_id("42 things")[0].isalpha()
    long = names.tuned_model_id("a very long display name that goes on and on")
    assert len(long) <= 40 and not long.endswith("--")
    assert len(names.operation_id()) == 12
