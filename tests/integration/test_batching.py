"""Continuous batching on the tiny random Llama, in float32: many requests with different
adapters and sampling parameters decoded together give what each gives alone."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch

from engine_support import (
    HoldingObserver,
    RecordingObserver,
    save_random_adapter,
    serial_generate,
    tiny_spec,
)
from tiny_model import tiny_gemma3
from tunesmith.domain.errors import Code, ServiceError
from tunesmith.domain.resources import Turn
from tunesmith.serving.batch import TransformersPasses
from tunesmith.serving.engine import Engine, GenerationCollector, ServingLimits, request_deadline
from tunesmith.serving.gemma import GemmaPasses
from tunesmith.serving.sampling import SamplingParams
from tunesmith.training.base_models import BaseModelSpec, LoadedBaseModel, load_base_model

TURNS = [Turn("user", "Write a haiku about the sea.")]
OTHER_TURNS = [Turn("user", "Count to ten, slowly, in French and then in German.")]
GREEDY = SamplingParams(temperature=0.0, top_p=1.0, top_k=0, max_output_tokens=24)
SAMPLED = SamplingParams(temperature=1.0, top_p=0.9, top_k=40, max_output_tokens=20, seed=5)
LONG = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_output_tokens=400, seed=1)


def params(base: SamplingParams, **changes) -> SamplingParams:
    return SamplingParams(**{**vars(base), **changes})


@pytest.fixture(scope="module")
def spec(tiny_model_dir: Path) -> BaseModelSpec:
    return tiny_spec(tiny_model_dir)


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def adapters(spec, cache_root, tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("adapters")
    shapes = [(("q_proj", "v_proj"), 4), (("k_proj", "o_proj", "up_proj"), 8), (("v_proj",), 2)]
    return [
        save_random_adapter(spec, cache_root, folder / f"adapter-{i}", i + 1, targets, rank)
        for i, (targets, rank) in enumerate(shapes)
    ]


@pytest.fixture(scope="module")
def reference(spec, cache_root):
    return load_base_model(spec, cache_root, "float32")


def float32_engine(cache_root: Path, **kwargs) -> Engine:
    return Engine(lambda s: load_base_model(s, cache_root, "float32"), **kwargs)


def mixed_requests(adapters: list[Path]):
    """(adapter, turns, params): every adapter and none, greedy and sampled, several
    candidates, stop sequences, different prompt lengths. Sampled ones keep a top-k: the
    random model's next-token distribution is nearly flat over its 49k tokens, where a
    draw among all of them can turn on a last-bit difference of a batched matmul."""
    return [
        (None, TURNS, GREEDY),
        (adapters[0], TURNS, GREEDY),
        (adapters[1], OTHER_TURNS, SAMPLED),
        (adapters[2], TURNS, params(SAMPLED, candidate_count=3, seed=11)),
        (None, OTHER_TURNS, params(SAMPLED, seed=12, max_output_tokens=7)),
        (adapters[0], OTHER_TURNS, params(SAMPLED, candidate_count=2, top_p=1.0, seed=13)),
        (adapters[1], TURNS, params(GREEDY, stop_sequences=("e",), max_output_tokens=30)),
        (adapters[2], OTHER_TURNS, params(SAMPLED, temperature=0.7, top_p=1.0, seed=14)),
    ]


def submitted_while_held(engine: Engine, observer: HoldingObserver, spec, requests: list):
    """A long generation held at its next step, and streams of `requests` submitted
    meanwhile: they join it mid-decoding once released. Close the long one when done."""
    observer.hold()
    first = engine.stream(spec, None, TURNS, params(LONG, max_output_tokens=30))
    try:
        observer.wait_until_held()
        return first, [engine.stream(spec, *request) for request in requests]
    finally:
        observer.release()


def collect(stream):
    collector = GenerationCollector(stream)
    for chunk in stream:
        collector.add(chunk)
    return collector.generation()


def test_a_mixed_batch_gives_what_each_request_gives_alone(spec, cache_root, adapters, reference):
    requests = mixed_requests(adapters)
    alone = [serial_generate(reference, a, turns, p) for a, turns, p in requests]
    observer = RecordingObserver()
    engine = float32_engine(cache_root, observer=observer)

    # one long request runs while all the others are queued, so they share its batch
    long_stream = engine.stream(spec, None, TURNS, LONG)
    next(long_stream)
    streams = [engine.stream(spec, a, turns, p) for a, turns, p in requests]
    together = [collect(stream) for stream in streams]
    long_stream.close()

    assert together == alone
    assert max(observer.rows) >= 1 + sum(p.candidate_count for *_, p in requests) // 2


def test_a_request_joining_mid_batch_matches_alone(spec, cache_root, adapters, reference):
    engine = float32_engine(cache_root)
    long_params = params(SAMPLED, max_output_tokens=60)
    first = engine.stream(spec, adapters[0], TURNS, long_params)
    collector = GenerationCollector(first)
    collector.add(next(first))

    joined = engine.generate(spec, adapters[1], OTHER_TURNS, SAMPLED)
    for chunk in first:
        collector.add(chunk)

    assert joined == serial_generate(reference, adapters[1], OTHER_TURNS, SAMPLED)
    assert collector.generation() == serial_generate(reference, adapters[0], TURNS, long_params)


def test_seeds_reproduce_in_a_batch(spec, cache_root):
    engine = float32_engine(cache_root)
    request = params(SAMPLED, candidate_count=2)

    streams = [engine.stream(spec, None, TURNS, request) for _ in range(3)]
    outputs = [collect(s) for s in streams]

    assert outputs[0] == outputs[1] == outputs[2]
    assert outputs[0].candidates[0].text != outputs[0].candidates[1].text


def test_a_closed_stream_leaves_the_batch_at_the_next_step(spec, cache_root):
    observer = RecordingObserver()
    engine = float32_engine(cache_root, observer=observer)
    gone = engine.stream(spec, None, TURNS, LONG)
    next(gone)

    gone.close()
    answer = engine.generate(spec, None, TURNS, GREEDY)

    assert answer.candidates[0].token_count > 0
    assert observer.outcomes == ["cancelled", "done"] or observer.outcomes == [
        "done",
        "cancelled",
    ]
    assert list(gone) == []


def test_a_dropped_stream_is_cancelled(spec, cache_root):
    observer = RecordingObserver()
    engine = float32_engine(cache_root, observer=observer)
    stream = engine.stream(spec, None, TURNS, LONG)
    next(stream)

    del stream
    engine.generate(spec, None, TURNS, GREEDY)

    assert "cancelled" in observer.outcomes


def test_a_full_queue_answers_429_with_retry_info(spec, cache_root):
    limits = ServingLimits(max_batch_rows=2, max_queued_requests=1)
    observer = HoldingObserver()
    engine = float32_engine(cache_root, limits=limits, observer=observer)
    observer.hold()
    running = engine.stream(spec, None, TURNS, params(LONG, candidate_count=2))
    try:
        observer.wait_until_held()  # its two rows fill the batch, and the model waits
        queued = engine.stream(spec, None, TURNS, GREEDY)  # waits: no room in the batch
        with pytest.raises(ServiceError) as refused:
            engine.stream(spec, None, TURNS, GREEDY)
    finally:
        observer.release()
    running.close()
    assert collect(queued).candidates[0].token_count > 0
    assert refused.value.code == Code.RESOURCE_EXHAUSTED
    assert refused.value.retry_delay is not None and refused.value.retry_delay > 0
    assert refused.value.headers["Retry-After"].isdigit()
    assert observer.rejected == 1


def test_a_closed_streams_rows_are_free_for_the_next_request(spec, cache_root):
    limits = ServingLimits(max_batch_rows=1, max_queued_requests=0)
    observer = HoldingObserver()
    engine = float32_engine(cache_root, limits=limits, observer=observer)
    observer.hold()
    gone = engine.stream(spec, None, TURNS, LONG)
    try:
        observer.wait_until_held()  # its row fills the batch, and the model waits
        gone.close()  # its row leaves at the next step: a new request may have it already
        answer = engine.stream(spec, None, TURNS, GREEDY)
    finally:
        observer.release()

    assert collect(answer).candidates[0].token_count > 0
    assert observer.rejected == 0


def test_prompts_of_different_lengths_prefill_together_and_match_alone(
    spec, cache_root, adapters, reference, monkeypatch
):
    prefills: list[list[int]] = []
    real_prefill = TransformersPasses.prefill

    def recorded(passes, prompts):
        prefills.append([len(prompt) for prompt in prompts])
        return real_prefill(passes, prompts)

    monkeypatch.setattr(TransformersPasses, "prefill", recorded)
    observer = HoldingObserver()
    engine = float32_engine(cache_root, observer=observer)
    requests = [
        (adapters[0], TURNS, SAMPLED),
        (adapters[1], OTHER_TURNS, params(SAMPLED, candidate_count=2, seed=21)),
        (None, [Turn("user", "Hi")], GREEDY),
    ]
    first, streams = submitted_while_held(engine, observer, spec, requests)

    assert [collect(stream) for stream in streams] == [
        serial_generate(reference, *request) for request in requests
    ]
    first.close()
    assert len(prefills) == 2 and len(set(prefills[1])) == 3  # three lengths, one pass


def test_too_many_candidates_for_the_batch_is_a_400(spec, cache_root):
    engine = float32_engine(cache_root, limits=ServingLimits(max_batch_rows=2))

    with pytest.raises(ServiceError) as refused:
        engine.stream(spec, None, TURNS, params(GREEDY, candidate_count=3))

    assert refused.value.code == Code.INVALID_ARGUMENT
    assert refused.value.violations[0].field == "generationConfig.candidateCount"


def test_a_passed_deadline_stops_the_request(spec, cache_root):
    engine = float32_engine(cache_root)
    token = request_deadline.set(time.monotonic() - 1)
    try:
        stream = engine.stream(spec, None, TURNS, LONG)
    finally:
        request_deadline.reset(token)

    with pytest.raises(ServiceError) as late:
        collect(stream)

    assert late.value.code == Code.DEADLINE_EXCEEDED


def test_adapters_in_use_are_never_evicted(spec, cache_root, adapters, reference):
    """One slot per adapter is too few for three: the LRU evicts only unused adapters, and a
    request whose adapter has no slot waits for one instead of taking a pinned one."""
    observer = RecordingObserver()
    engine = float32_engine(cache_root, adapter_cache_size=2, observer=observer)
    requests = [(adapters[i % 3], TURNS, params(SAMPLED, seed=i)) for i in range(9)]

    streams = [engine.stream(spec, a, turns, p) for a, turns, p in requests]
    outputs = [collect(s) for s in streams]

    assert outputs == [serial_generate(reference, a, turns, p) for a, turns, p in requests]
    assert observer.loads >= 3
    assert observer.loads - observer.evictions <= 2


def test_serving_an_adapter_never_changes_the_base_weights(spec, cache_root, adapters, tmp_path):
    """Not even one whose config asks peft to rewrite the base on load (PiSSA): serving
    refuses such a config (one stored before imports were checked), and would read only
    the A and B matrices anyway."""
    pissa = tmp_path / "pissa"
    shutil.copytree(adapters[0], pissa)
    config = json.loads((pissa / "adapter_config.json").read_text())
    (pissa / "adapter_config.json").write_text(json.dumps({**config, "init_lora_weights": "pissa"}))
    loaded = []
    engine = Engine(lambda s: loaded.append(load_base_model(s, cache_root, "float32")) or loaded[0])
    before = engine.generate(spec, None, TURNS, GREEDY)
    weights = {k: v.clone() for k, v in loaded[0].model.state_dict().items()}

    with pytest.raises(ServiceError, match="pissa"):
        engine.generate(spec, pissa, TURNS, GREEDY)

    assert engine.generate(spec, None, TURNS, GREEDY) == before
    after = loaded[0].model.state_dict()
    assert all(torch.equal(weights[k], after[k]) for k in weights)


def test_an_adapter_the_engine_cannot_serve_is_a_failed_precondition(
    spec, cache_root, adapters, tmp_path
):
    dora = tmp_path / "dora"
    shutil.copytree(adapters[0], dora)
    config = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    engine = float32_engine(cache_root)

    with pytest.raises(ServiceError) as refused:
        engine.generate(spec, dora, TURNS, GREEDY)

    assert refused.value.code == Code.FAILED_PRECONDITION
    assert "DoRA" in refused.value.message


def tiny_gemma_base(spec: BaseModelSpec, cache_root: Path) -> LoadedBaseModel:
    """The tiny model's tokenizer and prompt format on a tiny random Gemma 3, which the
    engine serves through Gemma's own passes."""
    loaded = load_base_model(spec, cache_root, "float32")
    return dataclasses.replace(loaded, model=tiny_gemma3(vocab_size=len(loaded.tokenizer)))


def test_gemma_prefills_new_prompts_within_the_running_rows_step(spec, cache_root, monkeypatch):
    mixed: list[int] = []
    real = GemmaPasses.step_and_prefill

    def recorded(passes, kv, tokens, prompts):
        mixed.append(len(prompts))
        return real(passes, kv, tokens, prompts)

    monkeypatch.setattr(GemmaPasses, "step_and_prefill", recorded)
    reference = tiny_gemma_base(spec, cache_root)
    observer = HoldingObserver()
    engine = Engine(lambda s: tiny_gemma_base(s, cache_root), observer=observer)
    requests = [
        (None, TURNS, params(SAMPLED, max_output_tokens=12)),
        (None, OTHER_TURNS, params(SAMPLED, candidate_count=2, seed=21, max_output_tokens=12)),
        (None, [Turn("user", "Hi")], params(GREEDY, max_output_tokens=12)),
    ]
    first, streams = submitted_while_held(engine, observer, spec, requests)

    assert [collect(stream) for stream in streams] == [
        serial_generate(reference, *request) for request in requests
    ]
    first.close()
    assert mixed == [3]  # all three prefilled within the first request's next step


def test_a_stopped_scheduler_fails_its_requests_and_refuses_new_ones(spec, cache_root):
    observer = HoldingObserver()
    engine = float32_engine(cache_root, observer=observer)
    observer.hold()
    running = engine.stream(spec, None, TURNS, params(LONG, max_output_tokens=300))
    observer.wait_until_held()
    waiting = engine.stream(spec, None, OTHER_TURNS, GREEDY)
    scheduler = engine._scheduler(spec)
    stopping = threading.Thread(target=scheduler.stop, args=(60,))
    stopping.start()
    while not scheduler._stopping:  # stopping before the held step ends, not after
        time.sleep(0.001)
    observer.release()  # the held step ends; the thread then stops
    stopping.join(60)

    assert not scheduler._thread.is_alive()
    for stream in (running, waiting):
        with pytest.raises(ServiceError) as failed:
            collect(stream)
        assert failed.value.code == Code.UNAVAILABLE
    with pytest.raises(ServiceError) as refused:
        engine.stream(spec, None, TURNS, GREEDY)
    assert refused.value.code == Code.UNAVAILABLE
