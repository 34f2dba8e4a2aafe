"""A candidate's sampled tokens turned into final text: incremental decoding, stop
sequences cut, and text that could still become a stop sequence held back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class Candidate:
    text: str
    finish_reason: str  # "STOP" (end token or stop sequence) or "MAX_TOKENS"
    token_count: int  # tokens the model sampled for this candidate, its end token included


class CandidateText:
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
