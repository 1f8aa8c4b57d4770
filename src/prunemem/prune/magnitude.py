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


def _ordered_bits(scores: torch.Tensor, check: bool = False) -> torch.Tensor:
    """Non-negative float32 scores as int32 bit patterns, which sort in the same order."""
    scores = scores.detach().float()
    if check and (not torch.isfinite(scores).all() or (scores < 0).any()):
        raise ValueError("scores must be finite and non-negative")
    return (scores + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into +0.0


CHUNK = 1 << 20  # scores handled per step: transients stay ~16 MB whatever the tensor (a 12B MLP matrix is 105M)


def _chunks(scores: torch.Tensor):
    flat = scores.detach().flatten()
    for start in range(0, flat.numel(), CHUNK):
        yield start, flat[start : start + CHUNK]


def _kth_bits(names: list[str], score: ScoreFn, level: float) -> tuple[int, int, int]:
    """(k, t, below): k = floor(level * N), the bit pattern t of the k-th smallest score, and how many are below t.

    Two histogram passes, exact: the high 16 bits of every pattern pick the bucket holding the
    k-th score, the low 16 bits within that bucket pick the value.
    """
    high, total = None, 0
    for n in names:
        for _, part in _chunks(score(n)):
            bits = _ordered_bits(part, check=True)
            if high is None:  # patterns of finite non-negatives < 0x7F800000, counted where the scores live
                high = torch.zeros(1 << 15, dtype=torch.int64, device=bits.device)
            high += torch.bincount(bits >> 16, minlength=1 << 15)
            total += bits.numel()
    k = n_to_prune(level, total)
    if k == 0:
        return 0, -1, 0
    cum = high.cumsum(0)
    bucket = int(torch.searchsorted(cum, k))  # first bucket whose cumulative count reaches k
    below = int(cum[bucket - 1]) if bucket else 0
    low = torch.zeros(1 << 16, dtype=torch.int64, device=high.device)
    for n in names:
        for _, part in _chunks(score(n)):
            bits = _ordered_bits(part)
            low += torch.bincount(bits[(bits >> 16) == bucket] & 0xFFFF, minlength=1 << 16)
    cum_low = low.cumsum(0)
    offset = int(torch.searchsorted(cum_low, k - below))
    return k, (bucket << 16) | offset, below + (int(cum_low[offset - 1]) if offset else 0)


def global_masks(names: list[str], score: ScoreFn, level: float, pack: bool = True) -> dict:
    """One threshold over all ``names`` removing exactly floor(level * N) weights.

    Hand-written because ``torch.nn.utils.prune.global_unstructured`` concatenates every
    score (over 100 GB at 12B): here the k-th smallest score is found with two histogram
    passes over the float bit patterns (``_kth_bits``), each holding one tensor's scores at a
    time and working through them ``CHUNK`` at a time, and a third pass writes the masks, each
    packed to bits (``masks.BitMask``, 1/8 byte per weight) as soon as it is made; ``pack=False``
    returns bool tensors. Extra memory: the packed masks plus one tensor's scores.
    """
    from prunemem.prune.masks import BitMask, pack_bits

    k, threshold, below = _kth_bits(names, score, level)
    ties_left = k - below
    masks = {}
    for n in names:
        scores = score(n)
        packed, kept, parts = [], 0, []
        for _, part in _chunks(scores):
            bits = _ordered_bits(part)
            mask = bits > threshold
            tied = (bits == threshold).nonzero().flatten()
            mask[tied[ties_left:]] = True  # ties beyond the quota are kept, first-come pruned first
            ties_left = max(0, ties_left - tied.numel())
            kept += int(mask.sum())
            (packed if pack else parts).append(pack_bits(mask) if pack else mask)
        if pack:  # CHUNK is a multiple of 8, so the chunks' bytes concatenate to the tensor's packing
            masks[n] = BitMask(torch.cat(packed), tuple(scores.shape), kept)
        else:
            masks[n] = torch.cat(parts).view(scores.shape)
        del scores
    return masks


def random_mask(shape: torch.Size, level: float, generator: torch.Generator) -> torch.Tensor:
    """Uniformly random keep-mask removing exactly floor(level * n) entries (the control)."""
    n = math.prod(shape)
    mask = torch.ones(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=generator)[: n_to_prune(level, n)]] = False
    return mask.view(shape)


def all_kept(names: Iterable[str], score: ScoreFn) -> dict:
    from prunemem.prune.masks import BitMask

    return {n: BitMask.of(torch.ones(score(n).shape, dtype=torch.bool)) for n in names}
