"""Round-to-nearest weight quantization, evaluated through dequantized weights.

Per output channel (``group_size == 0``) or per group of ``group_size`` consecutive input
weights; symmetric (zero point 0, integers in [-(2^(b-1)-1), 2^(b-1)-1]) or asymmetric
(integers in [0, 2^b - 1] with a rounded zero point). Hand-written because the portable,
deterministic quantize->dequantize round trip is a few lines, while torchao's int4 kernels do
not run on CPU (torchao's ``Int4WeightOnlyConfig`` fails there in every packing format) and
would make CPU and GPU results differ.
"""

from __future__ import annotations

import torch

ALLOWED_BITS = (2, 3, 4, 8)
SCALE_BITS = 16  # scales (and asymmetric zero points) stored as 16-bit values


def grid(x: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(scale, zero point, qmin, qmax) of the round-to-nearest grid over the last dimension of ``x``."""
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = x.abs().amax(dim=-1, keepdim=True) / qmax
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        return scale, torch.zeros_like(scale), -qmax, qmax
    qmax = 2**bits - 1
    low, high = x.amin(dim=-1, keepdim=True), x.amax(dim=-1, keepdim=True)
    scale = (high - low) / qmax
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return scale, torch.clamp(torch.round(-low / scale), 0, qmax), 0, qmax


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Quantize onto the grid and back: (clamp(round(x / scale) + zero) - zero) * scale."""
    return (torch.clamp(torch.round(x / scale) + zero, qmin, qmax) - zero) * scale


def check(bits: int, group_size: int, in_features: int) -> int:
    """Validate the settings against a matrix; return the effective group size."""
    if bits not in ALLOWED_BITS:
        raise ValueError(f"bits: {bits} is not allowed; allowed: {', '.join(map(str, ALLOWED_BITS))}")
    group = in_features if group_size == 0 else group_size
    if in_features % group:
        raise ValueError(f"group_size: {group_size} does not divide the input dimension {in_features}")
    return group


def codes_of(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """The integers of ``fake_quantize`` (as floats): clamp(round(x / scale) + zero)."""
    return torch.clamp(torch.round(x / scale) + zero, qmin, qmax)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """(codes - zero) * scale: the same arithmetic as ``fake_quantize``, so stored codes give its bits back."""
    return (codes - zero) * scale


def quantize(weight: torch.Tensor, bits: int, group_size: int, symmetric: bool):
    """(codes [out, groups, group], scale [out, groups, 1], zero, qmin) of round-to-nearest, in fp32."""
    out_features, in_features = weight.shape
    group = check(bits, group_size, in_features)
    x = weight.detach().float().reshape(out_features, in_features // group, group)
    scale, zero, qmin, qmax = grid(x, bits, symmetric)
    return codes_of(x, scale, zero, qmin, qmax), scale, zero, qmin


def quantize_dequantize(weight: torch.Tensor, bits: int, group_size: int, symmetric: bool) -> torch.Tensor:
    """The weight after quantizing to ``bits`` and back, in the weight's dtype (computed in fp32)."""
    codes, scale, zero, _ = quantize(weight, bits, group_size, symmetric)
    return dequantize(codes, scale, zero).reshape(weight.shape).to(weight.dtype)


def bits_per_weight(bits: int, group_size: int, in_features: int, symmetric: bool) -> float:
    """Storage cost per weight including its share of scales (and zero points when asymmetric)."""
    group = in_features if group_size == 0 else group_size
    overhead = SCALE_BITS + (0 if symmetric else bits)
    return bits + overhead / group
