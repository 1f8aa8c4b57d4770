"""Low-rank approximation: truncated SVD of each prunable matrix (Eckart–Young optimal in Frobenius norm).

A matrix W (m x n) replaced by rank-r factors costs r (m + n) parameters, so keeping a
fraction f of its parameters allows r = floor(f m n / (m + n)).
"""

from __future__ import annotations

import math

import torch


def rank_for(keep: float, rows: int, cols: int) -> int:
    """The largest rank whose factors fit in ``keep`` of the matrix's parameters (capped at full rank)."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep: {keep} is outside (0, 1]")
    return min(min(rows, cols), math.floor(keep * rows * cols / (rows + cols) + 1e-9))


def factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A [m, r], B [r, n]) in the weight's dtype, A @ B the best rank-``rank`` approximation
    (SVD in float64 for a stable, exact truncation; singular values folded into A)."""
    if rank < 1:
        raise ValueError(f"rank: {rank} must be at least 1")
    u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    return (u[:, :rank] * s[:rank]).to(weight.dtype), vh[:rank].to(weight.dtype).contiguous()


def truncated_svd(weight: torch.Tensor, rank: int) -> torch.Tensor:
    """The rank-``rank`` weight as a compressed model holds it: the product of its stored factors."""
    a, b = factors(weight, rank)
    return a @ b
