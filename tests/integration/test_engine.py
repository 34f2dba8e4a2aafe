"""The serving engine on a tiny random Llama with SmolLM2's tokenizer (seconds, no hub)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from engine_support import RecordingObserver, save_random_adapter, tiny_spec
from tunesmith.domain.resources import Turn
from tunesmith.serving.engine import Engine, Generation
from tunesmith.serving.sampling import SamplingParams
from tunesmith.serving.text import CandidateText
from tunesmith.training.base_models import BaseModelSpec, LoadedBaseModel, load_base_model
from tunesmith.training.prompt import PromptCodec

TURNS = [Turn("user", "Write a haiku about the sea.")]
GREEDY = SamplingParams(temperature=0.0, top_p=1.0, top_k=0, max_output_tokens=16)
SAMPLED = SamplingParams(temperature=1.0, top_p=0.95, top_k=64, max_output_tokens=16, seed=3)


@dataclass(frozen=True)
class ExtraStopCodec(PromptCodec):
    """The real codec, plus one more token that ends an answer."""

    extra_stop: int = -1

    @property
    def stop_token_ids(self) -> list[int]:
        return [*super().stop_token_ids, self.extra_stop]


class CountingLoader:
    def __init__(self, cache_root: Path) -> None:
        self.cache_root = cache_root
        self.calls = 0
        self.loaded: list[LoadedBaseModel] = []

    def __call__(self, spec: BaseModelSpec) -> LoadedBaseModel:
        self.calls += 1
        self.loaded.append(load_base_model(spec, self.cache_root))
        return self.loaded[-1]


@pytest.fixture(scope="module")
def spec(tiny_model_dir: Path) -> BaseModelSpec:
    return tiny_spec(tiny_model_dir)


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def engine(cache_root) -> Engine:
    return Engine(CountingLoader(cache_root))


@pytest.fixture(scope="module")
def reference(spec, cache_root) -> LoadedBaseModel:
    """A second copy of the model, for transformers' own generate."""
    return load_base_model(spec, cache_root)


@pytest.fixture(scope="module")
def greedy_ids(reference) -> list[int]:
    prompt = torch.tensor([reference.codec.encode_prompt(TURNS)])
    out = reference.model.generate(prompt, do_sample=False, max_new_tokens=GREEDY.max_output_tokens)
    return out[0, prompt.shape[1] :].tolist()


@pytest.fixture(scope="module")
def adapters(spec, cache_root, tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("adapters")
    return [
        save_random_adapter(spec, cache_root, folder / f"adapter-{seed}", seed) for seed in (1, 2)
    ]


def texts(generation: Generation) -> list[str]:
    return [c.text for c in generation.candidates]


def test_greedy_matches_transformers_generate(engine, spec, reference, greedy_ids):
    generation = engine.generate(spec, None, TURNS, GREEDY)

    [candidate] = generation.candidates
    assert candidate.text == reference.tokenizer.decode(greedy_ids, skip_special_tokens=True)
    assert candidate.token_count == len(greedy_ids)
    assert generation.prompt_token_count == len(reference.codec.encode_prompt(TURNS))


def test_greedy_is_deterministic_whatever_the_seed(engine, spec):
    first = engine.generate(spec, None, TURNS, GREEDY)
    second = engine.generate(spec, None, TURNS, SamplingParams(**{**vars(GREEDY), "seed": 9}))

    assert first == second


def test_same_seed_same_output_other_seed_other_output(engine, spec):
    params = SamplingParams(**{**vars(SAMPLED), "candidate_count": 2})

    first = engine.generate(spec, None, TURNS, params)
    again = engine.generate(spec, None, TURNS, params)
    other = engine.generate(spec, None, TURNS, SamplingParams(**{**vars(params), "seed": 4}))

    assert first == again
    assert texts(first) != texts(other)


def test_candidate_count_gives_independent_candidates(engine, spec):
    params = SamplingParams(**{**vars(SAMPLED), "candidate_count": 2})

    generation = engine.generate(spec, None, TURNS, params)

    assert len(generation.candidates) == 2
    assert generation.candidates[0].text != generation.candidates[1].text


def test_max_output_tokens_caps_sampled_tokens(engine, spec):
    params = SamplingParams(**{**vars(SAMPLED), "max_output_tokens": 5, "candidate_count": 3})

    generation = engine.generate(spec, None, TURNS, params)

    for candidate in generation.candidates:
        assert (candidate.finish_reason, candidate.token_count) == ("MAX_TOKENS", 5)
    assert generation.prompt_token_count == engine.count_prompt_tokens(spec, TURNS)


def test_stop_sequence_is_trimmed(engine, spec):
    full = engine.generate(spec, None, TURNS, GREEDY).candidates[0].text
    stop = full[6:10]

    params = SamplingParams(**{**vars(GREEDY), "stop_sequences": ("never seen", stop)})
    [candidate] = engine.generate(spec, None, TURNS, params).candidates

    assert candidate.text == full[: full.index(stop)]
    assert candidate.finish_reason == "STOP"
    assert candidate.token_count < GREEDY.max_output_tokens


def test_end_token_stops_and_is_counted(spec, cache_root, greedy_ids):
    end = next(i for i in range(1, len(greedy_ids)) if greedy_ids[i] not in greedy_ids[:i])

    def load(s: BaseModelSpec) -> LoadedBaseModel:
        loaded = load_base_model(s, cache_root)
        codec = ExtraStopCodec(loaded.tokenizer, loaded.codec.format, greedy_ids[end])
        return LoadedBaseModel(s, loaded.model, loaded.tokenizer, codec)

    [candidate] = Engine(load).generate(spec, None, TURNS, GREEDY).candidates

    tokenizer = load_base_model(spec, cache_root).tokenizer
    assert candidate.text == tokenizer.decode(greedy_ids[:end], skip_special_tokens=True)
    assert (candidate.finish_reason, candidate.token_count) == ("STOP", end + 1)


@pytest.mark.parametrize(
    "params",
    [
        GREEDY,
        SamplingParams(**{**vars(SAMPLED), "candidate_count": 3, "max_output_tokens": 40}),
    ],
)
def test_stream_deltas_join_to_the_generated_text(engine, spec, params):
    full = engine.generate(spec, None, TURNS, params).candidates[0].text
    # one stop that cuts the text, one whose beginnings recur and must be held back, then let go
    stops = (full[8:12], full[2:5] + "\x00never")
    params = SamplingParams(**{**vars(params), "stop_sequences": stops})

    generation = engine.generate(spec, None, TURNS, params)
    chunks = list(engine.stream(spec, None, TURNS, params))

    streamed = ["".join(c.deltas[i] for c in chunks) for i in range(params.candidate_count)]
    finished = [next(c.finished[i] for c in chunks if c.finished[i]) for i in range(len(streamed))]
    assert streamed == texts(generation)
    assert finished == generation.candidates
    assert all(c.prompt_token_count == generation.prompt_token_count for c in chunks)


def test_multi_byte_characters_stream_whole(reference):
    text = "Grüße 😀 日本語, done"
    ids = reference.tokenizer(text, add_special_tokens=False)["input_ids"]
    candidate = CandidateText(reference.tokenizer, ("語, x",))

    deltas = [candidate.take(token, set(), cap=len(ids))[0] for token in ids]

    assert any("\ufffd" in reference.tokenizer.decode([token]) for token in ids)  # split chars
    assert not any("\ufffd" in delta for delta in deltas)
    assert "".join(deltas) == text


def test_a_closed_stream_frees_the_model(engine, spec):
    chunks = engine.stream(spec, None, TURNS, GREEDY)
    next(chunks)
    chunks.close()

    assert engine.generate(spec, None, TURNS, GREEDY).candidates


def test_adapter_changes_output_and_base_stays_plain(engine, spec, adapters):
    base = engine.generate(spec, None, TURNS, GREEDY)

    tuned = engine.generate(spec, adapters[0], TURNS, GREEDY)

    assert texts(tuned) != texts(base)
    assert engine.generate(spec, None, TURNS, GREEDY) == base


def test_adapter_lru_evicts_and_reloads(spec, cache_root, adapters):
    loader, observer = CountingLoader(cache_root), RecordingObserver()
    engine = Engine(loader, adapter_cache_size=1, observer=observer)

    first = engine.generate(spec, adapters[0], TURNS, GREEDY)
    second = engine.generate(spec, adapters[1], TURNS, GREEDY)

    assert texts(first) != texts(second)
    assert (observer.loads, observer.evictions) == (2, 1)
    assert engine.generate(spec, adapters[0], TURNS, GREEDY) == first
    assert (observer.loads, observer.evictions) == (3, 2)
    assert loader.calls == 1


def test_concurrent_requests_match_sequential_ones(engine, spec, adapters):
    requests = [None, adapters[0], adapters[1]] * 3
    sequential = [engine.generate(spec, a, TURNS, GREEDY) for a in requests]

    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(lambda a: engine.generate(spec, a, TURNS, GREEDY), requests))

    assert concurrent == sequential
