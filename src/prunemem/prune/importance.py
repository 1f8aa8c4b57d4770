"""How much each width unit (``prunemem.prune.width``) matters, and how many units each block loses.

Importance metrics score every head or neuron of one block from its weight slices and, for the
activation-aware ones, from statistics of the calibration pass (``collect``); higher = more
important, so the lowest are removed. Each is one line over the unit's entries:

- ``l1``, ``l2``: magnitude of the unit's weights (its rows of the input projection and columns of
  the output projection; biases excluded);
- ``wanda``: Wanda's |W_ij| * ||X_j|| (Sun et al. 2023, arXiv 2306.11695) summed over the unit's
  weights, X the input of each matrix over the calibration tokens;
- ``taylor``: first-order Taylor, sum over the unit's weights of |w dL/dw| with the gradient of the
  calibration loss (Molchanov et al. 2019, "Importance Estimation for Neural Network Pruning";
  LLM-Pruner's element-wise importance);
- ``taylor-group``: LLM-Pruner's vector-wise group importance |sum over the unit of w dL/dw|, the
  first-order change of the loss when the whole group goes (Ma et al. 2023, arXiv 2305.11627, eq. 3);
- ``flap``: FLAP's fluctuation metric (An et al. 2024, "Fluctuation-based Adaptive Structured
  Pruning", arXiv 2312.11983, eq. 6): the sample variance of each input channel of the output
  projection times the squared norm of that channel's weight column, summed over the unit's channels.

Allocation across blocks, one kind (heads or neurons) at a time, always removes the same total
``floor(level * units)`` of that kind, so every metric and allocation at one level removes the
same number of parameters (all heads are the same size, all neurons too):

- ``uniform``: every block loses the same share;
- ``owl``: OWL's outlier-weighted shares (Yin et al. 2023, arXiv 2310.05175): blocks with more
  Wanda-score outliers (> M times the block's mean) lose less, spread +-lambda around the level.

    from prunemem.prune import importance
    stats = importance.collect(model, calibration, gradients=True)
    units = importance.choose(model, stats, "taylor", "uniform", level=0.5, kinds=("neuron",))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from prunemem.errors import PrunememError
from prunemem.prune.units import check_width_names
from prunemem.prune.width import KINDS, WidthUnit, _layers, _prefix, counts

# the four matrices of a block, by role: (input projection, output projection) of each sublayer
MATRICES = {"head": ("attention.query_key_value", "attention.dense"), "neuron": ("mlp.dense_h_to_4h", "mlp.dense_4h_to_h")}
NEEDS_ACTIVATIONS = {"wanda", "flap"}
NEEDS_GRADIENTS = {"taylor", "taylor-group"}


@dataclass
class InputStats:
    """Per input feature of one linear: sum of x, sum of x^2 over the calibration tokens (float64)."""

    sum: torch.Tensor
    sumsq: torch.Tensor
    count: int = 0

    def norm(self) -> torch.Tensor:  # ||X_j||_2 over all tokens
        return self.sumsq.sqrt()

    def variance(self) -> torch.Tensor:  # FLAP's unbiased per-channel sample variance
        mean = self.sum / self.count
        return (self.sumsq - self.count * mean ** 2).clamp_min(0) / max(self.count - 1, 1)


@dataclass
class Stats:
    """What the calibration pass measured, by parameter prefix ('gpt_neox.layers.0.mlp.dense_4h_to_h')."""

    inputs: dict[str, InputStats] = field(default_factory=dict)
    grads: dict[str, torch.Tensor] = field(default_factory=dict)  # weight gradients of the summed batch losses
    weights: dict[str, torch.Tensor] = field(default_factory=dict)


def _linears(model):
    for b, layer in enumerate(_layers(model)):
        for kind in KINDS:
            for rel in MATRICES[kind]:
                module = layer.get_submodule(rel)
                yield f"{_prefix(b)}{rel}", module


def collect(model, calibration: torch.Tensor | None, gradients: bool = False, batch_size: int = 8) -> Stats:
    """Weights, input statistics and (``gradients``) the calibration loss gradient of every block matrix.

    The model's own parameters are read and left unchanged (gradients are cleared after).
    """
    stats = Stats()
    for name, module in _linears(model):
        stats.weights[name] = module.weight.detach().double().cpu()
    if calibration is None:
        return stats
    handles = []

    def hook(name):
        def record(module, args, output):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            if name not in stats.inputs:
                stats.inputs[name] = InputStats(torch.zeros(x.shape[1], dtype=torch.float64, device=x.device),
                                                torch.zeros(x.shape[1], dtype=torch.float64, device=x.device))
            s = stats.inputs[name]
            s.sum += x.sum(0)
            s.sumsq += (x * x).sum(0)
            s.count += x.shape[0]
        return record

    for name, module in _linears(model):
        handles.append(module.register_forward_hook(hook(name)))
    device = next(model.parameters()).device
    wanted = [m.weight for _, m in _linears(model)]
    wanted_ids = {id(w) for w in wanted}
    flags = {p: p.requires_grad for p in model.parameters()}
    try:
        for p in model.parameters():  # gradients of the block matrices only, none left behind
            p.requires_grad_(gradients and id(p) in wanted_ids)
            p.grad = None
        with torch.set_grad_enabled(gradients):
            for ids in calibration.long().split(batch_size):
                ids = ids.to(device)
                out = model(input_ids=ids, labels=ids if gradients else None)
                if gradients:
                    out.loss.backward()
        if gradients:
            for (name, _), w in zip(_linears(model), wanted):
                stats.grads[name] = w.grad.detach().double().cpu()
    finally:
        for h in handles:
            h.remove()
        for p, flag in flags.items():
            p.grad = None
            p.requires_grad_(flag)
    for s in stats.inputs.values():
        s.sum, s.sumsq = s.sum.cpu(), s.sumsq.cpu()
    return stats


def _per_unit(kind: str, rows: torch.Tensor, cols: torch.Tensor, head_size: int) -> torch.Tensor:
    """Sum a per-entry score of the input projection (unit = rows) and the output projection (unit =
    columns) into one value per unit: 3 * head_size rows and head_size columns per head, 1 and 1 per neuron."""
    if kind == "head":
        return rows.reshape(-1, 3 * head_size, rows.shape[1]).sum((1, 2)) + \
            cols.reshape(cols.shape[0], -1, head_size).sum((0, 2))
    return rows.sum(1) + cols.sum(0)


def scores(stats: Stats, metric: str, block: int, kind: str, head_size: int) -> torch.Tensor:
    """The metric's importance of every ``kind`` unit of ``block`` (float64, one per unit)."""
    if metric not in METRICS:
        raise PrunememError(f"importance metric {metric!r} is not registered; allowed: {', '.join(METRICS)}")
    up, down = (f"{_prefix(block)}{rel}" for rel in MATRICES[kind])
    if metric in NEEDS_ACTIVATIONS and up not in stats.inputs:
        raise PrunememError(f"importance metric {metric!r} reads activations and no calibration pass was made")
    if metric in NEEDS_GRADIENTS and up not in stats.grads:
        raise PrunememError(f"importance metric {metric!r} reads gradients and no backward pass was made")
    return METRICS[metric](stats, up, down, kind, head_size)


def _entrywise(entry):
    """A metric that sums ``entry(stats, name)`` (a per-weight score) over the unit's weights."""
    def metric(stats, up, down, kind, head_size):
        return _per_unit(kind, entry(stats, up), entry(stats, down), head_size)
    return metric


def _taylor_group(stats, up, down, kind, head_size):
    signed = _per_unit(kind, stats.weights[up] * stats.grads[up], stats.weights[down] * stats.grads[down], head_size)
    return signed.abs()


def _flap(stats, up, down, kind, head_size):
    # only the output projection's input channels fluctuate per unit; the channel is the unit's column
    channel = stats.inputs[down].variance() * stats.weights[down].pow(2).sum(0)
    return channel if kind == "neuron" else channel.reshape(-1, head_size).sum(1)


METRICS = {
    "l1": _entrywise(lambda s, n: s.weights[n].abs()),
    "l2": lambda s, up, down, kind, d: _entrywise(lambda s, n: s.weights[n].pow(2))(s, up, down, kind, d).sqrt(),
    "wanda": _entrywise(lambda s, n: s.weights[n].abs() * s.inputs[n].norm().view(1, -1)),
    "taylor": _entrywise(lambda s, n: (s.weights[n] * s.grads[n]).abs()),
    "taylor-group": _taylor_group,
    "flap": _flap,
}


def check_names(metric: str, allocation: str, key: str = "prune.width") -> None:
    check_width_names([metric], [allocation], key)


def block_outlier_ratio(stats: Stats, block: int, m: float) -> float:
    """OWL's outlier ratio of a block: share of its Wanda scores |W| ||X|| above m times their mean."""
    from prunemem.prune.calibrated import outlier_ratio

    names = [f"{_prefix(block)}{rel}" for kind in KINDS for rel in MATRICES[kind]]
    if any(n not in stats.inputs for n in names):
        raise PrunememError("allocation 'owl' reads activations and no calibration pass was made")
    return outlier_ratio([stats.weights[n].abs() * stats.inputs[n].norm().view(1, -1) for n in names], m)


def allocate(sizes: list[int], level: float, shares: list[float] | None = None) -> list[int]:
    """How many units each block loses: ``floor(level * n)`` of each block's ``n`` (uniform), or the same
    total split by ``shares`` (each block's level) with largest remainders, ties to the lower block."""
    uniform = [math.floor(level * n + 1e-9) for n in sizes]
    if shares is None:
        return uniform
    total = sum(uniform)  # the same total as uniform: matched parameter count
    ideal = [min(float(n), max(0.0, s * n)) for s, n in zip(shares, sizes)]
    scale = total / sum(ideal) if sum(ideal) else 0.0
    ideal = [x * scale for x in ideal]
    out = [min(n, math.floor(x)) for x, n in zip(ideal, sizes)]
    order = sorted(range(len(sizes)), key=lambda b: (-(ideal[b] - math.floor(ideal[b])), b))
    while sum(out) < total:
        room = [b for b in order if out[b] < sizes[b]]
        for b in room[: total - sum(out)]:
            out[b] += 1
    return out


def choose(model, stats: Stats, metric: str, allocation: str, level: float, kinds=("neuron",),
           owl_m: float = 5.0, owl_lambda: float = 0.08) -> list[WidthUnit]:
    """The units to remove: per kind, ``allocate`` the count over blocks, then each block's lowest scores
    (ties to the lower index)."""
    check_names(metric, allocation)
    n_blocks = len(_layers(model))
    shares = None
    if allocation == "owl":
        from prunemem.prune.calibrated import owl_levels

        shares = owl_levels([block_outlier_ratio(stats, b, owl_m) for b in range(n_blocks)], level, owl_lambda)
    chosen = []
    for kind in kinds:
        sizes = [counts(model, b)[kind] for b in range(n_blocks)]
        for block, n in enumerate(allocate(sizes, level, shares)):
            if n == 0:
                continue
            s = scores(stats, metric, block, kind, _layers(model)[block].attention.head_size)
            order = sorted(range(len(s)), key=lambda i: (float(s[i]), i))
            chosen += [WidthUnit(block, kind, i) for i in sorted(order[:n])]
    return sorted(chosen)
