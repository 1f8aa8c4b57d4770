"""Activation-aware pruning: Wanda, SparseGPT, OWL, N:M and SLEB, on the block-by-block calibration pass.

- Wanda (Sun et al., arXiv 2306.11695): score |W_ij| * ||X_j||_2; each output row is pruned to
  exactly floor(level * in_features).
- SparseGPT (Frantar & Alistarh, arXiv 2301.00774): per 128-column block, remove the weights
  with the lowest w^2 / [H^-1]_jj^2 (exactly floor(level * rows * block_columns) of each block)
  and update the rest to compensate (OBS). Its artifact carries the updated weights.
- OWL (Yin et al., arXiv 2310.05175): per-block sparsity from the block's outlier ratio
  (scores above M times their mean), spread by lambda around the target level; then Wanda
  or magnitude inside each block.
- N:M (e.g. 2:4 keeps 2 of every 4 consecutive input weights of a row) by magnitude, Wanda or
  SparseGPT (whose N:M choice is made per group of M columns as the OBS sweep reaches it).
- SLEB (Song et al., arXiv 2402.09025): greedily remove the whole block whose removal raises
  the calibration loss least, floor(level * blocks) times; like the reference
  (``early_barrier`` = ``latter_barrier`` = 1) the first and last blocks are not candidates
  unless ``protect_ends`` is off.

Kernels take weights in whatever dtype and device they live on (bfloat16 on a GPU) and compute
their scores and OBS updates in float64; results go back in the weight's dtype.

All kernels break ties by position (stable sorts), so masks are deterministic.
"""

from __future__ import annotations

import math

import torch

from prunemem import arch
from prunemem.compress.gptq import inverse_hessian_cholesky


class NormStats:
    """Sum of squares of each input feature of one linear layer (float64)."""

    def __init__(self, in_features: int, device):
        self.sq = torch.zeros(in_features, dtype=torch.float64, device=device)

    def __call__(self, module, args, output) -> None:
        self.sq += args[0].detach().reshape(-1, args[0].shape[-1]).double().pow(2).sum(0)


def wanda_score(weight: torch.Tensor, stats: NormStats) -> torch.Tensor:
    return weight.detach().abs().double() * stats.sq.sqrt().unsqueeze(0)


def row_mask(score: torch.Tensor, level: float) -> torch.Tensor:
    """Keep-mask removing the floor(level * columns) lowest scores of every row."""
    k = math.floor(level * score.shape[1] + 1e-9)
    mask = torch.ones_like(score, dtype=torch.bool)
    if k:
        mask.scatter_(1, torch.sort(score, dim=1, stable=True).indices[:, :k], False)
    return mask


def nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask keeping the n highest of every m consecutive scores in a row."""
    rows, cols = score.shape
    if cols % m:
        raise ValueError(f"N:M group {m} does not divide the input dimension {cols}")
    groups = score.reshape(rows, cols // m, m)
    mask = torch.ones_like(groups, dtype=torch.bool)
    mask.scatter_(2, torch.sort(groups, dim=2, stable=True).indices[..., : m - n], False)
    return mask.reshape(rows, cols)


@torch.no_grad()
def sparsegpt(weight: torch.Tensor, hessian: torch.Tensor, level: float, nm: tuple[int, int] | None = None,
              damp: float = 0.01, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """(updated weight with pruned entries zero, keep-mask)."""
    w = weight.detach().to(torch.float64, copy=True)
    hinv, dead = inverse_hessian_cholesky(hessian, damp)
    w[:, dead] = 0.0
    rows, cols = w.shape
    keep = torch.ones_like(w, dtype=torch.bool)
    for start in range(0, cols, block):
        end = min(start + block, cols)
        w1, h1 = w[:, start:end], hinv[start:end, start:end]
        err = torch.zeros_like(w1)
        saliency = w1.pow(2) / torch.diag(h1).pow(2).unsqueeze(0)
        if nm is None:
            k = math.floor(level * saliency.numel() + 1e-9)
            flat = torch.ones(saliency.numel(), dtype=torch.bool, device=w.device)
            flat[torch.sort(saliency.flatten(), stable=True).indices[:k]] = False
            keep1 = flat.view_as(saliency)
        else:
            keep1 = torch.ones_like(saliency, dtype=torch.bool)
        for i in range(end - start):
            if nm is not None and i % nm[1] == 0:
                cur = w1[:, i : i + nm[1]].pow(2) / torch.diag(h1)[i : i + nm[1]].pow(2).unsqueeze(0)
                keep1[:, i : i + nm[1]] = nm_mask(cur, *nm)
            col = w1[:, i]
            q = torch.where(keep1[:, i], col, torch.zeros_like(col))
            e = (col - q) / h1[i, i]
            w1[:, i:] -= e.unsqueeze(1) * h1[i, i:].unsqueeze(0)
            w1[:, i] = q
            err[:, i] = e
        keep[:, start:end] = keep1
        w[:, end:] -= err @ hinv[start:end, end:]
    w[~keep] = 0.0
    return w.to(weight.dtype), keep


def outlier_ratio(scores: list[torch.Tensor], m: float) -> float:
    """OWL's layer outlier ratio: the share of scores above m times their mean."""
    flat = torch.cat([s.flatten() for s in scores])
    return float((flat > m * flat.mean()).double().mean())


def owl_levels(ratios: list[float], level: float, lam: float) -> list[float]:
    """Per-block sparsities averaging ``level``: more outliers, less pruning, spread over +-lam."""
    d = torch.tensor(ratios, dtype=torch.float64)
    spread = (d - d.min()) / (d.max() - d.min()) * 2 * lam if d.max() > d.min() else torch.zeros_like(d)
    keep = spread - spread.mean() + (1 - level)
    return [min(1.0, max(0.0, 1 - float(x))) for x in keep]


class SkipBlock(torch.nn.Module):
    """A removed transformer block: passes the residual stream through unchanged."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@torch.no_grad()
def calibration_loss(model, calibration: torch.Tensor, batch_size: int = 8) -> float:
    """Mean next-token loss over the calibration rows, on the device the model computes on."""
    from prunemem.blockwise import compute_device, streamed

    device = compute_device(model)
    total, count = 0.0, 0
    with streamed(model):
        for ids in calibration.long().split(batch_size):
            ids = ids.to(device)
            loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
            total += float(loss) * ids.numel()
            count += ids.numel()
    return total / count


@torch.no_grad()
def sleb(model, calibration: torch.Tensor, n_remove: int, protect_ends: bool = False,
         batch_size: int = 8) -> list[int]:
    """Greedy block removal by calibration loss; returns the removed block indices in removal order.

    Ties go to the lower block index (strict ``<``). ``protect_ends`` keeps block 0 and the last
    block out of the candidates, as the reference does.
    """
    layers = arch.blocks(model)
    originals = list(layers)
    candidates = range(1, len(originals) - 1) if protect_ends else range(len(originals))
    removed: list[int] = []
    for _ in range(n_remove):
        best = None
        for candidate in candidates:
            if candidate in removed:
                continue
            layers[candidate] = SkipBlock()
            loss = calibration_loss(model, calibration, batch_size)
            layers[candidate] = originals[candidate]
            if best is None or loss < best[0]:
                best = (loss, candidate)
        removed.append(best[1])
        layers[best[1]] = SkipBlock()
    for i, layer in enumerate(originals):
        layers[i] = layer
    return removed


def skip_blocks(model, blocks: list[int]) -> None:
    layers = arch.blocks(model)
    for index in blocks:
        layers[index] = SkipBlock()
