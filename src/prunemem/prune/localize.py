"""Targeted forgetting: score the width units (MLP neurons, attention heads) that hold a forget set's
memorized suffixes, and prune the top-scoring ones (registered as ``localize-<method>``).

    prunemem mask --model tiny --method localize-hardconcrete --level 0.01   # 1% of the model's units

The units are ``prunemem.prune.width``'s. The **forget set** is a seeded subset of the evaluation
members the dense model extracts at ``max(samples.k)`` (``prune.localize.forget.size``), or the
given ``forget.sample_ids``; the **retain set** is every other member the dense model extracts (or
``retain.sample_ids``) plus the held-out perplexity text. Both are recorded in the mask header
(``info.localize``), with the scores and the chosen units, so the report measures forget and retain
extraction from the same evaluation files as every other variant.

What the scoring methods read: the forget windows (their suffix loss) and a *retain signal* that the
evaluation never sees: the calibration windows (held-out text the perplexity set does not use) and
the search split (members kept out of evaluation), so a learned mask is not fitted to the retain
members it is judged on. Every method gates each unit's contribution at the input of its output
projection (``attention.dense`` columns of a head, ``mlp.dense_4h_to_h`` column of a neuron), which
is what zeroing the unit's slices does (``width.units_zeroed``):

- ``activations`` (Chang et al., NAACL 2024): mean |activation| on the forget suffixes minus that on
  the retain signal, in units of the retain spread (a head's activation is its output vector's norm);
- ``zeroout`` (Chang et al.): rise of the forget suffix loss when the unit alone is ablated, many
  units per forward pass (each row of a batch ablates its own unit), exact for the candidates a
  first-order estimate ranks highest (``zeroout_candidates``; 0: every unit);
- ``ig`` (integrated gradients, Sundararajan et al. 2017, as Chang et al.): the path integral from all
  gates 0 to all gates 1 of d log p(forget suffix) / d gate, a midpoint rule of ``ig_steps``;
- ``slimming`` (Chang et al., after Liu et al. 2017): a soft removal mask r = sigmoid(rho) per unit,
  learned to raise the forget loss (unlikelihood, Welleck et al. 2019) while holding the retain
  loss, with an L1 penalty on r;
- ``hardconcrete`` (Chang et al., after Louizos et al. 2018): the same objective with a stretched
  hard-concrete removal gate and its expected L0 norm as the penalty; the score is log alpha;
- ``selective`` (Pochinkov & Schoots 2024, "Dissecting language models: machine unlearning via
  selective pruning"): the ratio of forget to retain importance, mean |activation| for a neuron and
  the standard deviation of the pre-output activations for a head; one shot, not their iterations.
- ``random``: the control, units drawn uniformly with ``prune.seed``.

A budget (the level) below 1 is a fraction of the model's units, one >= 1 a count; the chosen units
are the top scores, ties broken by unit order.
"""

from __future__ import annotations

import logging
import math
import random as _random
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from prunemem.errors import PrunememError
from prunemem.prune.width import WidthUnit, unit_slices, width_units

log = logging.getLogger(__name__)

METHODS = ("activations", "zeroout", "ig", "slimming", "hardconcrete", "selective", "random")
EPS = 1e-6


# -- the forget and retain sets ------------------------------------------------------------------
@dataclass
class Sets:
    """Which members are forgotten and which retained (by sample id), and the windows the methods read."""

    forget_ids: list[str]
    retain_ids: list[str]
    forget: torch.Tensor  # [F, k + suffix] windows of the forget set
    retain_text: torch.Tensor  # [R, tokens]: held-out windows (LM loss over every position)
    retain_members: torch.Tensor  # [M, k + suffix]: members kept out of evaluation (suffix loss)
    info: dict = field(default_factory=dict)  # what the mask header records


def budget_units(level: float, n_units: int, key: str = "prune.localize.budgets") -> int:
    """How many units a budget removes: a fraction of ``n_units`` below 1, a count from 1 up."""
    n = round(level) if level >= 1 else math.floor(level * n_units + 1e-9)
    if level >= 1 and abs(level - n) > 1e-9:
        raise PrunememError(f"{key}: {level:g} is neither a fraction (< 1) nor a whole count of units")
    if n > n_units:
        raise PrunememError(f"{key}: {level:g} units exceed the model's {n_units} units (heads and MLP neurons); "
                            f"allowed: a count <= {n_units} or a fraction < 1")
    if n < 1:
        raise PrunememError(f"{key}: {level:g} of the model's {n_units} units removes none; allowed: "
                            f">= {1 / n_units:.4g} or a count >= 1")
    return n


def choose_sets(ids: list[str], extracted: list[bool], spec: dict, seed: int, k: int) -> tuple[list[str], list[str], dict]:
    """(forget ids, retain ids, record) from the members the dense model extracts at ``k``.

    ``spec`` is ``prune.localize``: ``forget.size`` (drawn with ``forget.seed``, default ``seed``) or
    ``forget.sample_ids``; optional ``retain.sample_ids`` (default: every other extracted member).
    """
    forget_spec, retain_spec = spec.get("forget", {}), spec.get("retain", {})
    known = dict(zip(ids, extracted))
    hits = [i for i in ids if known[i]]
    shared = sorted(set(forget_spec.get("sample_ids", [])) & set(retain_spec.get("sample_ids", [])))
    if shared:  # refused first, whatever the dense model extracts
        raise PrunememError(f"prune.localize: the forget and retain sets share {len(shared)} sample id"
                            f"{'s' if len(shared) > 1 else ''}: {', '.join(shared[:10])}; allowed: disjoint sets")
    if "sample_ids" in forget_spec:
        given = list(dict.fromkeys(forget_spec["sample_ids"]))
        unknown = [i for i in given if i not in known]
        if unknown:
            raise PrunememError(f"prune.localize.forget.sample_ids: {', '.join(unknown[:5])} "
                                f"{'is' if len(unknown) == 1 else 'are'} not among the {len(ids)} evaluation members; "
                                f"allowed: member ids such as {', '.join(hits[:3] or ids[:3])}")
        forget = [i for i in given if known[i]]
        if not forget:
            raise PrunememError(f"prune.localize.forget.sample_ids: 0 of the {len(given)} chosen samples are extracted "
                                f"by the dense model at k={k}; choose extracted members ({len(hits)} are"
                                + (f", e.g. {', '.join(hits[:3])}" if hits else "") + ") or drop sample_ids to draw "
                                "prune.localize.forget.size of them")
        dropped = [i for i in given if not known[i]]
        if dropped:
            log.warning("forget set: %d of the given samples are not extracted by the dense model at k=%d and are "
                        "left out: %s", len(dropped), k, ", ".join(dropped[:5]))
    else:
        size = forget_spec.get("size", 8)
        if not hits:
            raise PrunememError(f"prune.localize.forget: the dense model extracts 0 of the {len(ids)} evaluation "
                                f"members at k={k}, so there is nothing to forget; allowed: a model that memorizes, "
                                "or a smaller samples.k")
        if size > len(hits):  # a default that survives a retrained model; the size drawn is recorded
            log.warning("prune.localize.forget.size: %d exceeds the %d members the dense model extracts at k=%d; "
                        "drawing %d", size, len(hits), k, len(hits))
            size = len(hits)
        rng = _random.Random(forget_spec.get("seed", seed) * 104_729 + 23)
        forget, dropped = sorted(rng.sample(hits, size)), []
    if "sample_ids" in retain_spec:
        retain = list(dict.fromkeys(retain_spec["sample_ids"]))
        unknown = [i for i in retain if i not in known]
        if unknown:
            raise PrunememError(f"prune.localize.retain.sample_ids: {', '.join(unknown[:5])} not among the "
                                f"{len(ids)} evaluation members")
    else:
        chosen = set(forget)
        retain = [i for i in hits if i not in chosen]
    record = {"k": k, "forget": forget, "retain": retain, "extracted_members": len(hits), "members": len(ids),
              "not_extracted_given": dropped, "how": "given sample ids" if "sample_ids" in forget_spec else
              f"seeded draw of {len(forget)} of the {len(hits)} extracted members"}
    return forget, retain, record


def check_disjoint_text(forget: dict[str, list[int]], others: dict[str, list[int]], suffix: int, what: str) -> None:
    """Refuse a forget suffix that is also a suffix of the retain signal (the same text twice), naming both ids."""
    seen = {tuple(t[-suffix:]): sid for sid, t in others.items()}
    shared = [(sid, seen[tuple(t[-suffix:])]) for sid, t in forget.items() if tuple(t[-suffix:]) in seen]
    if shared:
        raise PrunememError(f"prune.localize: the forget set overlaps the {what}: {len(shared)} shared suffixes ("
                            + ", ".join(f"{a} = {b}" for a, b in shared[:5]) + "); allowed: disjoint sets")


# -- gating units at their output projection -----------------------------------------------------
@dataclass
class _Site:
    module: torch.nn.Linear
    units: list[int]  # global unit indices gated here
    col_gate: torch.Tensor  # [in_features] -> local gate index (len(units) = always open)
    cols: list[slice]  # each unit's input columns


def _sites(model, units: list[WidthUnit]) -> list[_Site]:
    """The output projections and which input columns each unit owns (from ``width.unit_slices``)."""
    modules = dict(model.named_modules())
    found: dict[str, dict] = {}
    for u, unit in enumerate(units):
        for name, dim, index in unit_slices(model, unit):
            if dim == 1 and name.endswith(".weight"):  # the input columns of the unit's output projection
                site = found.setdefault(name[: -len(".weight")], {"units": [], "cols": []})
                site["units"].append(u)
                site["cols"].append(index)
    out = []
    for name, site in found.items():
        module = modules[name]
        col_gate = torch.full((module.in_features,), len(site["units"]), dtype=torch.long)
        for local, index in enumerate(site["cols"]):
            col_gate[index] = local
        out.append(_Site(module, site["units"], col_gate, site["cols"]))
    return out


@contextmanager
def gated(model, units: list[WidthUnit], gates: torch.Tensor | None = None, record: list | None = None):
    """Multiply each unit's contribution by ``gates`` ([n_units] or [batch, n_units]) during the ``with``.

    With ``record`` (a list), each site's input activations (before gating) are appended as
    (site, tensor) on every forward call. Hooks are removed on exit.
    """
    handles = []
    for site in _sites(model, units):
        def hook(module, args, site=site):
            x = args[0]
            if record is not None:
                record.append((site, x.detach()))
            if gates is None:
                return None
            g = gates[..., site.units]
            g = torch.cat([g, torch.ones_like(g[..., :1])], dim=-1)[..., site.col_gate.to(x.device)]
            if g.dim() == 2:  # one gate row per batch row
                g = g[:, None, :]
            return (x * g.to(x.dtype),)
        handles.append(site.module.register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


# -- losses ----------------------------------------------------------------------------------------
def _logits(model, ids: torch.Tensor, keep: int = 0) -> torch.Tensor:
    positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    return model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=positions,
                 logits_to_keep=keep).logits.float()


def suffix_logprob(model, windows: torch.Tensor, suffix: int) -> torch.Tensor:
    """[b, suffix] log p(target token) at each suffix position (teacher forced)."""
    logits = _logits(model, windows[:, :-1], keep=suffix)
    return logits.log_softmax(-1).gather(-1, windows[:, -suffix:, None]).squeeze(-1)


def lm_loss(model, windows: torch.Tensor) -> torch.Tensor:
    logits = _logits(model, windows[:, :-1])
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), windows[:, 1:])


def unlikelihood(logprob: torch.Tensor) -> torch.Tensor:
    """-log(1 - p(target)): falls to 0 as the memorized token loses its probability (bounded, unlike -NLL)."""
    return -torch.log1p(-logprob.exp().clamp(max=1 - 1e-6)).mean()


# -- the scoring methods ---------------------------------------------------------------------------
@dataclass
class Inputs:
    model: torch.nn.Module
    units: list[WidthUnit]
    sets: Sets
    k: int
    suffix: int
    cfg: dict  # prune.localize
    seed: int

    def forget_windows(self) -> torch.Tensor:
        return self.sets.forget[:, -(self.k + self.suffix):]

    def retain_loss(self, gen: torch.Generator | None = None) -> torch.Tensor:
        """Held-out LM loss plus the suffix loss of the search-split members (when there are any); with
        ``gen``, on a seeded draw of ``retain_batch`` windows of each (a learned mask's step)."""
        text, members = self.sets.retain_text, self.sets.retain_members
        size = self.cfg.get("retain_batch", 8)
        if gen is not None:
            text = text[torch.randperm(text.shape[0], generator=gen)[:size].sort().values]
            if members.numel():
                members = members[torch.randperm(members.shape[0], generator=gen)[:size].sort().values]
        loss = lm_loss(self.model, text)
        if members.numel():
            loss = loss + (-suffix_logprob(self.model, members[:, -(self.k + self.suffix):], self.suffix).mean())
        return loss


def _unit_activity(inp: Inputs, windows: torch.Tensor, suffix_only: bool) -> tuple[torch.Tensor, ...]:
    """Per unit: mean |activation| (a head's output norm), its std over positions, and, for heads, the
    root-mean variance of the pre-output activations (Pochinkov & Schoots' attention importance)."""
    n = len(inp.units)
    mean, var, spread = torch.zeros(n), torch.zeros(n), torch.zeros(n)
    record: list = []
    with torch.no_grad(), gated(inp.model, inp.units, record=record):
        _logits(inp.model, windows[:, :-1], keep=1)
    for site, x in record:
        x = x[:, -inp.suffix:] if suffix_only else x
        x = x.reshape(-1, x.shape[-1]).double()
        idx = torch.stack([torch.arange(c.start, c.stop) for c in site.cols])  # [units, width]: equal widths
        part = x[:, idx]  # [rows, units, width]
        a = part.abs()[..., 0] if idx.shape[1] == 1 else part.norm(dim=2)  # [rows, units]
        where = torch.tensor(site.units)
        mean[where], var[where] = a.mean(0).float(), a.var(0, unbiased=False).float()
        spread[where] = (part.var(0, unbiased=False).mean(1).sqrt() if idx.shape[1] > 1 else a.mean(0)).float()
    return mean, var.sqrt(), spread


def _retain_windows(inp: Inputs) -> torch.Tensor:
    return inp.sets.retain_text


def activations(inp: Inputs) -> torch.Tensor:
    """(mean |a| on the forget suffixes - mean |a| on the retain text) / std of |a| on the retain text."""
    f_mean, _, _ = _unit_activity(inp, inp.forget_windows(), suffix_only=True)
    r_mean, r_std, _ = _unit_activity(inp, _retain_windows(inp), suffix_only=False)
    return (f_mean - r_mean) / (r_std + EPS)


def selective(inp: Inputs) -> torch.Tensor:
    """Pochinkov & Schoots: importance on the forget set over importance on the retain set."""
    f_mean, _, f_spread = _unit_activity(inp, inp.forget_windows(), suffix_only=True)
    r_mean, _, r_spread = _unit_activity(inp, _retain_windows(inp), suffix_only=False)
    heads = torch.tensor([u.kind == "head" for u in inp.units])
    return torch.where(heads, f_spread / (r_spread + EPS), f_mean / (r_mean + EPS))


def attribution(inp: Inputs) -> torch.Tensor:
    """First-order estimate of each unit's zero-out effect, all units from one backward pass: the rise of
    the forget NLL when a gate goes from 1 to 0 is about -d NLL / d gate (attribution patching)."""
    gates = torch.ones(len(inp.units), requires_grad=True)
    with gated(inp.model, inp.units, gates):
        nll = -suffix_logprob(inp.model, inp.forget_windows(), inp.suffix).mean()
    (grad,) = torch.autograd.grad(nll, gates)
    return -grad


def zeroout(inp: Inputs) -> torch.Tensor:
    """Rise of the forget suffix NLL when each unit alone is zeroed, ``zeroout_batch`` rows per pass.

    Exact for every head and for the neurons the first-order estimate ranks highest, ``zeroout_candidates``
    units in all (0: every unit); the others keep their estimate, shifted below every exact score, so the top of the ranking is exact.
    Every unit exactly would cost a forward pass over the forget set per unit (85 min for the embedded
    default's 4,112 units on 2 loaded cores), the candidates a few dozen passes.
    """
    from prunemem.runtime import progress

    windows = inp.forget_windows()
    f, n = windows.shape[0], len(inp.units)
    pool = inp.cfg.get("zeroout_candidates", 256)
    estimate = attribution(inp) if pool and pool < n else None
    if estimate is None:
        exact = list(range(n))
    else:  # every head (few, and the least linear), then the neurons the estimate ranks highest
        heads = [u for u, unit in enumerate(inp.units) if unit.kind == "head"]
        neurons = torch.tensor([unit.kind == "neuron" for unit in inp.units])
        exact = sorted(heads + top_units(torch.where(neurons, estimate, -torch.inf), max(0, pool - len(heads))))
    group = max(1, inp.cfg.get("zeroout_batch", 64) // f)
    scores = torch.zeros(n)
    with torch.no_grad():
        with gated(inp.model, inp.units, torch.ones(1, n)):
            base = -suffix_logprob(inp.model, windows, inp.suffix).mean(1)  # [F]
        for start in progress(range(0, len(exact), group), desc="zero-out", unit="group"):
            chosen = exact[start:start + group]
            gates = torch.ones(len(chosen) * f, n)
            for row, u in enumerate(chosen):
                gates[row * f:(row + 1) * f, u] = 0.0
            with gated(inp.model, inp.units, gates):
                nll = -suffix_logprob(inp.model, windows.repeat(len(chosen), 1), inp.suffix).mean(1)
            scores[chosen] = (nll.view(len(chosen), f) - base).mean(1).float()
    if estimate is not None:
        rest = torch.ones(n, dtype=torch.bool)
        rest[exact] = False
        floor = scores[exact].min()
        scores[rest] = estimate[rest] - estimate[rest].max() + floor - 1.0
    return scores


def ig(inp: Inputs) -> torch.Tensor:
    """Integrated gradients of log p(forget suffix) over the unit gates, baseline all gates 0."""
    steps, n = inp.cfg.get("ig_steps", 8), len(inp.units)
    windows, total = inp.forget_windows(), torch.zeros(n, dtype=torch.float64)
    for s in range(steps):
        gates = torch.full((n,), (s + 0.5) / steps, requires_grad=True)
        with gated(inp.model, inp.units, gates):
            logp = suffix_logprob(inp.model, windows, inp.suffix).sum(1).mean()
        (grad,) = torch.autograd.grad(logp, gates)
        total += grad.double()
    return (total / steps).float()  # x (1 - 0): the gate's distance from the baseline


def _learn(inp: Inputs, gate_of, penalty_of, params: list[torch.Tensor]) -> None:
    """SGD with momentum on the removal parameters: forget unlikelihood + retain_weight * retain loss + l1 * penalty."""
    from prunemem.runtime import progress

    # plain gradient steps, not Adam: Adam moves every parameter by about lr a step whatever its gradient,
    # so after a few dozen steps every unit with a steady gradient sign has the same score (ties)
    opt = torch.optim.SGD(params, lr=inp.cfg.get("lr", 100.0), momentum=0.9)
    windows = inp.forget_windows()
    gen = torch.Generator().manual_seed(inp.seed)
    for step in progress(range(inp.cfg.get("steps", 40)), desc="mask", unit="step"):
        gates = gate_of(gen)
        with gated(inp.model, inp.units, gates):
            forget = unlikelihood(suffix_logprob(inp.model, windows, inp.suffix))
            retain = inp.retain_loss(gen)
        loss = forget + inp.cfg.get("retain_weight", 1.0) * retain + inp.cfg.get("l1", 1.0) * penalty_of()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0:
            log.info("step %d: forget %.4f retain %.4f penalty %.4f", step, float(forget.detach()), float(retain.detach()),
                     float(penalty_of().detach()))


def _param_share(inp: Inputs) -> torch.Tensor:
    """Each unit's share of all the units' parameters: the penalty weighs what a removal costs, so a
    head (3 d_head rows and d_head columns) costs as much as the neurons of the same weight mass."""
    from prunemem.prune.width import unit_size

    size = torch.tensor([float(unit_size(inp.model, u)) for u in inp.units])
    return size / size.sum()


def slimming(inp: Inputs) -> torch.Tensor:
    """A soft removal mask r = sigmoid(rho) (starting near 0), L1 on r weighted by parameters; the score is r."""
    rho = torch.full((len(inp.units),), -3.0, requires_grad=True)
    share = _param_share(inp)
    _learn(inp, lambda gen: 1 - torch.sigmoid(rho), lambda: (torch.sigmoid(rho) * share).sum(), [rho])
    return torch.sigmoid(rho).detach()


# the stretched hard-concrete distribution of Louizos et al. (2018), as Chang et al. use it
HC_BETA, HC_GAMMA, HC_ZETA = 2 / 3, -0.1, 1.1


def hardconcrete(inp: Inputs) -> torch.Tensor:
    """A hard-concrete removal gate z per unit, penalised by its expected L0 norm; the score is log alpha."""
    log_alpha = torch.full((len(inp.units),), -3.0, requires_grad=True)

    def gate(gen):
        u = torch.rand(log_alpha.shape, generator=gen).clamp(1e-6, 1 - 1e-6)
        s = torch.sigmoid((u.log() - (-u).log1p() + log_alpha) / HC_BETA)
        z = (s * (HC_ZETA - HC_GAMMA) + HC_GAMMA).clamp(0, 1)
        return 1 - z

    share = _param_share(inp)

    def l0():  # the expected number of removed units, weighted by their parameters
        return (torch.sigmoid(log_alpha - HC_BETA * math.log(-HC_GAMMA / HC_ZETA)) * share).sum()

    _learn(inp, gate, l0, [log_alpha])
    return log_alpha.detach()


def random_units(inp: Inputs) -> torch.Tensor:
    """The control: a seeded uniform score (the top ones are a uniform draw of units)."""
    return torch.rand(len(inp.units), generator=torch.Generator().manual_seed(inp.seed * 1_000_003 + 7))


SCORERS = {"activations": activations, "zeroout": zeroout, "ig": ig, "slimming": slimming,
           "hardconcrete": hardconcrete, "selective": selective, "random": random_units}


def top_units(scores: torch.Tensor, n: int) -> list[int]:
    """The ``n`` highest scores; ties by unit order (a stable sort of the negated scores)."""
    order = torch.sort(-scores.double(), stable=True).indices
    return sorted(order[:n].tolist())


def keep_masks(model, units: list[WidthUnit], names: list[str]) -> dict[str, torch.Tensor]:
    """Keep-masks of the prunable ``names`` with every slice of ``units`` pruned (weights only)."""
    params = dict(model.named_parameters())
    masks = {name: torch.ones(params[name].shape, dtype=torch.bool) for name in names}
    for unit in units:
        for name, dim, index in unit_slices(model, unit):
            if name in masks:
                masks[name].narrow(dim, index.start, index.stop - index.start).fill_(False)
    return masks


def localize(method: str, model, sets: Sets, level: float, k: int, suffix: int, cfg: dict, seed: int):
    """(chosen units, scores, record) of ``method`` at budget ``level`` on ``model`` (edited by nothing)."""
    units = width_units(model)
    n = budget_units(level, len(units))
    for p in model.parameters():
        p.requires_grad_(False)
    scores = SCORERS[method](Inputs(model, units, sets, k, suffix, cfg, seed))
    if not torch.isfinite(scores).all():
        raise PrunememError(f"localize-{method}: non-finite unit scores (lower prune.localize.lr)")
    chosen = [units[i] for i in top_units(scores, n)]
    per_layer: dict[str, int] = {}
    for unit in chosen:
        key = f"{unit.block}.{unit.kind}"
        per_layer[key] = per_layer.get(key, 0) + 1
    record = {"method": method, "units": len(units), "chosen": [u.name for u in chosen], "per_layer": per_layer,
              "scores": [round(float(s), 6) for s in scores], "unit_order": "width_units: by block, heads "
              "before neurons, by index"}
    return chosen, scores, record
