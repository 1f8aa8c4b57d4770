"""Pruning methods, registered by name. Each returns a keep-mask for every prunable tensor.

    prunemem mask --model tiny --method global --level 0.5

``level`` is the fraction of the method's own target set that is removed. Methods that
restrict themselves to a subset (attention, mlp, first25, last25) leave the other prunable
tensors whole, so their ``achieved_sparsity`` over all prunable weights is lower than ``level``.
"""

from __future__ import annotations

import zlib
from typing import Callable

import torch

from prunemem.prune import magnitude
from prunemem.prune.targets import subset

MaskFn = Callable[["object", float, dict], dict[str, torch.Tensor]]


def _magnitude_subset(which: str) -> MaskFn:
    def method(source, level: float, cfg: dict) -> dict[str, torch.Tensor]:
        chosen = [t.name for t in subset(source.targets, which, cfg["block_fraction"])]

        def score(name: str) -> torch.Tensor:
            return source[name].abs()

        masks = magnitude.all_kept(source.names, score)
        masks.update(magnitude.global_masks(chosen, score, level))
        return masks

    method.__doc__ = f"Global L1 magnitude restricted to {which} prunable tensors."
    return method


def layerwise(source, level: float, cfg: dict) -> dict[str, torch.Tensor]:
    """Every prunable matrix pruned to exactly ``level`` by L1 magnitude."""
    return {n: magnitude.tensor_mask(source[n].abs(), level) for n in source.names}


def random(source, level: float, cfg: dict) -> dict[str, torch.Tensor]:
    """Control: every prunable matrix pruned to exactly ``level`` uniformly at random (seeded per tensor)."""
    out = {}
    for name in source.names:
        gen = torch.Generator().manual_seed(cfg["seed"] * 1_000_003 + zlib.crc32(name.encode()))
        out[name] = magnitude.random_mask(source[name].shape, level, gen)
    return out


METHODS: dict[str, MaskFn] = {
    "layerwise": layerwise,
    "global": _magnitude_subset("all"),
    "attention": _magnitude_subset("attention"),
    "mlp": _magnitude_subset("mlp"),
    "first25": _magnitude_subset("first"),
    "last25": _magnitude_subset("last"),
    "random": random,
}


def compute(method: str, source, level: float, cfg: dict) -> dict[str, torch.Tensor]:
    if method not in METHODS:
        from prunemem.errors import PrunememError

        raise PrunememError(f"prune.methods: unknown method {method!r}; allowed: {', '.join(METHODS)}")
    return METHODS[method](source, level, cfg)
