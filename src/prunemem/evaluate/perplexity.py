"""Token-weighted perplexity over held-out text with a sliding window.

Windows of ``window`` tokens start every ``stride`` tokens; each window scores only the tokens
no earlier window scored, each with at least ``window - stride`` tokens of context. With
``stride < window`` every token after the first is scored exactly once; with ``stride == window``
the first token of each window has no context and is skipped. Perplexity = exp(total NLL /
scored tokens), so longer documents weigh more (token-weighted).

Full-length windows are scored in batches; each window's NLL sum is kept separately so a
long job can be resumed window batch by window batch.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


class Span(NamedTuple):
    start: int  # first token fed to the model
    end: int  # one past the last token fed
    first_scored: int  # first token whose NLL counts


def spans(n_tokens: int, window: int, stride: int) -> list[Span]:
    """The windows over a stream of ``n_tokens``; token 0 has no context and is never scored."""
    out, done = [], 1
    for start in range(0, max(1, n_tokens - 1), stride):
        end = min(start + window, n_tokens)
        if end > done:
            out.append(Span(start, end, max(done, start + 1)))
            done = end
        if end == n_tokens:
            break
    return out


@torch.inference_mode()
def span_nll(model, tokens: torch.Tensor, batch: list[Span]) -> torch.Tensor:
    """Float64 NLL sum of each span's scored tokens; spans of equal length share one forward pass."""
    device = next(model.parameters()).device
    sums = torch.zeros(len(batch), dtype=torch.float64)
    by_length: dict[int, list[int]] = {}
    for i, span in enumerate(batch):
        by_length.setdefault(span.end - span.start, []).append(i)
    for length, members in by_length.items():
        ids = torch.stack([tokens[batch[i].start : batch[i].end] for i in members]).long().to(device)
        positions = torch.arange(length, device=device).expand_as(ids)
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=positions).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), ids[:, 1:], reduction="none")
        for row, i in enumerate(members):
            fresh = batch[i].end - batch[i].first_scored
            sums[i] = nll[row, -fresh:].double().sum().cpu()
    return sums


def perplexity(model, tokens: torch.Tensor, window: int, stride: int, batch_size: int = 1,
               progress=None) -> tuple[float, int]:
    """(perplexity, number of scored tokens) for a 1-D token stream."""
    tokens = tokens.long().flatten()
    todo = spans(tokens.numel(), window, stride)
    starts = range(0, len(todo), batch_size)
    total = sum(float(span_nll(model, tokens, todo[i : i + batch_size]).sum())
                for i in (progress(starts) if progress else starts))
    return combine(total, todo)


def combine(total_nll: float, todo: list[Span]) -> tuple[float, int]:
    scored = sum(span.end - span.first_scored for span in todo)
    return math.exp(total_nll / scored), scored
