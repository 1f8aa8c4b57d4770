"""Token-weighted perplexity over held-out text, in one of two conventions (``perplexity.mode``).

``stream`` (ours): the held-out documents are one EOS-separated stream; windows of ``window``
tokens start every ``stride`` tokens, and each scores only the tokens no earlier window scored,
each with at least ``window - stride`` tokens of context. With ``stride < window`` every token
after the first is scored exactly once; with ``stride == window`` the first token of each window
has no context and is skipped.

``document`` (lm-evaluation-harness's ``loglikelihood_rolling``, for numbers published that
way): each document is scored on its own, its first token predicted from a prefix token (BOS,
else EOS), in disjoint blocks of ``window`` predicted tokens fed ``window`` tokens each (a short
last block takes extra context from before it); the document's end-of-text is not scored.
Facts from lm_eval/utils.py (``get_rolling_token_windows`` with ``context_len=1``,
``make_disjoint_window``); ``tests/test_evaluate.py`` checks the two agree document by document.

Either way perplexity = exp(total NLL / scored tokens), so longer documents weigh more.

Full-length windows are scored in batches; each window's NLL sum is kept separately so a
long job can be resumed window batch by window batch.
"""

from __future__ import annotations

import bisect
import itertools
import math
from typing import NamedTuple

import torch


class Span(NamedTuple):
    start: int  # first token fed to the model
    end: int  # one past the last token predicted (tokens start .. end - 2 are fed)
    first_scored: int  # first token whose NLL counts


def document_spans(lengths: list[int], window: int) -> list[Span]:
    """lm-eval's rolling windows over documents laid out one after another as ``[prefix] + doc``.

    In a document of ``n`` tokens (at ``base``, after its prefix), the first block predicts
    tokens 1 .. min(window, n); each later block predicts the next ``window`` tokens (or what is
    left), fed the ``window`` tokens before its last one.
    """
    out, base = [], 0
    for n in lengths:
        predicted = 0
        while predicted < n:
            end = predicted + min(n - predicted, window)  # in document tokens, after the prefix
            out.append(Span(base + max(0, end - window), base + end + 1, base + predicted + 1))
            predicted = end
        base += n + 1
    return out


def layout(docs: list[list[int]], cfg: dict, prefix: int, eos: int) -> tuple[torch.Tensor, list[Span], list[int]]:
    """(token stream, spans, document of each span) for ``perplexity`` params ``cfg`` (see the module doc).

    ``docs`` are the perplexity set's EOS-terminated documents; ``document`` mode drops each
    trailing EOS (lm-eval scores the text alone) and puts ``prefix`` before each document.
    """
    if cfg.get("mode", "stream") == "document":
        texts = [doc[:-1] if doc and doc[-1] == eos else doc for doc in docs]
        tokens = torch.tensor([t for doc in texts for t in (prefix, *doc)], dtype=torch.long)
        todo = document_spans([len(doc) for doc in texts], cfg["window"])
        starts = list(itertools.accumulate((len(doc) + 1 for doc in texts), initial=0))
    else:
        tokens = torch.tensor([t for doc in docs for t in doc], dtype=torch.long)
        todo = spans(tokens.numel(), cfg["window"], cfg["stride"])
        starts = list(itertools.accumulate((len(doc) for doc in docs), initial=0))
    # a span belongs to the document its first scored token is in
    return tokens, todo, [bisect.bisect_right(starts, span.first_scored) - 1 for span in todo]


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
        fed = ids[:, :-1]  # the last token is only a target
        positions = torch.arange(length - 1, device=device).expand_as(fed)
        logits = model(input_ids=fed, attention_mask=torch.ones_like(fed), position_ids=positions).logits
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
