"""Text generation from base models and their LoRA adapters.

One copy of each base model stays in memory; tuned models' adapters are loaded into it on
demand (peft, an LRU per base model). Decoding is a plain KV-cached loop so that logits are
computed for the last position only and every sampled token is counted.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel

from tunesmith.domain.resources import Turn
from tunesmith.serving.sampling import SamplingParams, next_tokens
from tunesmith.training.base_models import BaseModelSpec, LoadedBaseModel
from tunesmith.training.model_builds import attach_adapter

__all__ = ["Candidate", "Engine", "Generation", "SamplingParams", "StreamChunk"]


@dataclass
class Candidate:
    text: str
    finish_reason: str  # "STOP" (end token or stop sequence) or "MAX_TOKENS"
    token_count: int  # tokens the model sampled for this candidate, its end token included


@dataclass
class Generation:
    candidates: list[Candidate]
    prompt_token_count: int


@dataclass
class StreamChunk:
    deltas: list[str]  # new text per candidate since the last chunk ("" if none)
    finished: list[Candidate | None]  # set for a candidate in the chunk where it finishes
    prompt_token_count: int


class Engine:
    """Generates from base models and tuned adapters; safe to call from many threads."""

    def __init__(
        self, load: Callable[[BaseModelSpec], LoadedBaseModel], adapter_cache_size: int = 8
    ) -> None:
        if adapter_cache_size < 1:
            raise ValueError("adapter_cache_size must be at least 1")
        self._load = load
        self._adapter_cache_size = adapter_cache_size
        self._models: dict[str, _ServedModel] = {}
        self._models_lock = threading.Lock()

    def generate(
        self,
        spec: BaseModelSpec,
        adapter_dir: Path | None,
        turns: Sequence[Turn],
        params: SamplingParams,
    ) -> Generation:
        candidates: list[Candidate | None] = [None] * params.candidate_count
        prompt_token_count = 0
        for chunk in self.stream(spec, adapter_dir, turns, params):
            prompt_token_count = chunk.prompt_token_count
            for index, done in enumerate(chunk.finished):
                if done is not None:
                    candidates[index] = done
        return Generation([c for c in candidates if c is not None], prompt_token_count)

    def stream(
        self,
        spec: BaseModelSpec,
        adapter_dir: Path | None,
        turns: Sequence[Turn],
        params: SamplingParams,
    ) -> Iterator[StreamChunk]:
        """Chunks as text becomes final. The model stays locked until the iterator is
        exhausted or closed: close it when the client goes away."""
        _check(params)
        served = self._served(spec)
        prompt = served.loaded.codec.encode_prompt(turns)
        return _locked_decode(served, adapter_dir, prompt, params)

    def count_prompt_tokens(self, spec: BaseModelSpec, turns: Sequence[Turn]) -> int:
        return len(self._served(spec).loaded.codec.encode_prompt(turns))

    def _served(self, spec: BaseModelSpec) -> _ServedModel:
        with self._models_lock:
            served = self._models.get(spec.name)
            if served is None:
                served = _ServedModel(self._load(spec), self._adapter_cache_size)
                self._models[spec.name] = served
            return served


def _locked_decode(
    served: _ServedModel, adapter_dir: Path | None, prompt: list[int], params: SamplingParams
) -> Iterator[StreamChunk]:
    with served.lock, served.activate(adapter_dir):
        yield from _decode(served.loaded, prompt, params)


def _check(params: SamplingParams) -> None:
    if params.candidate_count < 1:
        raise ValueError("candidate_count must be at least 1")
    if params.max_output_tokens < 1:
        raise ValueError("max_output_tokens must be at least 1")


class _ServedModel:
    """A base model and the adapters loaded into it, most recently used last."""

    def __init__(self, loaded: LoadedBaseModel, adapter_cache_size: int) -> None:
        self.loaded = loaded
        self.lock = threading.Lock()  # not an RLock: a stream may resume on another thread
        self._capacity = adapter_cache_size
        self._peft: PeftModel | None = None
        self._adapters: OrderedDict[str, str] = OrderedDict()  # adapter dir -> peft name
        self._names = itertools.count()

    def activate(self, adapter_dir: Path | None) -> AbstractContextManager:
        """Makes the model run with that adapter (or none) while the returned context is
        entered. The caller holds `lock`."""
        if adapter_dir is None:
            return nullcontext() if self._peft is None else self._peft.disable_adapter()
        key = str(adapter_dir.resolve())
        name = self._adapters.get(key)
        if name is None:
            name = self._load_adapter(key)
        self._adapters.move_to_end(key)
        self._peft.set_adapter(name, inference_mode=True)
        self._evict()
        return nullcontext()

    def _load_adapter(self, key: str) -> str:
        # peft adapter names become module keys, which may not contain dots: no paths
        name = f"adapter_{next(self._names)}"
        self._peft = attach_adapter(self._peft, self.loaded.model, Path(key), name)
        self._adapters[key] = name
        return name

    def _evict(self) -> None:
        while len(self._adapters) > self._capacity:
            _, name = self._adapters.popitem(last=False)
            self._peft.delete_adapter(name)


def _decode(
    loaded: LoadedBaseModel, prompt: list[int], params: SamplingParams
) -> Iterator[StreamChunk]:
    """The decoding loop: every candidate is a row of one batch, dropped when it finishes."""
    generator = torch.Generator()
    if params.seed is None:
        generator.seed()
    else:
        generator.manual_seed(params.seed)
    stop_ids = set(loaded.codec.stop_token_ids)
    count = params.candidate_count
    texts = [_CandidateText(loaded.tokenizer, params.stop_sequences) for _ in range(count)]
    active = list(range(count))  # the candidate of each batch row
    tokens, cache = _first_tokens(loaded.model, prompt, params, generator)
    while active:
        chunk = StreamChunk([""] * count, [None] * count, len(prompt))
        keep = []
        for row, index in enumerate(active):
            text = texts[index]
            chunk.deltas[index], chunk.finished[index] = text.take(
                int(tokens[row]), stop_ids, params.max_output_tokens
            )
            if chunk.finished[index] is None:
                keep.append(row)
        if any(chunk.deltas) or any(done is not None for done in chunk.finished):
            yield chunk
        active = [active[row] for row in keep]
        if active:
            tokens = _following_tokens(loaded.model, cache, tokens, keep, params, generator)


# inference_mode per call, not around the loop: a stream may resume on another thread, and
# the mode is thread-local.
@torch.inference_mode()
def _first_tokens(model, prompt: list[int], params: SamplingParams, generator: torch.Generator):
    """Runs the prompt once, copies its KV cache for every candidate, samples their first
    tokens."""
    ids = torch.tensor([prompt], device=model.device)
    logits, cache = _last_logits(model, ids, None)
    cache.batch_repeat_interleave(params.candidate_count)
    logits = logits.expand(params.candidate_count, -1)
    return next_tokens(logits, params, generator), cache


@torch.inference_mode()
def _following_tokens(
    model,
    cache,
    tokens: torch.Tensor,
    keep: list[int],
    params: SamplingParams,
    generator: torch.Generator,
) -> torch.Tensor:
    """Feeds the rows in `keep` their last tokens and samples their next ones."""
    if len(keep) < tokens.shape[0]:
        rows = torch.tensor(keep, device=tokens.device)
        cache.batch_select_indices(rows)
        tokens = tokens[rows]
    logits, _ = _last_logits(model, tokens[:, None], cache)
    return next_tokens(logits, params, generator)


def _last_logits(model, ids: torch.Tensor, cache) -> tuple[torch.Tensor, object]:
    """Logits (rows, vocab) of each row's last position, and the updated KV cache.

    The output projection runs on a contiguous (rows, hidden) copy of the last hidden
    states: transformers' `logits_to_keep=1` hands it a strided 3-D view, which sends a
    bfloat16 CPU matmul down a path that copies the whole 262k-row weight (~1 s)."""
    out = model.get_decoder()(input_ids=ids, past_key_values=cache, use_cache=True)
    logits = model.get_output_embeddings()(out.last_hidden_state[:, -1].contiguous())
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits, out.past_key_values


class _CandidateText:
    """One candidate's tokens turned into final text: stop sequences cut it, and text that
    could still become one is held back."""

    def __init__(self, tokenizer, stop_sequences: Sequence[str]) -> None:
        self._decoder = _IncrementalDecoder(tokenizer)
        self._stops = [s for s in stop_sequences if s]
        self._pending = ""
        self._stopped = False
        self.text = ""
        self.token_count = 0

    def take(self, token: int, stop_ids: set[int], cap: int) -> tuple[str, Candidate | None]:
        """(new final text, the finished candidate or None) after sampling `token`."""
        self.token_count += 1
        if token in stop_ids:
            return self._release(self._decoder.flush(), final=True), self._finish("STOP")
        delta = self._release(self._decoder.push(token), final=False)
        if not self._stopped and self.token_count >= cap:
            delta += self._release(self._decoder.flush(), final=True)
            if not self._stopped:
                return delta, self._finish("MAX_TOKENS")
        return delta, self._finish("STOP") if self._stopped else None

    def _finish(self, reason: str) -> Candidate:
        return Candidate(self.text, reason, self.token_count)

    def _release(self, new_text: str, final: bool) -> str:
        self._pending += new_text
        cut = _first_stop(self._pending, self._stops)
        if cut is not None:
            self._stopped = True
        elif final:
            cut = len(self._pending)
        else:
            cut = len(self._pending) - _held_back(self._pending, self._stops)
        out = self._pending[:cut]
        self._pending = "" if self._stopped else self._pending[cut:]
        self.text += out
        return out


def _first_stop(text: str, stops: list[str]) -> int | None:
    found = [i for i in (text.find(stop) for stop in stops) if i >= 0]
    return min(found, default=None)


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest end of `text` that begins some stop sequence."""
    return max(
        (k for stop in stops for k in range(1, len(stop)) if text.endswith(stop[:k])),
        default=0,
    )


class _IncrementalDecoder:
    """Token ids to text deltas that concatenate to the decoded whole.

    Each step decodes a short window of recent tokens twice (with and without the new ones)
    and emits the difference, so tokenizers that render a token differently at the start
    of a text stay exact. A delta ending in U+FFFD is a multi-byte character still missing
    bytes: it waits for the next token (or `flush`)."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # window start: context for how the first new token renders
        self._read = 0  # ids before this are already emitted

    def push(self, token: int) -> str:
        self._ids.append(token)
        return self._take(final=False)

    def flush(self) -> str:
        return self._take(final=True)

    def _take(self, final: bool) -> str:
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) <= len(before) or (after.endswith("\ufffd") and not final):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before) :]

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
