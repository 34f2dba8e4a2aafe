"""Next tokens for every row of a batch at once, each request with its own parameters and
random generator: what `sampling.next_tokens` gives each request's rows, with far fewer
passes over the 262k-token vocabulary.

Per request, `next_tokens` makes about ten passes over the vocabulary (top-k, softmax,
top-p's sort, masks, the draw's own top-k); for 16 requests that cost as much as the
model's forward pass. Here greedy rows share one argmax, and rows with a top-k share one
search for their largest logits (`sampling.largest`, which screens the vocabulary by
blocks): their temperature, top-k and top-p filters and the draw then work on those few
sorted values only. The draw is the same call on the same values as `next_tokens`
makes (one multinomial per request over its rows), so a seed gives the same tokens. Rows
without a top-k, or whose top-k ties run past the window, take `next_tokens` itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunesmith.serving.sampling import SamplingParams, first_largest, largest, next_tokens

SLACK = 16  # values beyond the largest top-k kept to see ties at its boundary


@dataclass(frozen=True)
class RowGroup:
    """One request's consecutive rows of the batch."""

    start: int
    count: int
    params: SamplingParams
    generator: torch.Generator

    @property
    def rows(self) -> slice:
        return slice(self.start, self.start + self.count)


def draw_rows(logits: torch.Tensor, groups: list[RowGroup]) -> list[int]:
    """The next token of every row of logits (rows, vocab)."""
    tokens = [0] * logits.shape[0]
    vocab = logits.shape[-1]
    greedy = [g for g in groups if g.params.temperature <= 0]
    topped = [g for g in groups if g.params.temperature > 0 and 0 < g.params.top_k < vocab]
    _greedy(logits, greedy, tokens)
    _topped(logits, topped, tokens)
    handled = {id(g) for g in [*greedy, *topped]}
    for group in groups:
        if id(group) not in handled:
            drawn = next_tokens(logits[group.rows], group.params, group.generator)
            tokens[group.rows] = drawn.tolist()
    return tokens


def _greedy(logits: torch.Tensor, groups: list[RowGroup], tokens: list[int]) -> None:
    if not groups:
        return
    rows = _rows(groups, logits.device)
    best = first_largest(_picked(logits, rows))
    for row, token in zip(rows.tolist(), best.tolist(), strict=True):
        tokens[row] = token


def _topped(logits: torch.Tensor, groups: list[RowGroup], tokens: list[int]) -> None:
    if not groups:
        return
    rows = _rows(groups, logits.device)
    temperatures = torch.tensor(
        [g.params.temperature for g in groups for _ in range(g.count)], device=logits.device
    )
    width = min(logits.shape[-1], max(g.params.top_k for g in groups) + SLACK)
    # dividing by a temperature keeps the order: the largest logits, then scaled
    values, ids = largest(_picked(logits, rows).float(), width)
    values = values / temperatures[:, None]
    whole = width == logits.shape[-1]
    offset = 0
    for group in groups:
        part = slice(offset, offset + group.count)
        drawn = _draw_top(values[part], ids[part], whole, group.params, group.generator)
        if drawn is None:  # top-k ties beyond the window: the whole vocabulary decides
            drawn = next_tokens(logits[group.rows], group.params, group.generator)
        tokens[group.rows] = drawn.tolist()
        offset += group.count


def _draw_top(
    values: torch.Tensor,
    ids: torch.Tensor,
    whole: bool,
    params: SamplingParams,
    generator: torch.Generator,
) -> torch.Tensor | None:
    """`next_tokens` on rows whose sorted largest scaled logits are `values` (ids `ids`,
    the whole vocabulary if `whole`); None if the top-k's boundary ties may reach past
    them."""
    kth = values[:, params.top_k - 1 : params.top_k]
    if not whole and bool((values[:, -1:] >= kth).any()):
        return None
    kept = values.masked_fill(values < kth, float("-inf"))  # top_k_filter: ties stay
    if params.top_p < 1.0:  # top_p_filter, on values already sorted
        probs = torch.softmax(kept, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs
        keep = mass_before < params.top_p
        keep[..., 0] = True
        kept = kept.masked_fill(~keep, float("-inf"))
    # _draw: the kept values are each row's first ones, as its own topk would give them
    width = int(torch.isfinite(kept).sum(dim=-1).max())
    choice = torch.multinomial(torch.softmax(kept[:, :width], dim=-1), 1, generator=generator)
    return ids[:, :width].gather(-1, choice).squeeze(-1)


def _picked(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The logits of `rows` (ascending): the tensor itself, not a copy, when they are all of
    its rows."""
    return logits if len(rows) == logits.shape[0] else logits[rows]


def _rows(groups: list[RowGroup], device) -> torch.Tensor:
    return torch.tensor(
        [row for g in groups for row in range(g.start, g.start + g.count)], device=device
    )
