"""Build and apply compression transforms (the artifact is a JSON record, see the package docstring).

    prunemem transform --model tiny --method int4 --level 0
    prunemem transform --model tiny --method lowrank --level 0.5
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Iterable

import torch

from prunemem.compress.lowrank import rank_for, truncated_svd
from prunemem.compress.quantize import bits_per_weight, quantize_dequantize
from prunemem.errors import PrunememError
from prunemem.provenance import record, write_json

log = logging.getLogger(__name__)

FORMAT = "prunemem-transform/1"


def _transform_one(name: str, weight: torch.Tensor, spec: dict, key: str) -> tuple[torch.Tensor, float]:
    """(transformed weight, parameters-or-bits kept in units of 16-bit weights)."""
    rows, cols = weight.shape
    try:
        if spec["kind"] == "quantize":
            out = quantize_dequantize(weight, spec["bits"], spec["group_size"], spec["symmetric"])
            return out, weight.numel() * bits_per_weight(spec["bits"], spec["group_size"], cols, spec["symmetric"]) / 16
        rank = rank_for(spec["keep"], rows, cols)
        if rank < 1:
            raise ValueError(f"keep {spec['keep']} leaves rank 0 for this {rows}x{cols} matrix")
        return truncated_svd(weight, rank), rank * (rows + cols)
    except ValueError as err:
        raise PrunememError(f"{key}: {err} ({name})") from None


def transformed(named_weights: Iterable[tuple[str, torch.Tensor]], spec: dict, key: str):
    """Yield (name, new weight, kept units, total units) for each prunable weight."""
    for name, weight in named_weights:
        new, kept = _transform_one(name, weight, spec, key)
        yield name, new, kept, weight.numel()


def _digest_update(digest, name: str, tensor: torch.Tensor) -> None:
    digest.update(name.encode() + b"\0" + str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
    digest.update(tensor.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())


def build_transform(plan, model: str, method: str, level: str) -> Path:
    from prunemem.checkpoints import WEIGHTS, checkpoint_hash
    from prunemem.prune.targets import WeightSource

    ckpt = plan.checkpoint_dir(model)
    spec = plan.transform_spec(method, level)
    torch.set_num_threads(plan.params["evaluate"]["threads"])  # the thread count evaluation recomputes it with
    source = WeightSource(ckpt / WEIGHTS)
    digest, kept, total = hashlib.sha256(), 0.0, 0
    for name, new, k, n in transformed(((n, source[n]) for n in source.names), spec, plan.param_key(method)):
        _digest_update(digest, name, new)
        kept, total = kept + k, total + n
    out = plan.transform_path(model, method, level)
    ckpt_sha = checkpoint_hash(ckpt)
    write_json(out, {
        "format": FORMAT, "method": method, "level": level, "spec": spec, "checkpoint_sha256": ckpt_sha,
        "weights_sha256": digest.hexdigest(), "compression": kept / total,
        "provenance": record("transform", {"checkpoint": ckpt_sha}, {"method": method, "level": level, **spec}),
    })
    log.info("%s @ %s: compression %.4f, weights %s", method, level, kept / total, digest.hexdigest()[:12])
    return out


@torch.no_grad()
def apply_transform(model: torch.nn.Module, path: str | Path) -> dict:
    """Transform ``model``'s prunable weights in place as recorded; verify the result's hash."""
    from prunemem.prune.targets import prunable

    path = Path(path)
    try:
        rec = json.loads(path.read_text())
    except FileNotFoundError:
        raise PrunememError(f"{path}: transform record not found") from None
    except json.JSONDecodeError as err:
        raise PrunememError(f"{path}: not a readable transform record ({err.msg})") from None
    if rec.get("format") != FORMAT:
        raise PrunememError(f"{path}: not a prunemem transform (format {rec.get('format')!r})")
    have = getattr(model, "prunemem_checkpoint_sha256", None)
    if have != rec["checkpoint_sha256"]:
        raise PrunememError(f"{path}: transform was made for checkpoint {rec['checkpoint_sha256'][:12]}..., "
                            f"not this model's {str(have)[:12]}...")
    params = dict(model.named_parameters())
    names = [t.name for t in prunable(list(params))]
    digest = hashlib.sha256()
    for name, new, _, _ in transformed(((n, params[n]) for n in names), rec["spec"], rec["method"]):
        params[name].copy_(new)
        _digest_update(digest, name, params[name])
    if digest.hexdigest() != rec["weights_sha256"]:
        raise PrunememError(f"{path}: transformed weights hash {digest.hexdigest()[:12]}... differs from the "
                            f"recorded {rec['weights_sha256'][:12]}... (different device or library?)")
    return rec
