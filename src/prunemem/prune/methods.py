"""The pruning methods: each returns a keep-mask for every prunable tensor. Registered, with their
traits, in ``prunemem.prune.registry``.

    prunemem mask --model tiny --method global --level 0.5

``level`` is the fraction of the method's own target set that is removed. Methods that
restrict themselves to a subset (attention, mlp, first25, last25) leave the other prunable
tensors whole, so their ``achieved_sparsity`` over all prunable weights is lower than ``level``.
Activation-aware methods (wanda, sparsegpt, owl over wanda, sleb, wanda-NofM, sparsegpt-NofM) read
the calibration set through ``MaskContext.calibration``; N:M methods (``magnitude-2of4``,
``wanda-4of8``, ``sparsegpt-2of4``) have the single level 1 - N/M. Calibrated methods get a model
already placed where it computes (``prune.device`` / ``prune.dtype``, see
``prunemem.blockwise.Placement``) and return their masks and carried weights on the host. ``evop`` and ``evop-mem`` search which blocks or
sublayers to remove (``prunemem.prune.search``); ``evop-mem`` also reads the search split.
A method reads only the params keys its registry entry declares (``ctx.cfg`` is ``params["prune"]``).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Callable

import torch

from prunemem import arch
from prunemem.errors import PrunememError
from prunemem.prune import magnitude
from prunemem.prune.masks import BitMask
from prunemem.prune.registry import Method, resolve
from prunemem.prune.units import check_evop_level
from prunemem.prune.targets import subset


@dataclass
class MaskContext:
    """What a method may read: weights tensor by tensor, the whole model, the calibration set."""

    source: object  # WeightSource or DictSource
    cfg: dict  # params["prune"]
    method: Method | None = None  # the resolved grid name (N:M pattern, replicate seed)
    load_model: Callable[[], torch.nn.Module] | None = None
    calibration: Callable[[], torch.Tensor] | None = None
    search_split: Callable[[], torch.Tensor] | None = None  # evop-mem: member windows kept out of evaluation
    samples: dict | None = None  # params["samples"] (k and suffix of the search split)
    pool: Callable[[], torch.Tensor] | None = None  # the whole calibration pool (AdaPruner draws its subsets)
    cache_dir: object = None  # where a search may keep scored trials between runs (AdaPruner); None: nowhere
    members: Callable[[], object] | None = None  # localize-*: the evaluation members (polars frame: sample_id, tokens)
    search_members: Callable[[], torch.Tensor] | None = None  # localize-*: the search split's windows (may be empty)


@dataclass
class MaskResult:
    masks: dict[str, BitMask]  # packed per tensor as soon as computed
    updated: dict[str, torch.Tensor] | None = None  # SparseGPT: the compensated weights
    removed_blocks: list[int] = field(default_factory=list)  # SLEB
    block_levels: list[float] | None = None  # OWL: the sparsity given to each block
    removed_sublayers: list[str] = field(default_factory=list)  # EvoP at sublayer granularity: "2.mlp"
    removed_units: list[str] = field(default_factory=list)  # width pruning: heads and neurons, "2.head.1"
    info: dict = field(default_factory=dict)  # how the mask was found (calibration choice, search history)

    def __post_init__(self):
        # a method may return bool keep-masks; they are packed here, tensor by tensor, so every
        # artifact holds bits and a new method stays one small function
        self.masks = {n: m if isinstance(m, BitMask) else BitMask.of(m) for n, m in self.masks.items()}

    def bool_masks(self) -> dict[str, torch.Tensor]:
        """The masks unpacked to bool tensors (small models and tests)."""
        return {name: mask.bool() for name, mask in self.masks.items()}


def _magnitude_subset(which: str):
    def method(ctx: MaskContext, level: float) -> MaskResult:
        source = ctx.source
        # block_fraction shapes only first25/last25, whose registry entries alone declare it
        chosen = [t.name for t in subset(source.targets, which, ctx.cfg["block_fraction"])]

        def score(name: str) -> torch.Tensor:
            return source[name].abs()

        masks = magnitude.all_kept(source.names, score)
        masks.update(magnitude.global_masks(chosen, score, level))
        return MaskResult(masks)

    method.__doc__ = f"Global L1 magnitude restricted to {which} prunable tensors."
    return method


def layerwise(ctx: MaskContext, level: float) -> MaskResult:
    """Every prunable matrix pruned to exactly ``level`` by L1 magnitude."""
    return MaskResult({n: BitMask.of(magnitude.tensor_mask(ctx.source[n].abs(), level)) for n in ctx.source.names})


global_magnitude = _magnitude_subset("all")
attention_magnitude = _magnitude_subset("attention")
mlp_magnitude = _magnitude_subset("mlp")
first_magnitude = _magnitude_subset("first")
last_magnitude = _magnitude_subset("last")


def random_control(ctx: MaskContext, level: float) -> MaskResult:
    """Control: every prunable matrix pruned to exactly ``level`` uniformly at random (seeded per tensor).

    A replicate (``random-s3``) uses the seed in its name instead of ``prune.seed``.
    """
    seed = ctx.method.seed if ctx.method is not None and ctx.method.seed is not None else ctx.cfg["seed"]
    out = {}
    for name in ctx.source.names:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        out[name] = BitMask.of(magnitude.random_mask(ctx.source[name].shape, level, gen))
    return MaskResult(out)


def _blockwise_rows(ctx: MaskContext, block_level: Callable[[int], float], nm: tuple[int, int] | None = None,
                    updated: dict | None = None, sparse_gpt: bool = False, model=None) -> dict[str, BitMask]:
    """Prune block by block on the calibration pass (pruned outputs feed the next block).

    Masks and SparseGPT's updated weights go to the host as each linear is done, so the device
    holds one block's working set, never the whole model's masks.
    """
    from prunemem.blockwise import HessianStats, blockwise
    from prunemem.prune import calibrated as cal

    model, masks = model if model is not None else ctx.load_model(), {}
    damp = ctx.cfg.get("damp", 0.01)

    def edit(index, linears, stats):
        level = block_level(index)
        for name, matrix in linears.items():  # matrix.weight: the [out, in] view the layer map gives
            if sparse_gpt:
                new, keep = cal.sparsegpt(matrix.weight, stats[name].hessian, level, nm=nm, damp=damp)
                matrix.weight.copy_(new)
                updated[f"{name}.weight"] = matrix.to_param(new.detach()).to("cpu", copy=True)
            else:
                score = cal.wanda_score(matrix.weight, stats[name])
                keep = cal.nm_mask(score, *nm) if nm else cal.row_mask(score, level)
                matrix.weight.mul_(keep)
            masks[f"{name}.weight"] = BitMask.of(matrix.to_param(keep))  # packed where computed, kept on the host

    stats = (lambda m: HessianStats(m.in_features, m.weight.device)) if sparse_gpt else \
        (lambda m: cal.NormStats(m.in_features, m.weight.device))
    blockwise(model, ctx.calibration(), stats, edit, batch_size=ctx.cfg.get("batch_size", 8))
    return masks


def sparsegpt(ctx: MaskContext, level: float) -> MaskResult:
    """SparseGPT: OBS pruning with weight compensation; the result carries the updated weights
    (N:M groups for sparsegpt-NofM)."""
    if ctx.method is not None and ctx.method.nm:
        return _nm(ctx, "sparsegpt")
    updated: dict[str, torch.Tensor] = {}
    masks = _blockwise_rows(ctx, lambda i: level, updated=updated, sparse_gpt=True)
    return MaskResult(masks, updated=updated)


def owl(ctx: MaskContext, level: float) -> MaskResult:
    """OWL: per-block sparsity from outlier ratios, then Wanda or magnitude within each block."""
    from prunemem.blockwise import blockwise
    from prunemem.prune import calibrated as cal

    spec, source = ctx.cfg["owl"], ctx.source
    n_blocks = max(t.layer for t in source.targets) + 1
    ratios = [0.0] * n_blocks
    model = None
    if spec["score"] == "wanda":
        def measure(index, linears, stats):
            ratios[index] = cal.outlier_ratio([cal.wanda_score(m.weight, stats[n]) for n, m in linears.items()],
                                              spec["M"])

        model = ctx.load_model()  # the measuring pass edits nothing, so the pruning pass reuses the model
        blockwise(model, ctx.calibration(), lambda m: cal.NormStats(m.in_features, m.weight.device),
                  measure, batch_size=ctx.cfg.get("batch_size", 8))
    else:
        for index in range(n_blocks):
            names = [t.name for t in source.targets if t.layer == index]
            ratios[index] = cal.outlier_ratio([source[n].abs().double() for n in names], spec["M"])
    levels = cal.owl_levels(ratios, level, spec["lambda"])
    if spec["score"] == "wanda":
        masks = _blockwise_rows(ctx, lambda i: levels[i], model=model)
    else:
        masks = {t.name: BitMask.of(arch.out_in(cal.row_mask(source.matrix(t.name).abs().double(), levels[t.layer]),
                                                t.transposed)) for t in source.targets}
    return MaskResult(masks, block_levels=levels)


def sleb(ctx: MaskContext, level: float) -> MaskResult:
    """SLEB: remove floor(level * blocks) whole blocks, greedily by calibration loss.

    ``prune.sleb.protect_ends`` (default true, the reference's ``early_barrier`` / ``latter_barrier``
    of 1) keeps the first and the last block out of the search.
    """
    from prunemem.prune import calibrated as cal

    n_blocks = max(t.layer for t in ctx.source.targets) + 1
    protect = ctx.cfg.get("sleb", {}).get("protect_ends", True)
    n_remove = math.floor(level * n_blocks + 1e-9)
    check_sleb_level(level, n_blocks, protect, "prune.levels")
    removed = cal.sleb(ctx.load_model(), ctx.calibration(), n_remove, protect_ends=protect,
                       batch_size=ctx.cfg.get("batch_size", 8))
    masks = {t.name: BitMask.of(torch.full(ctx.source[t.name].shape, t.layer not in removed, dtype=torch.bool))
             for t in ctx.source.targets}
    return MaskResult(masks, removed_blocks=removed)


def check_sleb_level(level: float, n_blocks: int, protect_ends: bool, key: str) -> None:
    """One line when SLEB's level asks for more blocks than it may remove."""
    from prunemem.errors import PrunememError

    n_remove, allowed = math.floor(level * n_blocks + 1e-9), n_blocks - (2 if protect_ends else 0)
    if n_remove > allowed:
        raise PrunememError(f"{key}: sleb at {level:g} removes {n_remove} of {n_blocks} blocks and only {allowed} "
                            "may go" + (" (prune.sleb.protect_ends keeps the first and the last)" if protect_ends
                                        else "") + f"; allowed: level < {(allowed + 1) / n_blocks:.4g}")


def _evop(memorization: bool):
    def method(ctx: MaskContext, level: float) -> MaskResult:
        from prunemem.prune import search
        from prunemem.runtime import progress

        spec = ctx.cfg["evop"]
        split = ctx.search_split() if memorization else None  # refuse an overlapping split before any work
        torch.set_num_threads(spec["threads"])  # the search uses the job's cores; fixed, so scores repeat
        from prunemem.runtime import resolve_device

        device, dtype = resolve_device(spec.get("device", "auto"), spec.get("dtype", "auto"), "prune.evop")
        # only the chosen pattern leaves this function, so bf16 fitness on a GPU is fine
        model = ctx.load_model().to(device=device, dtype=dtype)
        n_blocks, granularity = len(arch.blocks(model)), spec["granularity"]
        names = search.unit_names(n_blocks, granularity)
        n_remove = search.removed_count(level, len(names))
        check_evop_level(level, n_blocks, granularity, "prune.levels")
        evaluator = search.Evaluator(model, ctx.calibration(), granularity, batch_rows=spec["batch_size"])
        if memorization:
            samples = ctx.samples
            evaluator.search, evaluator.lam = split, float(spec["lambda"])
            evaluator.k, evaluator.suffix = max(samples["k"]), samples["suffix_tokens"]
        cfg = search.SearchConfig(**{k: spec[k] for k in ("population", "generations", "mutation", "crossover",
                                                           "elite", "tournament")}, seed=ctx.cfg["seed"])
        best, history = search.search(evaluator, len(names), n_remove, cfg,
                                      progress=lambda it: progress(it, desc=f"evop @ {level}", unit="generation"))
        removed = set(search.removed_sublayers(best, granularity))
        masks = {t.name: BitMask.of(torch.full(ctx.source[t.name].shape, (t.layer, t.part) not in removed,
                                               dtype=torch.bool)) for t in ctx.source.targets}
        info = {"search": {"granularity": granularity, "units": len(names), "removed": [names[u] for u in best],
                           "lambda": evaluator.lam, "k": evaluator.k or None, "history": history}}
        if granularity == "block":
            return MaskResult(masks, removed_blocks=list(best), info=info)
        return MaskResult(masks, removed_sublayers=[names[u] for u in best], info=info)

    method.__doc__ = ("EvoP: evolutionary search over removed " + ("blocks/sublayers, fitness = calibration "
                      "perplexity + lambda * extraction on the search split" if memorization else
                      "blocks/sublayers, fitness = calibration perplexity"))
    return method


evop = _evop(memorization=False)
evop_mem = _evop(memorization=True)


def _nm(ctx: MaskContext, score: str) -> MaskResult:
    from prunemem.prune import calibrated as cal

    n, m = ctx.method.nm
    try:
        if score == "sparsegpt":
            updated: dict[str, torch.Tensor] = {}
            masks = _blockwise_rows(ctx, lambda i: 1 - n / m, nm=(n, m), updated=updated, sparse_gpt=True)
            return MaskResult(masks, updated=updated)
        if score == "wanda":
            return MaskResult(_blockwise_rows(ctx, lambda i: 1 - n / m, nm=(n, m)))
        return MaskResult({t.name: BitMask.of(arch.out_in(cal.nm_mask(ctx.source.matrix(t.name).abs(), n, m),
                                                          t.transposed)) for t in ctx.source.targets})
    except ValueError as err:
        raise PrunememError(f"prune.methods: {ctx.method.name}: {err}") from None


def magnitude_nm(ctx: MaskContext, level: float) -> MaskResult:
    """N:M by |W|: in every group of M consecutive input weights, the N largest are kept."""
    return _nm(ctx, "magnitude")


def wanda(ctx: MaskContext, level: float) -> MaskResult:
    """Wanda: |W| * ||X||, each output row pruned to exactly ``level`` (N:M groups for wanda-NofM)."""
    if ctx.method is not None and ctx.method.nm:
        return _nm(ctx, "wanda")
    return MaskResult(_blockwise_rows(ctx, lambda i: level))


def width(ctx: MaskContext, level: float) -> MaskResult:
    """Width pruning (``width-<metric>``, ``adapruner``, ``adapruner-mem``): heads and neurons removed,
    in ``prunemem.prune.adapruner`` (imported here, so it is in the mask stage's code deps)."""
    from prunemem.prune import adapruner

    return MaskResult(**adapruner.run(ctx, level))


def _localize(name: str):
    def method(ctx: MaskContext, level: float) -> MaskResult:
        from prunemem.evaluate.memorization import score_windows
        from prunemem.prune import localize

        spec, samples = ctx.cfg["localize"], ctx.samples
        torch.set_num_threads(spec["threads"])
        k, suffix = max(samples["k"]), samples["suffix_tokens"]
        members = ctx.members()
        windows = torch.tensor(members["tokens"].to_list(), dtype=torch.long)
        model = ctx.load_model()
        localize.budget_units(level, len(localize.width_units(model)))  # a budget too large: one line, before any work
        extracted = score_windows(model, windows, k, suffix, batch_size=32)["extracted"].tolist()
        ids = members["sample_id"].to_list()
        forget, retain, record = localize.choose_sets(ids, extracted, spec, ctx.cfg["seed"], k)
        row = {sid: i for i, sid in enumerate(ids)}
        search = ctx.search_members()
        localize.check_disjoint_text({sid: windows[row[sid]].tolist() for sid in forget},
                                     {f"search[{i}]": t for i, t in enumerate(search.tolist())}, suffix,
                                     "search split (the retain signal the methods read)")
        device = next(model.parameters()).device
        sets = localize.Sets(forget, retain, windows[[row[s] for s in forget]].to(device),
                             ctx.calibration().to(device), search.to(device))
        model = model.float()  # gradients and gates in float32 (the chosen units are all that leaves)
        chosen, _, found = localize.localize(name, model, sets, level, k, suffix, spec, ctx.cfg["seed"])
        record["retain_signal"] = {"calibration_windows": int(sets.retain_text.shape[0]),
                                   "search_members": int(search.shape[0])}
        masks = localize.keep_masks(model, chosen, list(ctx.source.names))
        return MaskResult(masks, info={"localize": {**record, **found}})

    method.__doc__ = f"Targeted forgetting: prune the top width units by {name} (prunemem.prune.localize)."
    return method


localize_activations = _localize("activations")
localize_zeroout = _localize("zeroout")
localize_ig = _localize("ig")
localize_slimming = _localize("slimming")
localize_hardconcrete = _localize("hardconcrete")
localize_selective = _localize("selective")
localize_random = _localize("random")


def compute(method: Method | str, ctx: MaskContext, level: float) -> MaskResult:
    """Run a method on ``ctx``: a resolved ``Method``, or a grid name resolved against ``ctx.cfg``."""
    if isinstance(method, str):
        method = resolve(method, {"prune": ctx.cfg})
    if method.kind != "mask":
        raise PrunememError(f"--method: {method.name} has no mask (it is a {method.kind})")
    ctx.method = method
    return method.function()(ctx, level)
