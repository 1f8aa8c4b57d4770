"""Build and apply compression transforms (the artifact is a JSON record, see the package docstring).

    prunemem transform --model tiny --method int4 --level 0
    prunemem transform --model tiny --method lowrank --level 0.5
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

from prunemem.calibrate import Placement, place, resolve_placement
from prunemem.compress.lowrank import rank_for, truncated_svd
from prunemem.compress.quantize import bits_per_weight, check, quantize_dequantize
from prunemem.errors import PrunememError
from prunemem.plan import uses_calibration
from prunemem.provenance import read_json, record, write_json
from prunemem.runtime import deterministic

log = logging.getLogger(__name__)

FORMAT = "prunemem-transform/1"


def _matrix_transform(spec: dict, key: str, name: str):
    """The per-matrix function of an uncalibrated transform: weight -> (new weight, kept 16-bit units)."""

    def apply(weight: torch.Tensor) -> tuple[torch.Tensor, float]:
        rows, cols = weight.shape
        try:
            if spec["kind"] == "quantize":
                out = quantize_dequantize(weight, spec["bits"], spec["group_size"], spec["symmetric"])
                return out, _quantized_units(weight, spec)
            rank = rank_for(spec["keep"], rows, cols)
            if rank < 1:
                raise ValueError(f"keep {spec['keep']} leaves rank 0 for this {rows}x{cols} matrix")
            return truncated_svd(weight, rank), rank * (rows + cols)
        except ValueError as err:
            raise PrunememError(f"{key}: {err} ({name})") from None

    return apply


def _quantized_units(weight: torch.Tensor, spec: dict) -> float:
    bits = bits_per_weight(spec["bits"], spec["group_size"], weight.shape[1], spec["symmetric"])
    return weight.numel() * bits / 16


@torch.no_grad()
def transform_model(model, spec: dict, key: str, calibration: torch.Tensor | None = None, progress=None,
                    batch_size: int = 8) -> float:
    """Transform the model's prunable weights in place; return the compression (kept / total units).

    Units are parameters for low-rank and 16-bit weights for quantization.
    """
    from prunemem.calibrate import HessianStats, blockwise
    from prunemem.compress.gptq import gptq
    from prunemem.prune.targets import prunable

    params = dict(model.named_parameters())
    names = [t.name for t in prunable(list(params))]
    total = sum(params[n].numel() for n in names)
    if uses_calibration(spec):
        if calibration is None:
            raise PrunememError(f"{key}: gptq needs the calibration set (samples.calibration)")
        for name in names:  # settings errors before any calibration work
            try:
                check(spec["bits"], spec["group_size"], params[name].shape[1])
            except ValueError as err:
                raise PrunememError(f"{key}: {err} ({name})") from None

        def edit(index, linears, stats):
            for module_name, module in linears.items():
                module.weight.copy_(gptq(module.weight, stats[module_name].hessian, spec["bits"], spec["group_size"],
                                         spec["symmetric"], damp=spec.get("damp", 0.01)))

        blockwise(model, calibration, lambda m: HessianStats(m.in_features, m.weight.device), edit,
                  batch_size=batch_size, progress=progress)
        return sum(_quantized_units(params[n], spec) for n in names) / total
    kept = 0.0
    for name in names:
        new, units = _matrix_transform(spec, key, name)(params[name])
        params[name].copy_(new)
        kept += units
    return kept / total


def weights_digest(model) -> str:
    """sha256 over the prunable weights (name, shape, dtype and bytes, in name order)."""
    from prunemem.prune.targets import prunable

    params = dict(model.named_parameters())
    digest = hashlib.sha256()
    for name in (t.name for t in prunable(list(params))):
        tensor = params[name].detach().contiguous().cpu()
        digest.update(f"{name}\0{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def calibration_tokens(plan, model: str, spec: dict) -> torch.Tensor | None:
    """The calibration set of a calibrated transform (None when it needs none)."""
    if not uses_calibration(spec):
        return None
    from prunemem.data.samples import load_calibration

    samples = plan.params["samples"]
    return load_calibration(plan.samples_dir(model), samples["calibration"], samples["seed"])


def build_transform(plan, model: str, method: str, level: str, progress=None) -> Path:
    from prunemem.checkpoints import checkpoint_hash, load_model

    ckpt = plan.checkpoint_dir(model)
    spec = plan.transform_spec(method, level)
    deterministic(plan.params["evaluate"]["threads"])  # the thread count evaluation recomputes it with
    placement = Placement()
    if uses_calibration(spec):  # GPTQ computes where prune.device says, checked before any weights load
        calib = plan.params["samples"]["calibration"]
        placement = resolve_placement(plan.params["prune"], "prune", ckpt, "gptq", calib["sequences"],
                                      calib["tokens"])
    net = place(load_model(ckpt, dtype=placement.dtype), placement)
    compression = transform_model(net, spec, plan.param_key(method), calibration_tokens(plan, model, spec), progress,
                                  batch_size=plan.params["prune"].get("batch_size", 8))
    digest = weights_digest(net)
    out = plan.transform_path(model, method, level)
    ckpt_sha = checkpoint_hash(ckpt)
    inputs = {"checkpoint": ckpt_sha}
    if uses_calibration(spec):
        from prunemem.data.samples import samples_hash

        inputs["samples"] = samples_hash(plan.samples_dir(model))
    write_json(out, {
        "format": FORMAT, "method": method, "level": level, "spec": spec, "param_key": plan.param_key(method),
        "checkpoint_sha256": ckpt_sha, "weights_sha256": digest, "compression": compression,
        "provenance": record("transform", inputs, plan.stage_params("transform", model, method, level)),
    })
    log.info("%s @ %s: compression %.4f, weights %s", method, level, compression, digest[:12])
    return out


@torch.no_grad()
def apply_transform(model: torch.nn.Module, path: str | Path, calibration: torch.Tensor | None = None) -> dict:
    """Transform ``model``'s prunable weights in place as recorded; verify the result's hash."""
    path = Path(path)
    rec = read_json(path, "transform record")
    fmt = rec.get("format") if isinstance(rec, dict) else None
    if fmt != FORMAT:
        raise PrunememError(f"{path}: not a prunemem transform (format {fmt!r})")
    have = getattr(model, "prunemem_checkpoint_sha256", None)
    if have != rec["checkpoint_sha256"]:
        raise PrunememError(f"{path}: transform was made for checkpoint {rec['checkpoint_sha256'][:12]}..., "
                            f"not this model's {str(have)[:12]}...")
    compression = transform_model(model, rec["spec"], rec["param_key"], calibration)
    digest = weights_digest(model)
    if digest != rec["weights_sha256"]:
        raise PrunememError(f"{path}: transformed weights hash {digest[:12]}... differs from the "
                            f"recorded {rec['weights_sha256'][:12]}... (different device or library?)")
    rec["compression"] = compression
    return rec
