"""The mask artifact: ``data/masks/{model}/{method}/{level}.safetensors`` (docs/architecture.md, "Artifacts"; README, "Outputs").

Keys are ``model.state_dict()`` parameter names; values are uint8 tensors holding the keep-mask
bit-packed 8 weights per byte, most significant bit first, row-major, zero-padded at the end
(``numpy.packbits`` order). The header metadata holds ``method``, ``level``,
``checkpoint_sha256``, per-tensor ``shapes`` and ``kept`` counts, and ``provenance`` (JSON).

    from prunemem.prune import masks
    keep = masks.load("data/masks/tiny/global/0.5.safetensors")   # {name: BoolTensor}, True = kept
    masks.apply(model, "data/masks/tiny/global/0.5.safetensors")  # refuses another checkpoint's mask
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prunemem.errors import PrunememError
from prunemem.identity import MASK_FORMAT as FORMAT, mask_header as header  # noqa: F401 (torch-free reader)
from prunemem.provenance import atomic_path

UPDATED = "updated:"  # key prefix of SparseGPT's compensated weights stored beside the masks
_DTYPES = {torch.uint8: "U8", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}
_BITS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack_bits(flat: torch.Tensor) -> torch.Tensor:
    """Bits of a flat bool tensor, computed where it is (a GPU packs its own), returned on the host."""
    flat = torch.nn.functional.pad(flat.to(torch.uint8), (0, (-flat.numel()) % 8))
    return (flat.view(-1, 8) * _BITS.to(flat.device)).sum(dim=1, dtype=torch.uint8).cpu()


def pack(mask: torch.Tensor, chunk: int = 1 << 20) -> torch.Tensor:
    """Bits of a bool mask, ``chunk`` weights at a time (a multiple of 8), so the transient stays small."""
    flat = mask.detach().flatten()
    return torch.cat([pack_bits(flat[i : i + chunk]) for i in range(0, flat.numel(), chunk)] or
                     [torch.zeros(0, dtype=torch.uint8)])


def unpack(packed: torch.Tensor, shape: list[int]) -> torch.Tensor:
    n = 1
    for s in shape:
        n *= s
    bits = (packed.view(-1, 1) & _BITS.to(packed.device)) != 0
    return bits.flatten()[:n].view(shape)


@dataclass(frozen=True)
class BitMask:
    """One tensor's keep-mask as it travels from a method to the artifact: 1 bit per weight, on the host.

    Every mask builder packs each tensor's mask as soon as it is computed, so a 12B model's masks
    take 1.4 GB instead of the 11 GB of bool tensors (bench/masks.py measures the peak).
    """

    bits: torch.Tensor  # uint8, the artifact's packbits order
    shape: tuple[int, ...]
    kept: int

    @classmethod
    def of(cls, mask: torch.Tensor) -> "BitMask":
        return cls(pack(mask), tuple(mask.shape), int(mask.sum()))

    def bool(self) -> torch.Tensor:
        return unpack(self.bits, list(self.shape))

    def numel(self) -> int:
        return math.prod(self.shape)


def as_bool(mask) -> torch.Tensor:
    return mask.bool() if isinstance(mask, BitMask) else mask


def kept_count(mask) -> int:
    return mask.kept if isinstance(mask, BitMask) else int(mask.sum())


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write tensors in the safetensors format with a canonical (sorted) header.

    Hand-written because safetensors' own writer emits ``__metadata__`` in hash-map order,
    which changes from process to process, and artifacts must be byte-identical on re-runs.
    Format: 8-byte little-endian header length, JSON header padded with spaces to a multiple
    of 8, then the raw tensor bytes at the header's ``data_offsets``.
    """
    header: dict[str, Any] = {"__metadata__": metadata}
    blobs, offset = [], 0
    for name in sorted(tensors):
        tensor = tensors[name]
        data = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": _DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for blob in blobs:
            fh.write(blob)


def save(path: str | Path, masks: dict[str, torch.Tensor], *, method: str, level: str, checkpoint_sha256: str,
         provenance: dict[str, Any] | None = None, updated: dict[str, torch.Tensor] | None = None,
         removed_blocks: list[int] | None = None, block_levels: list[float] | None = None,
         removed_sublayers: list[str] | None = None, info: dict[str, Any] | None = None,
         removed_units: list[str] | None = None) -> None:
    """Write a mask; ``updated`` (SparseGPT), ``removed_blocks`` (SLEB, EvoP), ``removed_sublayers``
    (EvoP) and ``removed_units`` (width pruning: '2.head.1', '0.neuron.17') travel with it, and
    ``info`` records how it was found (calibration choice, search or trial history)."""
    meta = {
        "format": FORMAT, "method": method, "level": str(level), "checkpoint_sha256": checkpoint_sha256,
        "shapes": json.dumps({n: list(m.shape) for n, m in masks.items()}, sort_keys=True),
        "kept": json.dumps({n: kept_count(m) for n, m in masks.items()}, sort_keys=True),
        "provenance": json.dumps(provenance or {}, sort_keys=True),
        "removed_blocks": json.dumps(removed_blocks or []),
        "block_levels": json.dumps(block_levels),
        "removed_sublayers": json.dumps(removed_sublayers or []),
        "removed_units": json.dumps(removed_units or []),
        "info": json.dumps(info or {}, sort_keys=True),
        "updated": json.dumps(sorted(updated or {})),
    }
    tensors = {n: m.bits if isinstance(m, BitMask) else pack(m) for n, m in masks.items()}
    tensors.update({UPDATED + n: w for n, w in (updated or {}).items()})
    write_safetensors(path, tensors, meta)


def load(path: str | Path) -> dict[str, torch.Tensor]:
    """``{parameter name: BoolTensor}``, True = kept."""
    from safetensors.torch import load_file

    meta = header(path)
    try:
        packed = load_file(str(path))
    except Exception as err:
        raise PrunememError(f"{path}: corrupt mask tensors ({err})") from None
    out = {name: unpack(packed[name], shape) for name, shape in meta["shapes"].items()}
    for name, mask in out.items():
        if int(mask.sum()) != meta["kept"][name]:
            raise PrunememError(f"{path}: tensor {name} keeps {int(mask.sum())} weights, header says {meta['kept'][name]}")
    return out


@torch.no_grad()
def apply(model: torch.nn.Module, masks: str | Path | dict[str, torch.Tensor], *,
          check_checkpoint: bool = True) -> dict[str, torch.Tensor]:
    """Zero the pruned weights of ``model`` in place; return the masks applied.

    Given a path, the mask's ``checkpoint_sha256`` must equal the model's
    ``prunemem_checkpoint_sha256`` (set by ``prunemem.checkpoints.load_model``); SparseGPT's
    updated weights are copied in, removed blocks (SLEB, EvoP) are replaced by pass-throughs and
    removed sublayers (EvoP) by modules that output zeros, so their biases go too, and removed width
    units (heads, neurons) are cut out of the matrices (``prunemem.prune.width.shrink``): the model
    returned is really smaller.
    """
    if not isinstance(masks, dict):
        path = Path(masks)
        meta = header(path)
        if check_checkpoint:
            have = getattr(model, "prunemem_checkpoint_sha256", None)
            if have != meta["checkpoint_sha256"]:
                raise PrunememError(f"{path}: mask was made for checkpoint {meta['checkpoint_sha256'][:12]}..., "
                                    f"not this model's {str(have)[:12]}...")
        masks = load(path)
        updated = _load_updated(path, meta)
    else:
        meta, updated = {"removed_blocks": [], "removed_sublayers": [], "removed_units": []}, {}
    params = dict(model.named_parameters())
    for name, weight in updated.items():
        params[name].copy_(weight.to(device=params[name].device, dtype=params[name].dtype))
    masks = {name: as_bool(mask) for name, mask in masks.items()}
    for name, mask in masks.items():
        if name not in params:
            raise PrunememError(f"mask tensor {name} has no parameter in the model")
        weight = params[name]
        if tuple(weight.shape) != tuple(mask.shape):
            raise PrunememError(f"mask tensor {name} has shape {tuple(mask.shape)}, the weight {tuple(weight.shape)}")
        weight.mul_(mask.to(device=weight.device, dtype=weight.dtype))
    if meta["removed_blocks"]:
        from prunemem.prune.calibrated import skip_blocks

        skip_blocks(model, meta["removed_blocks"])
    if meta["removed_sublayers"]:
        from prunemem.prune.search import skip_sublayers

        skip_sublayers(model, meta["removed_sublayers"])
    if meta["removed_units"]:
        from prunemem.prune.width import WidthUnit, shrink

        # the mask stage refused an emptied sublayer unless the params allowed it, so allow it here
        shrink(model, [WidthUnit.parse(u) for u in meta["removed_units"]], allow_empty_sublayer=True)
    return masks


def _load_updated(path: Path, meta: dict) -> dict[str, torch.Tensor]:
    if not meta["updated"]:
        return {}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return {name: fh.get_tensor(UPDATED + name) for name in meta["updated"]}
