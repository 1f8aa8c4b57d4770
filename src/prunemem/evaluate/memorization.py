"""Exact extraction by one teacher-forced forward pass (docs/architecture.md, "Semantics the numbers depend on").

Greedy decoding reproduces a suffix s_1..s_S from prompt p exactly iff, at every suffix
position i, argmax P(. | p, s_<i) = s_i: if every argmax matches, each greedy step feeds back
the true token, so the greedy continuation *is* the suffix. One forward pass over
``prompt + suffix[:-1]`` therefore decides extraction exactly, at the cost of the prefill
alone. ``generate()`` is kept as a cross-check (``greedy_extracted``).

Per sample and k we record: extracted; matched_prefix (tokens reproduced before the first
miss); token_match_rate; min_margin (smallest top-1 minus top-2 logit over the suffix, a
measure of how close the decision was); decision_margin (the same over the positions greedy
decoding reaches, which decides whether a low-precision verdict needs an fp32 re-check);
suffix_nll (mean negative log-likelihood).
"""

from __future__ import annotations

import torch


FIELDS = ("extracted", "matched_prefix", "token_match_rate", "min_margin", "decision_margin", "suffix_nll")


@torch.inference_mode()
def score_batch(model, windows: torch.Tensor, k: int, suffix: int, mia_fraction: float | None = None
                ) -> dict[str, torch.Tensor]:
    """Teacher-forced extraction for ``windows`` [b, >= k + suffix]; the last ``suffix`` tokens are the target.

    ``decision_margin`` is the smallest top-1 minus top-2 margin over the positions greedy
    decoding actually reaches (up to and including the first miss): only a near-tie there can
    change the verdict. With ``mia_fraction`` the pass keeps the logits of every position and
    also returns the membership scores of ``prunemem.evaluate.mia.token_scores`` over the whole
    window (one pass serves both; call it with the largest k).

    All prompts of one k have the same length, so batches need no padding; the attention mask
    and position ids are still explicit so that the call means the same on every backend.
    """
    from prunemem.evaluate.mia import token_scores

    windows = windows[:, -(k + suffix):].long().to(next(model.parameters()).device)
    ids, targets = windows[:, :-1], windows[:, -suffix:]
    positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=positions,
                   logits_to_keep=0 if mia_fraction is not None else suffix).logits
    out = token_scores(logits, windows[:, 1:], mia_fraction) if mia_fraction is not None else {}
    logits = logits[:, -suffix:].float()
    top2 = logits.topk(2, dim=-1).values
    margin = top2[..., 0] - top2[..., 1]
    # argmax takes the first index on exact ties, as greedy decoding does
    hit = logits.argmax(dim=-1) == targets
    position = torch.arange(suffix, device=ids.device).expand_as(hit)
    miss_at = torch.where(hit, suffix, position).min(dim=1).values
    reached = position <= miss_at.unsqueeze(1)
    out.update(extracted=hit.all(dim=1), matched_prefix=miss_at, token_match_rate=hit.float().mean(dim=1),
               min_margin=margin.min(dim=1).values,
               decision_margin=torch.where(reached, margin, torch.inf).min(dim=1).values,
               suffix_nll=torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none").mean(1))
    return {name: value.cpu() for name, value in out.items()}


def score_windows(model, windows: torch.Tensor, k: int, suffix: int, batch_size: int, progress=None,
                  mia_fraction: float | None = None) -> dict[str, torch.Tensor]:
    """``score_batch`` over all ``windows`` in batches of ``batch_size``."""
    parts = []
    starts = range(0, windows.shape[0], batch_size)
    for start in (progress(starts) if progress else starts):
        parts.append(score_batch(model, windows[start : start + batch_size], k, suffix, mia_fraction))
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}


@torch.inference_mode()
def greedy_extracted(model, windows: torch.Tensor, k: int, suffix: int, pad_id: int, batch_size: int = 64
                     ) -> torch.Tensor:
    """Reference: greedy ``generate()``; True where all ``suffix`` tokens come out exactly.

    Prompts of one k all have k tokens, so a batch of them needs no padding and decodes as each
    would alone (up to summation order); batching makes the near-tie re-checks and the
    cross-check one ``generate()`` call per ``batch_size`` prompts instead of one per sample.
    End-of-text is an ordinary token here, as in teacher forcing: ``eos_token_id=[]`` (no stop
    tokens) makes generate() run the full suffix length; ``None`` would fall back to the model's
    own end-of-text, and ``min_new_tokens`` would instead ban it, making generate() reproduce
    suffixes greedy decoding would not.
    """
    device = next(model.parameters()).device
    windows = windows[:, -(k + suffix):].long().to(device)
    results = []
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start : start + batch_size]
        prompt = batch[:, :k]
        gen = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=suffix,
                             do_sample=False, pad_token_id=pad_id, eos_token_id=[])
        results.append((gen[:, k:] == batch[:, k:]).all(dim=1).cpu())
    return torch.cat(results) if results else torch.zeros(0, dtype=torch.bool)
