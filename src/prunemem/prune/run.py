"""One mask job: read a checkpoint's weights tensor by tensor, compute a method's mask, save it.

    prunemem mask --model tiny --method global --level 0.5
"""

from __future__ import annotations

import logging
from pathlib import Path

from prunemem.checkpoints import WEIGHTS, checkpoint_hash
from prunemem.plan import Plan
from prunemem.prune import compute, masks
from prunemem.prune.targets import WeightSource
from prunemem.provenance import record

log = logging.getLogger(__name__)


def build_mask(plan: Plan, model: str, method: str, level: str) -> Path:
    ckpt = plan.checkpoint_dir(model)
    ckpt_sha = checkpoint_hash(ckpt)
    source = WeightSource(ckpt / WEIGHTS)
    keep = compute(method, source, float(level), plan.params["prune"])
    pruned = sum(int((~m).sum()) for m in keep.values())
    total = sum(m.numel() for m in keep.values())
    log.info("%s @ %s: pruned %d of %d prunable weights (%.4f)", method, level, pruned, total, pruned / total)
    out = plan.mask_path(model, method, level)
    prov = record("mask", {"checkpoint": ckpt_sha}, {"method": method, "level": level, **plan.stage_params("mask")})
    masks.save(out, keep, method=method, level=level, checkpoint_sha256=ckpt_sha, provenance=prov)
    return out
