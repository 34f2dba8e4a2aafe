"""Helpers for tests of the serving engine: the tiny model's spec, random adapters, an
observer that records what the engine reports, and the serialised engine it replaced."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from tunesmith.domain.resources import Turn
from tunesmith.serving.batch import last_logits
from tunesmith.serving.engine import EngineObserver, Generation
from tunesmith.serving.sampling import SamplingParams, next_tokens
from tunesmith.serving.text import Candidate, CandidateText
from tunesmith.training.base_models import BaseModelSpec, LoadedBaseModel, Source


def tiny_spec(folder: Path) -> BaseModelSpec:
    """The tiny random Llama that conftest builds with tests/tiny_model.py."""
    return BaseModelSpec(
        name="models/tiny-llama",
        display_name="Tiny Llama",
        description="A random 2-layer Llama for tests.",
        version="001",
        license="Apache-2.0",
        context_length=2048,
        output_token_limit=512,
        temperature=1.0,
        top_p=0.95,
        top_k=64,
        locate=lambda _scratch: Source(folder),
    )


def save_random_adapter(
    spec: BaseModelSpec,
    cache_root: Path,
    dest: Path,
    seed: int,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
    rank: int = 4,
) -> Path:
    model = AutoModelForCausalLM.from_pretrained(spec.locate(cache_root).folder)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank, lora_alpha=32, target_modules=list(targets), init_lora_weights=False
    )
    get_peft_model(model, config).save_pretrained(dest)
    return dest


class RecordingObserver(EngineObserver):
    def __init__(self) -> None:
        self.rows: list[int] = []
        self.loads = self.evictions = self.rejected = 0
        self.outcomes: list[str] = []

    def step(self, base_model: str, rows: int) -> None:
        self.rows.append(rows)

    def adapter_loaded(self, base_model: str) -> None:
        self.loads += 1

    def adapter_evicted(self, base_model: str) -> None:
        self.evictions += 1

    def request_rejected(self, base_model: str) -> None:
        self.rejected += 1

    def request_finished(self, base_model: str, seconds: float, outcome: str) -> None:
        self.outcomes.append(outcome)


class HoldingObserver(RecordingObserver):
    """Holds the model's thread at the start of its next decoding step, after `hold()`,
    until `release()`: what is submitted meanwhile waits in the queue, with no timing."""

    def __init__(self) -> None:
        super().__init__()
        self._holding = False
        self._held = threading.Event()
        self._released = threading.Event()

    def hold(self) -> None:
        self._released.clear()
        self._held.clear()
        self._holding = True

    def wait_until_held(self, timeout: float = 60) -> None:
        assert self._held.wait(timeout), "the model's thread never reached a step"

    def release(self) -> None:
        self._holding = False
        self._released.set()

    def step(self, base_model: str, rows: int) -> None:
        super().step(base_model, rows)
        if self._holding:
            self._held.set()
            self._released.wait(timeout=120)  # a failed test never holds the model for good


def serial_generate(
    loaded: LoadedBaseModel,
    adapter_dir: Path | None,
    turns: Sequence[Turn],
    params: SamplingParams,
) -> Generation:
    """One generation alone, as the serialised engine before continuous batching did it:
    peft's adapter on the model, one KV-cached loop over the request's candidates."""
    model = loaded.model
    peft = PeftModel.from_pretrained(model, adapter_dir) if adapter_dir else None
    try:
        return _serial_decode(loaded, loaded.codec.encode_prompt(turns), params)
    finally:
        if peft is not None:
            peft.unload()


@torch.inference_mode()
def _serial_decode(loaded: LoadedBaseModel, prompt: list[int], params: SamplingParams):
    generator = torch.Generator()
    generator.manual_seed(params.seed) if params.seed is not None else generator.seed()
    stop_ids = set(loaded.codec.stop_token_ids)
    count = params.candidate_count
    texts = [CandidateText(loaded.tokenizer, params.stop_sequences) for _ in range(count)]
    done: dict[int, Candidate] = {}
    decoder = loaded.model.get_decoder()
    out = decoder(input_ids=torch.tensor([prompt]), use_cache=True)
    cache = out.past_key_values
    cache.batch_repeat_interleave(count)
    logits = last_logits(loaded.model, out.last_hidden_state).expand(count, -1)
    active = list(range(count))
    while active:
        tokens = next_tokens(logits, params, generator)
        keep = []
        for row, index in enumerate(active):
            _, finished = texts[index].take(int(tokens[row]), stop_ids, params.max_output_tokens)
            if finished is None:
                keep.append(row)
            else:
                done[index] = finished
        active = [active[row] for row in keep]
        if active:
            rows = torch.tensor(keep)
            cache.batch_select_indices(rows)
            out = decoder(input_ids=tokens[rows][:, None], past_key_values=cache, use_cache=True)
            logits = last_logits(loaded.model, out.last_hidden_state)
    return Generation([done[i] for i in range(count)], len(prompt))
