"""One mask job: compute a method's mask from a checkpoint (and the calibration set), save it.

    prunemem mask --model tiny --method global --level 0.5
    prunemem mask --model tiny --method wanda  --level 0.5     # reads data/samples/tiny/calibration.parquet
    prunemem mask --model tiny --method evop-mem --level 0.5   # also reads data/samples/tiny/search.parquet

Calibrated methods compute where ``prune.device`` / ``prune.dtype`` say (``auto``: CUDA in
bfloat16 when visible), resident or block-streamed from host memory per ``prune.offload`` and the
memory plan (``prunemem.memplan``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from prunemem.blockwise import Placement, place, resolve_placement
from prunemem.checkpoints import WEIGHTS, checkpoint_hash, load_model
from prunemem.data.samples import load_calibration_pool, load_search_split, samples_hash
from prunemem.plan import Plan, lookup
from prunemem.provenance import read_parquet, record
from prunemem.prune import ccds, masks
from prunemem.prune.methods import MaskContext, compute
from prunemem.prune.targets import WeightSource
from prunemem.runtime import deterministic

log = logging.getLogger(__name__)


def search_windows(samples_dir: Path, suffix: int):
    """The search split's windows (possibly none), refused when it overlaps the evaluation members."""
    import torch

    if read_parquet(samples_dir / "search.parquet", "search split").height == 0:
        return torch.zeros(0, 0, dtype=torch.long)
    return load_search_split(samples_dir, suffix)


def build_mask(plan: Plan, model: str, method: str, level: str) -> Path:
    cfg, samples = plan.params["prune"], plan.params["samples"]
    resolved = plan.method(method)
    deterministic(lookup(plan.params, resolved.threads))  # the one thread knob of this job (registry trait)
    ckpt = plan.checkpoint_dir(model)
    calibrated = resolved.calibrated
    # before any file is read: prune.device: cuda without CUDA, or a model the plan does not fit, is one line
    placement = resolve_placement(cfg, "prune", ckpt, resolved, samples["calibration"]["sequences"],
                                  samples["calibration"]["tokens"]) if calibrated else Placement()
    ckpt_sha = checkpoint_hash(ckpt)
    inputs = {"checkpoint": ckpt_sha}
    if calibrated:
        inputs["samples"] = samples_hash(plan.samples_dir(model))
    chosen: dict = {}
    models: dict = {}

    def dense_model():
        """The model a method edits, loaded once in the placement's dtype and placed."""
        model = models.pop("spare", None) or place(load_model(ckpt, dtype=placement.dtype), placement)
        models["current"] = model
        return model

    def embedding_model():
        """CCDS embeds with the method's own model (still dense: methods read calibration before editing)."""
        if "current" not in models:
            models["spare"] = place(load_model(ckpt, dtype=placement.dtype), placement)
        return models.get("current", models.get("spare"))

    def calibration():
        if "sequences" in chosen:  # OWL reads it twice; the choice (and CCDS's embedding) is made once
            return chosen["sequences"]
        pool = load_calibration_pool(plan.samples_dir(model))
        sequences, how = ccds.select(pool, samples["calibration"]["sequences"], resolved.calibration,
                                     samples["seed"], lookup(plan.params, "prune.ccds.clusters"),
                                     load_model=embedding_model)
        chosen.update(how)
        chosen["sequences"] = sequences
        log.info("%s @ %s: %s calibration, pool windows %s", method, level, how["sampling"], how["indices"])
        return sequences

    ctx = MaskContext(WeightSource(ckpt / WEIGHTS), cfg, load_model=dense_model,
                      calibration=calibration if calibrated else None,
                      search_split=lambda: load_search_split(plan.samples_dir(model), samples["suffix_tokens"]),
                      samples=samples, pool=lambda: load_calibration_pool(plan.samples_dir(model)),
                      cache_dir=plan.root / ".snakemake" / "prunemem" / "adapruner",
                      members=lambda: read_parquet(plan.samples_dir(model) / "members.parquet",
                                                                    "member samples"),
                      search_members=lambda: search_windows(plan.samples_dir(model), samples["suffix_tokens"]))
    log.info("%s @ %s: computing from checkpoint %s", method, level, ckpt_sha[:12])
    result = compute(resolved, ctx, float(level))
    chosen.pop("sequences", None)
    info = {**result.info, **({"calibration": chosen} if chosen else {})}
    pruned = sum(m.numel() - m.kept for m in result.masks.values())
    total = sum(m.numel() for m in result.masks.values())
    log.info("%s @ %s: pruned %d of %d prunable weights (%.4f)%s", method, level, pruned, total, pruned / total,
             f", removed {result.removed_blocks or result.removed_sublayers or len(result.removed_units)}"
             if result.removed_blocks or result.removed_sublayers or result.removed_units else "")
    out = plan.mask_path(model, method, level)
    prov = record("mask", inputs, plan.stage_params("mask", model, method, level))
    masks.save(out, result.masks, method=method, level=level, checkpoint_sha256=ckpt_sha, provenance=prov,
               updated=result.updated, removed_blocks=result.removed_blocks, block_levels=result.block_levels,
               removed_sublayers=result.removed_sublayers, removed_units=result.removed_units, info=info)
    return out
