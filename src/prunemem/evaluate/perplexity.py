"""Token-weighted perplexity over held-out text with a sliding window.

Windows of ``window`` tokens start every ``stride`` tokens; each window scores only the tokens
no earlier window scored, each with at least ``window - stride`` tokens of context. With
``stride < window`` every token after the first is scored exactly once; with ``stride == window``
the first token of each window has no context and is skipped. Perplexity = exp(total NLL /
scored tokens), so longer documents weigh more (token-weighted).
"""

from __future__ import annotations

import math

import torch


@torch.inference_mode()
def perplexity(model, tokens: torch.Tensor, window: int, stride: int, progress=None) -> tuple[float, int]:
    """(perplexity, number of scored tokens) for a 1-D token stream."""
    tokens = tokens.long().flatten()
    total_nll, scored, done = 0.0, 0, 1  # token 0 has no context and is never scored
    starts = range(0, max(1, tokens.numel() - 1), stride)
    for start in (progress(starts) if progress else starts):
        end = min(start + window, tokens.numel())
        if end <= done:
            continue
        ids = tokens[start:end].unsqueeze(0)
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                       position_ids=torch.arange(ids.shape[1]).unsqueeze(0)).logits[0, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
        fresh = end - max(done, start + 1)  # targets at positions max(done, start+1)..end-1
        total_nll += float(nll[-fresh:].double().sum())
        scored += fresh
        done = end
        if end == tokens.numel():
            break
    return math.exp(total_nll / scored), scored
