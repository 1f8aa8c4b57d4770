"""Pruning methods, registered by name. Each returns a keep-mask for every prunable tensor.

    prunemem mask --model tiny --method global --level 0.5

``level`` is the fraction of the method's own target set that is removed. Methods that
restrict themselves to a subset (attention, mlp, first25, last25) leave the other prunable
tensors whole, so their ``achieved_sparsity`` over all prunable weights is lower than ``level``.
Activation-aware methods (wanda, sparsegpt, owl over wanda, sleb, wanda-NofM) read the
calibration set through ``MaskContext.calibration``; N:M methods (``magnitude-2of4``,
``wanda-4of8``, ...) have the single level 1 - N/M.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass, field
from typing import Callable

import torch

from prunemem.prune import magnitude
from prunemem.prune.targets import subset

NM_METHOD = re.compile(r"^(magnitude|wanda)-([0-9]+)of([0-9]+)$")


@dataclass
class MaskContext:
    """What a method may read: weights tensor by tensor, the whole model, the calibration set."""

    source: object  # WeightSource or DictSource
    cfg: dict  # params["prune"]
    load_model: Callable[[], torch.nn.Module] | None = None
    calibration: Callable[[], torch.Tensor] | None = None


@dataclass
class MaskResult:
    masks: dict[str, torch.Tensor]
    updated: dict[str, torch.Tensor] | None = None  # SparseGPT: the compensated weights
    removed_blocks: list[int] = field(default_factory=list)  # SLEB
    block_levels: list[float] | None = None  # OWL: the sparsity given to each block


def _magnitude_subset(which: str):
    def method(ctx: MaskContext, level: float) -> MaskResult:
        source = ctx.source
        chosen = [t.name for t in subset(source.targets, which, ctx.cfg["block_fraction"])]

        def score(name: str) -> torch.Tensor:
            return source[name].abs()

        masks = magnitude.all_kept(source.names, score)
        masks.update(magnitude.global_masks(chosen, score, level))
        return MaskResult(masks)

    method.__doc__ = f"Global L1 magnitude restricted to {which} prunable tensors."
    return method


def layerwise(ctx: MaskContext, level: float) -> MaskResult:
    """Every prunable matrix pruned to exactly ``level`` by L1 magnitude."""
    return MaskResult({n: magnitude.tensor_mask(ctx.source[n].abs(), level) for n in ctx.source.names})


def random(ctx: MaskContext, level: float) -> MaskResult:
    """Control: every prunable matrix pruned to exactly ``level`` uniformly at random (seeded per tensor)."""
    out = {}
    for name in ctx.source.names:
        gen = torch.Generator().manual_seed(ctx.cfg["seed"] * 1_000_003 + zlib.crc32(name.encode()))
        out[name] = magnitude.random_mask(ctx.source[name].shape, level, gen)
    return MaskResult(out)


def _blockwise_rows(ctx: MaskContext, block_level: Callable[[int], float], nm: tuple[int, int] | None = None,
                    updated: dict | None = None, sparse_gpt: bool = False) -> dict[str, torch.Tensor]:
    """Prune block by block on the calibration pass (pruned outputs feed the next block)."""
    from prunemem.calibrate import HessianStats, blockwise
    from prunemem.prune import calibrated as cal

    model, masks = ctx.load_model(), {}
    damp = ctx.cfg.get("damp", 0.01)

    def edit(index, linears, stats):
        level = block_level(index)
        for name, module in linears.items():
            if sparse_gpt:
                new, keep = cal.sparsegpt(module.weight, stats[name].hessian, level, nm=nm, damp=damp)
                module.weight.copy_(new)
                updated[f"{name}.weight"] = new.detach().clone()
            else:
                score = cal.wanda_score(module.weight, stats[name])
                keep = cal.nm_mask(score, *nm) if nm else cal.row_mask(score, level)
                module.weight.mul_(keep)
            masks[f"{name}.weight"] = keep

    stats = (lambda m: HessianStats(m.in_features, m.weight.device)) if sparse_gpt else \
        (lambda m: cal.NormStats(m.in_features, m.weight.device))
    blockwise(model, ctx.calibration(), stats, edit)
    return masks


def wanda(ctx: MaskContext, level: float) -> MaskResult:
    """Wanda: |W| * ||X||, each output row pruned to exactly ``level``."""
    return MaskResult(_blockwise_rows(ctx, lambda i: level))


def sparsegpt(ctx: MaskContext, level: float) -> MaskResult:
    """SparseGPT: OBS pruning with weight compensation; the result carries the updated weights."""
    updated: dict[str, torch.Tensor] = {}
    masks = _blockwise_rows(ctx, lambda i: level, updated=updated, sparse_gpt=True)
    return MaskResult(masks, updated=updated)


def owl(ctx: MaskContext, level: float) -> MaskResult:
    """OWL: per-block sparsity from outlier ratios, then Wanda or magnitude within each block."""
    from prunemem.calibrate import blockwise
    from prunemem.prune import calibrated as cal

    spec, source = ctx.cfg["owl"], ctx.source
    n_blocks = max(t.layer for t in source.targets) + 1
    ratios = [0.0] * n_blocks
    if spec["score"] == "wanda":
        def measure(index, linears, stats):
            ratios[index] = cal.outlier_ratio([cal.wanda_score(m.weight, stats[n]) for n, m in linears.items()],
                                              spec["M"])

        blockwise(ctx.load_model(), ctx.calibration(), lambda m: cal.NormStats(m.in_features, m.weight.device),
                  measure)
    else:
        for index in range(n_blocks):
            names = [t.name for t in source.targets if t.layer == index]
            ratios[index] = cal.outlier_ratio([source[n].abs().double() for n in names], spec["M"])
    levels = cal.owl_levels(ratios, level, spec["lambda"])
    if spec["score"] == "wanda":
        masks = _blockwise_rows(ctx, lambda i: levels[i])
    else:
        masks = {t.name: cal.row_mask(source[t.name].abs().double(), levels[t.layer]) for t in source.targets}
    return MaskResult(masks, block_levels=levels)


def sleb(ctx: MaskContext, level: float) -> MaskResult:
    """SLEB: remove floor(level * blocks) whole blocks, greedily by calibration loss."""
    from prunemem.prune import calibrated as cal

    n_blocks = max(t.layer for t in ctx.source.targets) + 1
    removed = cal.sleb(ctx.load_model(), ctx.calibration(), math.floor(level * n_blocks + 1e-9))
    masks = {t.name: torch.full(ctx.source[t.name].shape, t.layer not in removed, dtype=torch.bool)
             for t in ctx.source.targets}
    return MaskResult(masks, removed_blocks=removed)


def _nm(ctx: MaskContext, method: str) -> MaskResult:
    from prunemem.prune import calibrated as cal

    score, n, m = nm_pattern(method)
    if score == "wanda":
        return MaskResult(_blockwise_rows(ctx, lambda i: 1 - n / m, nm=(n, m)))
    return MaskResult({name: cal.nm_mask(ctx.source[name].abs(), n, m) for name in ctx.source.names})


METHODS: dict[str, Callable[[MaskContext, float], MaskResult]] = {
    "layerwise": layerwise,
    "global": _magnitude_subset("all"),
    "attention": _magnitude_subset("attention"),
    "mlp": _magnitude_subset("mlp"),
    "first25": _magnitude_subset("first"),
    "last25": _magnitude_subset("last"),
    "random": random,
    "wanda": wanda,
    "sparsegpt": sparsegpt,
    "owl": owl,
    "sleb": sleb,
}
CALIBRATED = {"wanda", "sparsegpt", "sleb"}


def nm_pattern(method: str) -> tuple[str, int, int] | None:
    """('magnitude' | 'wanda', N, M) for an N:M method name like 'wanda-2of4', else None."""
    m = NM_METHOD.match(method)
    return (m.group(1), int(m.group(2)), int(m.group(3))) if m else None


def needs_calibration(method: str, cfg: dict) -> bool:
    if method == "owl":
        return cfg["owl"]["score"] == "wanda"
    nm = nm_pattern(method)
    return method in CALIBRATED or bool(nm and nm[0] == "wanda")


def compute(method: str, ctx: MaskContext, level: float) -> MaskResult:
    if nm_pattern(method):
        return _nm(ctx, method)
    if method not in METHODS:
        from prunemem.errors import PrunememError

        raise PrunememError(f"prune.methods: unknown method {method!r}; allowed: {', '.join(METHODS)}, "
                            "magnitude-NofM, wanda-NofM")
    return METHODS[method](ctx, level)
