"""Choosing the next token from logits: temperature, top-k and top-p as pure functions."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

BLOCK = 128  # logits screened together by their maximum in `largest` and `first_largest`


@dataclass(frozen=True)
class SamplingParams:
    temperature: float  # 0 => greedy
    top_p: float  # 1.0 => off
    top_k: int  # 0 => off
    max_output_tokens: int
    stop_sequences: tuple[str, ...] = ()
    candidate_count: int = 1
    seed: int | None = None  # same seed + same request => same output


def largest(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Each row's k largest logits (rows, vocab), in descending order, equal ones in
    ascending order of id, and their ids: the values torch.topk gives, in a fraction of its
    time over a large vocabulary (16 rows of 262k: about 1 ms against 4.4). The vocabulary
    is cut into blocks of BLOCK logits, and only the k blocks with the largest maxima are
    searched: a logit outside them is at most the k-th of those maxima, so no larger than
    any of the k logits those maxima are. Which of equal logits at the k-th place is taken
    is torch.topk's choice; the order of the others does not depend on k (a draw's token
    does not depend on the widths other requests in its batch ask for)."""
    rows, vocab = logits.shape
    blocks = vocab // BLOCK
    if blocks < k:
        return _in_order(*torch.topk(logits, k))
    body = _blocks(logits, blocks)
    chosen = torch.topk(body.amax(dim=-1), k).indices  # (rows, k)
    within = torch.arange(BLOCK, device=logits.device)
    candidates = body.gather(1, chosen[..., None].expand(-1, -1, BLOCK)).view(rows, -1)
    ids = (chosen[..., None] * BLOCK + within).view(rows, -1)
    if blocks * BLOCK < vocab:  # the tail beyond the last whole block is always searched
        tail = torch.arange(blocks * BLOCK, vocab, device=logits.device)
        candidates = torch.cat([candidates, logits[:, tail]], dim=1)
        ids = torch.cat([ids, tail.expand(rows, -1)], dim=1)
    values, where = torch.topk(candidates, k)
    return _in_order(values, ids.gather(-1, where))


def _in_order(values: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
    """Values (rows, k) and their ids sorted by value, descending, then by id."""
    by_id = ids.argsort(dim=-1)
    values, ids = values.gather(-1, by_id), ids.gather(-1, by_id)
    by_value = values.argsort(dim=-1, descending=True, stable=True)
    return values.gather(-1, by_value), ids.gather(-1, by_value)


def first_largest(logits: Tensor) -> Tensor:
    """Each row's argmax (the first of equal largest logits) found through block maxima: over
    a 262k vocabulary several times quicker than torch.argmax. Logits with a NaN anywhere
    take torch.argmax itself (which counts NaN largest)."""
    rows, vocab = logits.shape
    blocks = vocab // BLOCK
    if blocks == 0:
        return logits.argmax(dim=-1)
    body = _blocks(logits, blocks)
    # each block's maximum, then the logits of the tail beyond the last whole block
    screened = torch.cat([body.amax(dim=-1), logits[:, blocks * BLOCK :]], dim=1)
    top = screened.amax(dim=-1, keepdim=True)
    if bool(top.isnan().any()):
        return logits.argmax(dim=-1)
    # argmax of a boolean names its first True: the first block holding the maximum (or a
    # place in the tail), then the maximum's first place in that block
    found = screened.eq(top).to(torch.uint8).argmax(dim=-1)
    block = found.clamp(max=blocks - 1)
    row_ids = torch.arange(rows, device=logits.device)
    in_block = body[row_ids, block].eq(top).to(torch.uint8).argmax(dim=-1)
    return torch.where(found < blocks, block * BLOCK + in_block, found - blocks + blocks * BLOCK)


def _blocks(logits: Tensor, blocks: int) -> Tensor:
    """The first `blocks` * BLOCK logits of each row as (rows, blocks, BLOCK), a view."""
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    return logits.as_strided((logits.shape[0], blocks, BLOCK), (logits.stride(0), BLOCK, 1))


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Logits (rows, vocab) with all but each row's k largest set to -inf; k <= 0 is off."""
    if k <= 0 or k >= logits.shape[-1]:  # top-k over the whole vocabulary keeps it all
        return logits
    kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Logits (rows, vocab) keeping each row's smallest set of most likely tokens whose
    probability reaches p (always at least the most likely one); p >= 1 is off."""
    if p >= 1.0:
        return logits
    top_probs, top_ids = _most_likely(torch.softmax(logits, dim=-1), p)
    mass_before = torch.cumsum(top_probs, dim=-1) - top_probs
    keep_sorted = mass_before < p
    keep_sorted[..., 0] = True
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, top_ids, keep_sorted)
    return logits.masked_fill(~keep, float("-inf"))


def _most_likely(probs: torch.Tensor, mass: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's most likely tokens, sorted, enough of them to reach `mass` in every row.
    Growing top-k instead of one full sort: sorting a 262k vocabulary costs tens of ms."""
    vocab = probs.shape[-1]
    width = min(vocab, 64)
    while True:
        values, ids = largest(probs, width)
        if width == vocab or bool((values.sum(dim=-1) >= mass).all()):
            return values, ids
        width = min(vocab, width * 8)


def next_tokens(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator
) -> torch.Tensor:
    """One token id per row of logits (rows, vocab)."""
    if params.temperature <= 0:
        return _finite(logits).argmax(dim=-1)
    scaled = _scaled(logits, params.temperature)
    return _draw(top_p_filter(top_k_filter(scaled, params.top_k), params.top_p), generator)


def _finite(logits: torch.Tensor) -> torch.Tensor:
    """Logits in float32 with NaN as -inf and +inf as the largest float."""
    return torch.nan_to_num(
        logits.float(),
        nan=float("-inf"),
        posinf=torch.finfo(torch.float32).max,
        neginf=float("-inf"),
    )


def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits over the temperature, each row shifted so that its largest is 0 (softmax,
    top-k and top-p do not change under the shift). However small the temperature, each
    row keeps a finite logit: 0 / t is 0 where x / t for x < 0 may become -inf, and below
    1e-30, where t itself would round to 0 in float32, the division is in float64. A row
    with no finite logit at all becomes uniform."""
    logits = _finite(logits)
    top = logits.amax(dim=-1, keepdim=True)
    if not bool(torch.isfinite(top).all()):
        logits = torch.where(torch.isfinite(top), logits, torch.zeros_like(logits))
        top = torch.nan_to_num(top, neginf=0.0)
    shifted = logits - top
    if temperature >= 1e-30:
        return shifted / temperature
    return (shifted.double() / temperature).float()


def _draw(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token per row, drawn among its finite logits only: drawing from a whole 262k
    vocabulary costs several ms per row. Every row has at least one finite logit (see
    `_scaled`), so the draw is never among zero tokens."""
    width = max(int(torch.isfinite(logits).sum(dim=-1).max()), 1)
    if width == logits.shape[-1]:
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    values, ids = largest(logits, width)
    choice = torch.multinomial(torch.softmax(values, dim=-1), 1, generator=generator)
    return ids.gather(-1, choice).squeeze(-1)
