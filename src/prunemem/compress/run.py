"""Build and apply compression transforms.

    prunemem transform --model tiny --method int4 --level 0
    prunemem transform --model tiny --method lowrank --level 0.5

A transform artifact is two files: the record ``data/transforms/{model}/{method}/{level}.json``
(params, provenance, the sha256 of the weights file and of the resulting weights) and the
weights file beside it, ``{level}.safetensors``, holding each prunable matrix compactly:

- quantization (round-to-nearest and GPTQ): ``{name}:codes``, uint8, the integer minus qmin,
  two 4-bit codes per byte when bits <= 4 (low nibble first); ``{name}:scale`` [out, groups, 1]
  in the dtype it was computed in (float32 for RTN, float64 for GPTQ) and ``{name}:zero``
  (uint8), so (code - zero) * scale gives the transform's bits back exactly;
- low rank: ``{name}:a`` [m, r] and ``{name}:b`` [r, n] in the weight's dtype; the matrix is a @ b.

Evaluation reads these, checks both hashes and never recomputes: a file that fails either check
is refused with one line.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

from prunemem.blockwise import Placement, place, resolve_placement
from prunemem.compress.lowrank import factors, rank_for
from prunemem.compress.quantize import bits_per_weight, check, dequantize, quantize
from prunemem.errors import PrunememError
from prunemem.plan import uses_calibration
from prunemem.provenance import read_json, record, sha256_file, write_json
from prunemem.runtime import deterministic

log = logging.getLogger(__name__)

FORMAT = "prunemem-transform/2"  # /1 records stored no weights and were recomputed at evaluation
WEIGHTS_FORMAT = "prunemem-transform-weights/1"


def weights_path(record_path: Path) -> Path:
    """The weights file beside a transform record."""
    return Path(record_path).with_suffix(".safetensors")


def _pack_codes(codes: torch.Tensor, qmin: int, bits: int) -> torch.Tensor:
    u = (codes - qmin).to(torch.uint8).flatten()
    if bits > 4:
        return u
    u = torch.nn.functional.pad(u, (0, u.numel() % 2))
    return (u[0::2] | (u[1::2] << 4)).contiguous()


def _unpack_codes(packed: torch.Tensor, qmin: int, bits: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    u = packed if bits > 4 else torch.stack([packed & 0x0F, packed >> 4], 1).flatten()
    return u[:n].to(dtype) + qmin


def _qmin(spec: dict) -> int:
    return -(2 ** (spec["bits"] - 1) - 1) if spec["symmetric"] else 0


def _quantized_units(weight: torch.Tensor, spec: dict) -> float:
    bits = bits_per_weight(spec["bits"], spec["group_size"], weight.shape[1], spec["symmetric"])
    return weight.numel() * bits / 16


def _store_quantized(store: dict, name: str, codes, scale, zero, spec: dict) -> None:
    store[f"{name}:codes"] = _pack_codes(codes, _qmin(spec), spec["bits"])
    store[f"{name}:scale"] = scale.contiguous()
    store[f"{name}:zero"] = zero.to(torch.uint8).contiguous()  # an integer in [0, 2^bits - 1] (0 when symmetric)


def _matrix_transform(spec: dict, key: str, name: str, store: dict):
    """The per-matrix function of an uncalibrated transform: weight -> (new weight, kept 16-bit units)."""

    def apply(weight: torch.Tensor) -> tuple[torch.Tensor, float]:
        rows, cols = weight.shape
        try:
            if spec["kind"] == "quantize":
                codes, scale, zero, _ = quantize(weight, spec["bits"], spec["group_size"], spec["symmetric"])
                _store_quantized(store, name, codes, scale, zero, spec)
                out = dequantize(codes, scale, zero).reshape(weight.shape).to(weight.dtype)
                return out, _quantized_units(weight, spec)
            rank = rank_for(spec["keep"], rows, cols)
            if rank < 1:
                raise ValueError(f"keep {spec['keep']} leaves rank 0 for this {rows}x{cols} matrix")
            a, b = factors(weight, rank)
            store[f"{name}:a"], store[f"{name}:b"] = a, b
            return a @ b, rank * (rows + cols)
        except ValueError as err:
            raise PrunememError(f"{key}: {err} ({name})") from None

    return apply


@torch.no_grad()
def transform_model(model, spec: dict, key: str, calibration: torch.Tensor | None = None, progress=None,
                    batch_size: int = 8, store: dict | None = None) -> float:
    """Transform the model's prunable weights in place; return the compression (kept / total units).

    Units are parameters for low-rank and 16-bit weights for quantization. ``store`` receives the
    compact form of every transformed matrix (codes and scales, or factors), on the host.
    """
    from prunemem.arch import out_in
    from prunemem.blockwise import HessianStats, blockwise
    from prunemem.compress.gptq import gptq
    from prunemem.prune.targets import prunable

    store = {} if store is None else store
    params = dict(model.named_parameters())
    targets = prunable(list(params))
    # every kernel sees the [out, in] matrix the layer map gives (GPT-2's Conv1D is stored [in, out]);
    # stored codes and factors are in that layout, and apply_transform writes them back through it
    matrices = {t.name: out_in(params[t.name], t.transposed) for t in targets}
    names = list(matrices)
    total = sum(params[n].numel() for n in names)
    if uses_calibration(spec):
        if calibration is None:
            raise PrunememError(f"{key}: gptq needs the calibration set (samples.calibration)")
        for name in names:  # settings errors before any calibration work
            try:
                check(spec["bits"], spec["group_size"], matrices[name].shape[1])
            except ValueError as err:
                raise PrunememError(f"{key}: {err} ({name})") from None

        def edit(index, linears, stats):
            for module_name, matrix in linears.items():
                kept: dict = {}
                matrix.weight.copy_(gptq(matrix.weight, stats[module_name].hessian, spec["bits"], spec["group_size"],
                                         spec["symmetric"], damp=spec.get("damp", 0.01), store=kept))
                _store_quantized(store, f"{module_name}.weight", kept["codes"].cpu(), kept["scale"].cpu(),
                                 kept["zero"].cpu(), spec)

        blockwise(model, calibration, lambda m: HessianStats(m.in_features, m.weight.device), edit,
                  batch_size=batch_size, progress=progress)
        return sum(_quantized_units(matrices[n], spec) for n in names) / total
    kept = 0.0
    for name in names:
        new, units = _matrix_transform(spec, key, name, store)(matrices[name])
        matrices[name].copy_(new)
        kept += units
    return kept / total


def weights_digest(model, dtype: torch.dtype | None = None) -> str:
    """sha256 over the prunable weights (name, shape, dtype and bytes, in name order), cast to ``dtype`` if given."""
    from prunemem.prune.targets import prunable

    params = dict(model.named_parameters())
    digest = hashlib.sha256()
    for name in (t.name for t in prunable(list(params))):
        tensor = params[name].detach().to(dtype or params[name].dtype).contiguous().cpu()
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
    from prunemem.prune.masks import write_safetensors

    ckpt = plan.checkpoint_dir(model)
    spec = plan.transform_spec(method, level)
    deterministic(plan.params["evaluate"]["threads"])
    placement = Placement()
    if uses_calibration(spec):  # GPTQ computes where prune.device says, checked before any weights load
        calib = plan.params["samples"]["calibration"]
        placement = resolve_placement(plan.params["prune"], "prune", ckpt, plan.method(method), calib["sequences"],
                                      calib["tokens"])
    net = place(load_model(ckpt, dtype=placement.dtype), placement)
    store: dict[str, torch.Tensor] = {}
    compression = transform_model(net, spec, plan.param_key(method), calibration_tokens(plan, model, spec), progress,
                                  batch_size=plan.params["prune"].get("batch_size", 8), store=store)
    digest = weights_digest(net)
    out = plan.transform_path(model, method, level)
    weights = weights_path(out)
    write_safetensors(weights, store, {"format": WEIGHTS_FORMAT, "weights_sha256": digest,
                                       "dtype": str(placement.dtype).removeprefix("torch.")})
    ckpt_sha = checkpoint_hash(ckpt)
    inputs = {"checkpoint": ckpt_sha}
    if uses_calibration(spec):
        from prunemem.data.samples import samples_hash

        inputs["samples"] = samples_hash(plan.samples_dir(model))
    write_json(out, {
        "format": FORMAT, "method": method, "level": level, "spec": spec, "param_key": plan.param_key(method),
        "checkpoint_sha256": ckpt_sha, "weights_sha256": digest, "compression": compression,
        "weights_file": weights.name, "weights_file_sha256": sha256_file(weights),
        "placement": {"device": placement.device, "dtype": str(placement.dtype).removeprefix("torch."),
                      "offload": placement.offload},
        "provenance": record("transform", inputs, plan.stage_params("transform", model, method, level)),
    })
    log.info("%s @ %s: compression %.4f, weights %s (%s, %d bytes)", method, level, compression, digest[:12],
             weights.name, weights.stat().st_size)
    return out


@torch.no_grad()
def apply_transform(model: torch.nn.Module, path: str | Path, calibration: torch.Tensor | None = None) -> dict:
    """Set ``model``'s prunable weights from the stored transform; verify the file's and the weights' hashes.

    Nothing is recomputed (``calibration`` is accepted for old callers and ignored).
    """
    from safetensors import safe_open

    from prunemem.arch import out_in
    from prunemem.prune.targets import prunable

    path = Path(path)
    rec = read_json(path, "transform record")
    fmt = rec.get("format") if isinstance(rec, dict) else None
    if fmt != FORMAT:
        raise PrunememError(f"{path}: not a prunemem transform with stored weights (format {fmt!r}, expected "
                            f"{FORMAT!r}); rebuild it with prunemem transform")
    have = getattr(model, "prunemem_checkpoint_sha256", None)
    if have != rec["checkpoint_sha256"]:
        raise PrunememError(f"{path}: transform was made for checkpoint {rec['checkpoint_sha256'][:12]}..., "
                            f"not this model's {str(have)[:12]}...")
    weights = path.parent / rec["weights_file"]
    if not weights.is_file():
        raise PrunememError(f"{weights}: transform weights file not found (dvc pull, or rebuild the transform)")
    if sha256_file(weights) != rec["weights_file_sha256"]:
        raise PrunememError(f"{weights}: stored transform weights differ from the record's sha256 "
                            f"{rec['weights_file_sha256'][:12]}...; refusing them (rebuild the transform)")
    spec, params = rec["spec"], dict(model.named_parameters())
    dtype = getattr(torch, rec["placement"]["dtype"])
    try:
        with safe_open(str(weights), framework="pt") as fh:
            for target in prunable(list(params)):
                name = target.name
                param = out_in(params[name], target.transposed)  # the layout the transform was stored in
                if spec["kind"] == "quantize":
                    scale = fh.get_tensor(f"{name}:scale")
                    zero = fh.get_tensor(f"{name}:zero").to(scale.dtype)
                    codes = _unpack_codes(fh.get_tensor(f"{name}:codes"), _qmin(spec), spec["bits"], param.numel(),
                                          scale.dtype).reshape(scale.shape[0], scale.shape[1], -1)
                    new = dequantize(codes, scale, zero).reshape(param.shape)
                else:
                    new = fh.get_tensor(f"{name}:a") @ fh.get_tensor(f"{name}:b")
                param.copy_(new.to(dtype).to(param.dtype))
    except (KeyError, RuntimeError, ValueError) as err:
        raise PrunememError(f"{weights}: unreadable transform weights ({str(err).splitlines()[0]})") from None
    digest = weights_digest(model, dtype)  # in the dtype it was built in (bfloat16 on a GPU): exact either way
    if digest != rec["weights_sha256"]:
        raise PrunememError(f"{path}: transformed weights hash {str(digest)[:12]}... differs from the "
                            f"recorded {rec['weights_sha256'][:12]}...; refusing the stored transform")
    return rec

