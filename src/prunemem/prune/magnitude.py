"""Exact magnitude-style masks: per-tensor and global, with deterministic tie-breaking.

Following "Pruning as a Defense: Reducing Memorization in Large Language Models" (Gupta et
al., arXiv 2502.15796): weights are ranked by L1 magnitude |w| and the lowest are removed.

Counting rule: level p over a group of n weights removes exactly floor(p * n) of them.
Tie rule: among equal scores, the weight that comes first is removed first, where order is
(tensor order in the group, then flat row-major index).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

ScoreFn = Callable[[str], torch.Tensor]


def n_to_prune(level: float, n: int) -> int:
    return math.floor(level * n + 1e-9) if level > 0 else 0


def tensor_mask(scores: torch.Tensor, level: float) -> torch.Tensor:
    """Keep-mask (True = kept) removing the floor(level * n) lowest scores of one tensor."""
    flat = scores.detach().flatten()
    mask = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    k = n_to_prune(level, flat.numel())
    if k:
        mask[torch.sort(flat, stable=True).indices[:k]] = False
    return mask.view(scores.shape)


def _ordered_bits(scores: torch.Tensor) -> torch.Tensor:
    """Non-negative float32 scores as int32 bit patterns, which sort in the same order."""
    scores = scores.detach().float()
    if not torch.isfinite(scores).all() or (scores < 0).any():
        raise ValueError("scores must be finite and non-negative")
    return (scores + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into +0.0


def global_masks(names: list[str], score: ScoreFn, level: float) -> dict[str, torch.Tensor]:
    """One threshold over all ``names`` removing exactly floor(level * N) weights.

    Hand-written because ``torch.nn.utils.prune.global_unstructured`` concatenates every
    score (over 100 GB at 12B): here the threshold is found by bisection over the float bit
    patterns, 31 counting passes that each hold one tensor's scores at a time.
    """
    sizes = {n: score(n).numel() for n in names}
    k = n_to_prune(level, sum(sizes.values()))
    if k == 0:
        return {n: torch.ones_like(score(n), dtype=torch.bool) for n in names}

    def count(predicate: Callable[[torch.Tensor], torch.Tensor]) -> int:
        return sum(int(predicate(_ordered_bits(score(n))).sum()) for n in names)

    lo, hi = 0, 0x7F800000  # +0.0 .. +inf
    while lo < hi:  # smallest t with #{bits <= t} >= k
        mid = (lo + hi) // 2
        if count(lambda b: b <= mid) >= k:
            hi = mid
        else:
            lo = mid + 1
    threshold = lo
    ties_left = k - count(lambda b: b < threshold)
    masks = {}
    for n in names:
        bits = _ordered_bits(score(n))
        mask = bits > threshold
        if ties_left:
            tied = (bits == threshold).flatten().nonzero().flatten()
            spare = tied[ties_left:]  # ties beyond the quota are kept, first-come pruned first
            ties_left = max(0, ties_left - tied.numel())
            mask.view(-1)[spare] = True
        else:
            mask |= bits == threshold
        masks[n] = mask
    return masks


def random_mask(shape: torch.Size, level: float, generator: torch.Generator) -> torch.Tensor:
    """Uniformly random keep-mask removing exactly floor(level * n) entries (the control)."""
    n = math.prod(shape)
    mask = torch.ones(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=generator)[: n_to_prune(level, n)]] = False
    return mask.view(shape)


def all_kept(names: Iterable[str], score: ScoreFn) -> dict[str, torch.Tensor]:
    return {n: torch.ones(score(n).shape, dtype=torch.bool) for n in names}
