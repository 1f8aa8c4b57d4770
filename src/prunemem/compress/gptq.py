"""GPTQ: quantization with second-order error compensation.

Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers" (arXiv 2210.17323). Columns are quantized left to right; the error of each,
scaled by the inverse Hessian H^-1 = (2 X X^T + damp I)^-1 of the layer's calibration
inputs, is pushed onto the columns not yet quantized. The Cholesky form of H^-1 and lazy
block updates are the paper's; the quantization grid is the round-to-nearest one of
``prunemem.compress.quantize`` (scales per output channel, or per group computed when the
group's first column is reached).

Written here because GPTQ libraries (auto-gptq, gptqmodel) pin their own torch/CUDA builds
and do not install beside the CPU torch pin.
"""

from __future__ import annotations

import torch

from prunemem.compress.quantize import check, codes_of, fake_quantize, grid


def inverse_hessian_cholesky(hessian: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(upper Cholesky factor of H^-1, mask of dead inputs) after dampening; float64 for stability."""
    h = hessian.to(torch.float64, copy=True)
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    h.diagonal().add_(damp * torch.mean(torch.diag(h)))  # on the diagonal only: no n x n identity at 12B
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
    del h  # so at most four n x n float64 buffers are alive (LAPACK's workspace included; memplan counts four)
    return torch.linalg.cholesky(inverse, upper=True), dead


@torch.no_grad()
def gptq(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int, symmetric: bool,
         damp: float = 0.01, block: int = 128, store: dict | None = None) -> torch.Tensor:
    """The dequantized GPTQ weight (same shape and dtype as ``weight``).

    With ``store``, also fills it with what reproduces that weight without the Hessian:
    ``codes`` [out, in] (float64 integers), and ``scale`` / ``zero`` [out, groups, 1] (float64).
    """
    group = check(bits, group_size, weight.shape[1])
    w = weight.detach().to(torch.float64, copy=True)
    hinv, dead = inverse_hessian_cholesky(hessian, damp)
    w[:, dead] = 0.0
    cols = w.shape[1]
    q = torch.zeros_like(w)
    codes = torch.zeros_like(w) if store is not None else None
    scales, zeros = [], []
    for start in range(0, cols, block):
        end = min(start + block, cols)
        err = torch.zeros(w.shape[0], end - start, dtype=w.dtype, device=w.device)
        for i in range(start, end):
            if i % group == 0:  # a group's grid comes from its weights as updated so far
                scale, zero, qmin, qmax = grid(w[:, i : i + group], bits, symmetric)
                scales.append(scale)
                zeros.append(zero)
            col = w[:, i]
            qcol = fake_quantize(col.unsqueeze(1), scale, zero, qmin, qmax).squeeze(1)
            if codes is not None:
                codes[:, i] = codes_of(col.unsqueeze(1), scale, zero, qmin, qmax).squeeze(1)
            q[:, i] = qcol
            e = (col - qcol) / hinv[i, i]
            w[:, i + 1 : end] -= e.unsqueeze(1) * hinv[i, i + 1 : end].unsqueeze(0)
            err[:, i - start] = e
        w[:, end:] -= err @ hinv[start:end, end:]
    if store is not None:
        store.update(codes=codes, scale=torch.stack(scales, 1), zero=torch.stack(zeros, 1), qmin=qmin)
    return q.to(weight.dtype)
