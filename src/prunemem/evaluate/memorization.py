"""Exact extraction by one teacher-forced forward pass (DESIGN.md section 3).

Greedy decoding reproduces a suffix s_1..s_S from prompt p exactly iff, at every suffix
position i, argmax P(. | p, s_<i) = s_i: if every argmax matches, each greedy step feeds back
the true token, so the greedy continuation *is* the suffix. One forward pass over
``prompt + suffix[:-1]`` therefore decides extraction exactly, at the cost of the prefill
alone. ``generate()`` is kept as a cross-check (``greedy_extracted``).

Per sample and k we record: extracted; matched_prefix (tokens reproduced before the first
miss); token_match_rate; min_margin (smallest top-1 minus top-2 logit over the suffix, a
measure of how close the decision was); suffix_nll (mean negative log-likelihood).
"""

from __future__ import annotations

import torch


@torch.inference_mode()
def score_windows(model, windows: torch.Tensor, k: int, suffix: int, batch_size: int,
                  progress=None) -> dict[str, torch.Tensor]:
    """Teacher-forced extraction for ``windows`` [n, >= k + suffix]; the last ``suffix`` tokens are the target.

    All prompts of one k have the same length, so batches need no padding; the attention mask
    and position ids are still explicit so that the call means the same on every backend.
    """
    windows = windows[:, -(k + suffix):]
    inputs, targets = windows[:, :-1], windows[:, -suffix:]
    out = {key: [] for key in ("extracted", "matched_prefix", "token_match_rate", "min_margin", "suffix_nll")}
    starts = range(0, windows.shape[0], batch_size)
    for start in (progress(starts) if progress else starts):
        ids = inputs[start : start + batch_size].long()
        tgt = targets[start : start + batch_size].long()
        positions = torch.arange(ids.shape[1]).expand_as(ids)
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=positions,
                       logits_to_keep=suffix).logits.float()
        top2 = logits.topk(2, dim=-1).values
        # argmax takes the first index on exact ties, as greedy decoding does
        hit = logits.argmax(dim=-1) == tgt
        miss_at = torch.where(hit, suffix, torch.arange(suffix).expand_as(hit)).min(dim=1).values
        out["extracted"].append(hit.all(dim=1))
        out["matched_prefix"].append(miss_at)
        out["token_match_rate"].append(hit.float().mean(dim=1))
        out["min_margin"].append((top2[..., 0] - top2[..., 1]).min(dim=1).values)
        out["suffix_nll"].append(torch.nn.functional.cross_entropy(logits.transpose(1, 2), tgt, reduction="none").mean(1))
    return {key: torch.cat(v) for key, v in out.items()}


@torch.inference_mode()
def greedy_extracted(model, windows: torch.Tensor, k: int, suffix: int, eos_id: int) -> torch.Tensor:
    """Reference: greedy ``generate()`` per sample; True where all ``suffix`` tokens come out exactly.

    No ``min_new_tokens``: banning end-of-text would make generate() reproduce suffixes that
    greedy decoding would not.
    """
    results = []
    for window in windows[:, -(k + suffix):].long():
        prompt = window[:k].unsqueeze(0)
        gen = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=suffix,
                             do_sample=False, pad_token_id=eos_id, eos_token_id=eos_id)
        produced = gen[0, k:]
        results.append(produced.numel() == suffix and bool((produced == window[k:]).all()))
    return torch.tensor(results)
