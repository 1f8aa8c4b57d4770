"""EvoP's evolutionary pruning-pattern search (EPPS), with an optional memorization-aware fitness.

EvoP (Wu et al. 2025, "EvoP: Robust LLM Inference via Evolutionary Pruning", arXiv 2502.14910)
searches which transformer blocks to remove at a structured sparsity with a genetic algorithm
whose fitness is the pruned model's perplexity on the calibration set. We search patterns of
``units``: whole blocks (unit i = block i) or sublayers (unit 2i = block i's attention, 2i + 1
its MLP). A pattern removes exactly ``floor(level * units)`` of them.

``evop-mem`` (ours) adds the pruned model's extraction rate on a *search split* of members,
disjoint from the members that are finally evaluated: fitness = perplexity + lambda * rate.

Candidates are evaluated in batches: each micro-batch stacks calibration rows of several
candidates and runs the model's own blocks over it, each block only on the rows whose candidate
keeps some of it (the others pass their residual stream through unchanged, exactly as SLEB's
pass-through does), while forward hooks multiply every sublayer's output by a per-row 0/1 gate
for candidates that remove only the attention or only the MLP of a block.

    prunemem mask --model tiny --method evop --level 0.5
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from typing import Callable

import torch

from prunemem import arch
from prunemem.prune.units import SUBLAYERS, removed_count, unit_names  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

Pattern = tuple[int, ...]  # sorted indices of the removed units


def removed_sublayers(pattern: Pattern, granularity: str) -> list[tuple[int, str]]:
    """(block, sublayer) pairs a pattern removes."""
    if granularity == "block":
        return [(b, s) for b in pattern for s in SUBLAYERS]
    return [(u // 2, SUBLAYERS[u % 2]) for u in pattern]


class _ZeroAttention(torch.nn.Module):
    """A removed attention sublayer: contributes nothing to the residual stream (bias included)."""

    def forward(self, hidden_states, *args, **kwargs):
        return torch.zeros_like(hidden_states), None


class _ZeroMLP(torch.nn.Module):
    def forward(self, hidden_states):
        return torch.zeros_like(hidden_states)


def skip_sublayers(model, names: list[str]) -> None:
    """Replace the named sublayers ('2.attention', '3.mlp') by zero-output modules (the layer map
    says what a block calls them; with either residual layout a sublayer adding zero is removed)."""
    family, layers = arch.of(model), arch.blocks(model)
    for name in names:
        block, sub = name.split(".")
        arch.set_sublayer(layers[int(block)], family, sub, _ZeroAttention() if sub == "attention" else _ZeroMLP())


class SublayerGates:
    """Per-row 0/1 gates on every block's attention and MLP output, installed as forward hooks.

    ``set(gates)`` takes a float tensor [rows, blocks, 2] (1 = keep) for the next forward pass.
    """

    def __init__(self, model):
        family, self.layers = arch.of(model), arch.blocks(model)
        self.gates: torch.Tensor | None = None
        self.handles = []
        for index, layer in enumerate(self.layers):
            for which, sub in enumerate(SUBLAYERS):
                self.handles.append(arch.sublayer(layer, family, sub).register_forward_hook(self._hook(index, which)))

    def _hook(self, block: int, which: int):
        def hook(module, args, output):
            if self.gates is None:
                return output
            gate = self.gates[:, block, which].to(dtype=(output[0] if which == 0 else output).dtype)
            if which == 0:  # attention returns (output, weights)
                return (output[0] * gate.view(-1, 1, 1), *output[1:])
            return output * gate.view(-1, 1, 1)

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def gate_rows(pattern: Pattern, n_blocks: int, granularity: str) -> torch.Tensor:
    """The [blocks, 2] keep-gates of one pattern."""
    gates = torch.ones(n_blocks, 2)
    for block, sub in removed_sublayers(pattern, granularity):
        gates[block, SUBLAYERS.index(sub)] = 0.0
    return gates


def _take(value, rows: torch.Tensor, n: int):
    """``value`` (a block argument) restricted to the stacked rows ``rows`` of ``n``; shared tensors
    (rotary tables, position ids of batch 1) pass unchanged."""
    if isinstance(value, torch.Tensor):
        return value[rows] if value.dim() and value.shape[0] == n and n > 1 else value
    if isinstance(value, (tuple, list)):
        return type(value)(_take(v, rows, n) for v in value)
    if isinstance(value, dict):
        return {k: _take(v, rows, n) for k, v in value.items()}
    return value


class GatedForward(torch.nn.Module):
    """The causal LM's forward over rows of different candidates.

    A block runs only on the rows whose candidate keeps some of it (the rest pass their residual
    stream through, as a removed block does); inside a block the ``SublayerGates`` zero the
    sublayers a row's candidate removes. Called like the model (``score_batch`` takes it as one).
    """

    def __init__(self, model, gates: SublayerGates):
        super().__init__()
        self.model, self.gates = model, gates
        self.row_gates: torch.Tensor | None = None  # [rows, blocks, 2], set before each call

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep: int = 0):
        from types import SimpleNamespace

        from prunemem.blockwise import block0_inputs

        (args, kwargs), = block0_inputs(self.model, [input_ids])  # embeddings, rotary tables, causal mask
        hidden, n = args[0], input_ids.shape[0]
        for index, layer in enumerate(arch.blocks(self.model)):
            active = (self.row_gates[:, index].amax(dim=1) > 0).nonzero().flatten()
            if active.numel() == 0:
                continue
            every = active.numel() == n
            self.gates.gates = self.row_gates if every else self.row_gates[active]
            block_in = hidden if every else hidden[active]
            out = layer(block_in, *_take(args[1:], active, n), **_take(kwargs, active, n))
            out = out[0] if isinstance(out, tuple) else out
            hidden = out if every else hidden.index_copy(0, active, out)
        self.gates.gates = None
        hidden = arch.final_norm(self.model)(hidden)
        head = arch.unembedding(self.model)
        return SimpleNamespace(logits=head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden))


@dataclass
class Score:
    perplexity: float
    extraction: float | None = None  # share of the search split extracted (evop-mem only)
    fitness: float = 0.0

    @classmethod
    def of(cls, nll: float, tokens: int, extracted: float | None, members: int, lam: float) -> "Score":
        """The memorization-aware objective, in one place for EvoP and AdaPruner: calibration
        perplexity exp(nll / tokens), plus ``lam`` times the share of search-split members extracted."""
        ppl = math.exp(nll / tokens)
        rate = extracted / members if extracted is not None else None
        return cls(ppl, rate, ppl + lam * rate if rate is not None else ppl)


def nll_rows(forward, ids: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL of each calibration row under ``forward`` (a model, or ``GatedForward``)."""
    ids = ids.long()
    logits = forward(input_ids=ids).logits[:, :-1].float()
    flat = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                             reduction="none")
    return flat.view(ids.shape[0], -1).sum(1)


def extracted_rows(forward, windows: torch.Tensor, k: int, suffix: int) -> torch.Tensor:
    """1.0 for each search-split window whose suffix greedy decoding reproduces, else 0.0."""
    from prunemem.evaluate.memorization import score_batch

    return score_batch(forward, windows, k, suffix)["extracted"].double()


@torch.no_grad()
def score_model(model, calibration: torch.Tensor, search: torch.Tensor | None = None, k: int = 0, suffix: int = 0,
                lam: float = 0.0, batch_rows: int = 8) -> Score:
    """One model's ``Score`` (as ``Evaluator`` scores a pattern): what AdaPruner's trials are judged by."""
    device = next(model.parameters()).device

    def total(data, measure):
        return sum(float(measure(data[i:i + batch_rows].to(device)).double().sum())
                   for i in range(0, data.shape[0], batch_rows))

    nll = total(calibration, lambda ids: nll_rows(model, ids))
    extracted = total(search, lambda w: extracted_rows(model, w, k, suffix)) if search is not None else None
    tokens = calibration.shape[0] * (calibration.shape[1] - 1)
    return Score.of(nll, tokens, extracted, search.shape[0] if search is not None else 0, lam)


@dataclass
class Evaluator:
    """Scores patterns: calibration perplexity, and extraction on a search split when ``search`` is set."""

    model: torch.nn.Module
    calibration: torch.Tensor  # [n, tokens]
    granularity: str
    batch_rows: int = 32
    search: torch.Tensor | None = None  # [n, >= k + suffix] windows of the search split
    k: int = 0
    suffix: int = 0
    lam: float = 0.0
    cache: dict[Pattern, Score] = field(default_factory=dict)

    def __post_init__(self):
        self.n_blocks = len(arch.blocks(self.model))
        self.device = next(self.model.parameters()).device

    def __call__(self, patterns: list[Pattern]) -> list[Score]:
        """Scores in order; patterns seen before come from the cache."""
        todo = list(dict.fromkeys(p for p in patterns if p not in self.cache))
        if todo:
            with SublayerGates(self.model) as gates:
                forward = GatedForward(self.model, gates)
                nll = self._rows(forward, todo, self.calibration, nll_rows)
                extracted = (self._rows(forward, todo, self.search,
                                        lambda f, w: extracted_rows(f, w, self.k, self.suffix))
                             if self.search is not None else None)
            tokens = self.calibration.shape[0] * (self.calibration.shape[1] - 1)
            for i, pattern in enumerate(todo):
                self.cache[pattern] = Score.of(float(nll[i]), tokens,
                                               float(extracted[i]) if extracted is not None else None,
                                               self.search.shape[0] if self.search is not None else 0, self.lam)
        return [self.cache[p] for p in patterns]

    @torch.no_grad()
    def _rows(self, forward: GatedForward, patterns: list[Pattern], data: torch.Tensor,
              measure: Callable[[GatedForward, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Sum of ``measure`` over ``data``'s rows for each pattern, candidates stacked in micro-batches."""
        n = data.shape[0]
        pattern_gates = torch.stack([gate_rows(p, self.n_blocks, self.granularity) for p in patterns])
        which = torch.arange(len(patterns)).repeat_interleave(n)  # candidate of each stacked row
        rows = torch.arange(n).repeat(len(patterns))
        totals = torch.zeros(len(patterns), dtype=torch.float64)
        for start in range(0, which.numel(), self.batch_rows):
            cand, row = which[start:start + self.batch_rows], rows[start:start + self.batch_rows]
            forward.row_gates = pattern_gates[cand].to(self.device)
            values = measure(forward, data[row].to(self.device)).double().cpu()
            totals.index_add_(0, cand, values)
        return totals



@dataclass(frozen=True)
class SearchConfig:
    """The genetic algorithm's settings (``prune.evop`` in params)."""

    population: int = 16
    generations: int = 20
    mutation: float = 0.2  # chance that each removed unit is swapped for a kept one
    crossover: float = 0.8  # chance that a child mixes two parents rather than copying one
    elite: int = 2  # best patterns carried over unchanged
    tournament: int = 3  # patterns drawn per parent selection
    seed: int = 0


def crossover(a: Pattern, b: Pattern, n_remove: int, rng: random.Random) -> Pattern:
    """Keep the units both parents remove; fill up from the units only one of them removes."""
    common = sorted(set(a) & set(b))
    either = sorted(set(a) ^ set(b))
    return tuple(sorted(common + rng.sample(either, n_remove - len(common))))


def mutate(pattern: Pattern, n_units: int, rate: float, rng: random.Random) -> Pattern:
    removed = list(pattern)
    for i in range(len(removed)):
        if rng.random() < rate:
            kept = [u for u in range(n_units) if u not in removed]
            if kept:
                removed[i] = rng.choice(kept)
    return tuple(sorted(removed))


def random_pattern(n_units: int, n_remove: int, rng: random.Random) -> Pattern:
    return tuple(sorted(rng.sample(range(n_units), n_remove)))


def search(evaluate: Callable[[list[Pattern]], list[Score]], n_units: int, n_remove: int, cfg: SearchConfig,
           progress=None) -> tuple[Pattern, list[dict]]:
    """Run the GA; returns the best pattern found and one history row per generation.

    Ties in fitness break by the pattern itself, so the result is a function of the seed alone.
    The population is kept free of duplicates while the pattern space allows it.
    """
    rng = random.Random(cfg.seed)
    space = math.comb(n_units, n_remove)
    size = min(cfg.population, space)

    def fresh(population: list[Pattern], make: Callable[[], Pattern]) -> Pattern:
        for _ in range(50):
            child = make()
            if child not in population:
                return child
        return child

    population: list[Pattern] = []
    while len(population) < size:
        population.append(fresh(population, lambda: random_pattern(n_units, n_remove, rng)))
    history = []
    best: tuple[float, Pattern] | None = None
    generations = range(cfg.generations) if progress is None else progress(range(cfg.generations))
    for generation in generations:
        scores = evaluate(population)
        ranked = sorted(zip(population, scores), key=lambda ps: (ps[1].fitness, ps[0]))
        if best is None or (ranked[0][1].fitness, ranked[0][0]) < best:
            best = (ranked[0][1].fitness, ranked[0][0])
        top = evaluate([best[1]])[0]
        fitness = [s.fitness for s in scores]
        history.append({"generation": generation, "best_fitness": top.fitness, "mean_fitness": sum(fitness) / size,
                        "worst_fitness": max(fitness), "best_perplexity": top.perplexity,
                        "best_extraction": top.extraction, "best_pattern": list(best[1]),
                        "evaluated": len(getattr(evaluate, "cache", ()))})
        log.info("generation %d: best %.4f (pattern %s), mean %.4f", generation, top.fitness, list(best[1]),
                 history[-1]["mean_fitness"])
        if generation == cfg.generations - 1:
            break

        def parent() -> Pattern:
            return min(rng.sample(ranked, min(cfg.tournament, size)), key=lambda ps: (ps[1].fitness, ps[0]))[0]

        def child() -> Pattern:
            a = parent()
            pattern = crossover(a, parent(), n_remove, rng) if rng.random() < cfg.crossover else a
            return mutate(pattern, n_units, cfg.mutation, rng)

        nxt = [p for p, _ in ranked[: min(cfg.elite, size)]]
        while len(nxt) < size:
            nxt.append(fresh(nxt, child))
        population = nxt
    return best[1], history
