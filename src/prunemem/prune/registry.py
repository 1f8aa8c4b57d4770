"""Every method a grid can name, with its traits: the one place that knows what a method is.

    python -c "from prunemem.prune.registry import resolve; print(resolve('wanda-ccds', params))"

As lm-evaluation-harness registers tasks and metrics, an entry carries its traits with its name
and points at its code lazily (``"module:function"``), so importing this module costs no torch:
the plan, the Snakefile, dvc.yaml, freshness, the audit, the cluster sizing and the report all
ask ``resolve(name, params)`` instead of comparing names with strings.

The name grammar, resolved here and nowhere else (docs/architecture.md, "Methods"):

- a registered name: ``global``, ``wanda``, ``owl``, ``evop-mem``, ...
- ``<calibrated method>-ccds``: the same method on a cluster-sampled calibration set (CCDS);
- ``<score>-NofM`` (``magnitude-2of4``, ``wanda-4of8``): N:M semi-structured, single level 1 - N/M;
- ``random-s<N>``: a replicate of the random control seeded with N instead of ``prune.seed``;
- a key of ``compress.quantize`` (``int4``, ``int4-gptq``): a quantization transform;
- ``lowrank``: truncated SVD at the levels 1 - ``compress.lowrank.keep``; ``dense``: no change.

``Method.params`` lists the exact params keys (dotted paths) the method's code reads; the
params digest of its artifact and its DVC ``params:`` are that allow-list plus what its stage
reads (``Plan.job_table``), so an edit to ``prune.owl`` reruns OWL and nothing else.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, replace
from typing import Callable

from prunemem.errors import PrunememError
from prunemem.prune.units import WIDTH_METRICS

DENSE = "dense"
DENSE_LEVEL = "0"
LOWRANK = "lowrank"
CCDS = "-ccds"

NM_NAME = re.compile(r"^(?P<score>[a-z]+)-(?P<n>[0-9]+)of(?P<m>[0-9]+)$")
REPLICATE_NAME = re.compile(r"^(?P<base>[a-z0-9]+)-s(?P<seed>[0-9]+)$")

# what every calibrated method reads through the stage's calibration loader (prune/run.py, compress/run.py)
CALIBRATION_KEYS = ("samples.calibration.sequences", "samples.seed")
CLUSTER_KEYS = ("prune.ccds.clusters",)
# where a calibrated method computes (prunemem.blockwise.Placement): bf16 on a GPU changes the bytes
PLACEMENT_KEYS = ("prune.device", "prune.dtype", "prune.offload", "prune.batch_size")
SEARCH_SPLIT_KEYS = ("samples.k", "samples.suffix_tokens")  # which windows of the search split are scored
WIDTH_KEYS = tuple(f"prune.width.{k}" for k in ("scope", "allocation", "owl", "allow_empty_sublayer"))
ADAPRUNER_KEYS = tuple(f"prune.adapruner.{k}" for k in ("trials", "startup_trials", "metrics", "allocations", "windows",
                                                         "clusters", "owl_lambda", "owl_M", "batch_size", "threads"))
EVOP_KEYS = tuple(f"prune.evop.{k}" for k in ("granularity", "population", "generations", "mutation", "crossover",
                                               "elite", "tournament", "batch_size", "threads", "device", "dtype"))


def level_name(level: float) -> str:
    """The canonical spelling of a level in paths and tables: 0.5 -> '0.5', 0.30 -> '0.3'."""
    return f"{level:g}"


@dataclass(frozen=True)
class Entry:
    """A registered method family member: what ``prunemem mask`` runs and what it reads.

    ``calibrated`` may depend on params (OWL reads calibration only with Wanda scores).
    """

    name: str
    target: str  # "module:function", imported only when the mask is computed
    family: str = "pruning"  # the colour group in charts and tables: pruning, control, ...
    params: tuple[str, ...] = ()
    calibrated: bool | Callable[[dict], bool] = False
    cluster_sampling: bool = False  # reads a CCDS (cluster-sampled) calibration set by definition
    ccds_variant: bool = False  # '<name>-ccds' is allowed
    removes_units: bool = False  # whole blocks or sublayers (SLEB, EvoP)
    search: bool = False  # finds its pattern by search and records the history (EvoP)
    search_split: bool = False  # reads the members kept out of evaluation (evop-mem)
    replicates: bool = False  # '<name>-s<N>' is a replicate seeded with N (the random control)
    threads: str = "evaluate.threads"  # the params key that sets the job's CPU threads
    nm_score: bool = False  # '<name>-NofM' is an N:M variant scored like this method
    standalone: bool = True  # False: valid only inside the grammar ('magnitude' only as magnitude-NofM)
    reference: bool = False  # the paper's own method: drawn against the dense model by duplication count
    paper: bool = False  # one of the paper's L1 magnitude strategies (arXiv 2502.15796), grouped so in the report
    subset: bool = False  # prunes only part of the prunable weights (attention, MLP, first/last 25% of layers)
    calibrated_by: str | None = None  # the params key that decides whether it reads calibration (OWL's score)
    # its memory-plan class when calibrated (prunemem.memplan.KINDS): the working set of one block's
    # calibration pass; "scores" (activations + per-linear vectors) unless it holds more (Hessians, logits)
    workload: str = "scores"
    calibration_passes: int = 2  # forwards of every block over the calibration set (OWL measures in its own)
    width: bool = False  # removes MLP neurons and attention heads, shrinking the matrices (prunemem.prune.width)
    trial_search: bool = False  # finds its pattern by Bayesian trials, history in the mask header (AdaPruner)
    width_metric: str | None = None  # width-<metric>: the importance metric it ranks units by (prune.importance)
    forgets: bool = False  # targeted forgetting (localize-*): reads the members, levels are unit budgets


@dataclass(frozen=True)
class Method:
    """A grid name resolved against params: every trait a consumer may ask about."""

    name: str
    kind: str  # dense | mask | transform
    family: str
    base: str  # the registered entry ('wanda' for 'wanda-ccds' and 'wanda-2of4'), the quantizer name, ...
    target: str | None = None
    params: tuple[str, ...] = ()  # exact params keys its code reads (calibration keys included)
    calibration: str | None = None  # None, 'random' or 'cluster'
    removes_units: bool = False
    search: bool = False
    search_split: bool = False
    nm: tuple[int, int] | None = None  # N:M: the single level 1 - N/M
    seed: int | None = None  # a replicate's own seed
    threads: str = "evaluate.threads"
    loads_model: bool = False  # runs on the whole model block by block (GPU-sized), not tensor by tensor
    twin_of: str | None = None  # '-ccds': the same method on random calibration, for paired comparison
    reference: bool = False
    replicate_of: str | None = None  # 'random-s2' -> 'random'
    replicates: bool = False  # '<name>-s<N>' names a replicate of it (prune.random_seeds adds them)
    paper: bool = False  # one of the paper's own strategies
    subset: bool = False  # prunes part of the prunable weights only
    workload: str | None = None  # calibrated: its memory-plan class (scores, hessian, gptq, forward; memplan.KINDS)
    calibration_passes: int = 2
    width: bool = False  # removes heads and neurons: the evaluated model is physically smaller
    trial_search: bool = False  # AdaPruner: its trial history is in the mask header
    width_metric: str | None = None  # width-<metric>: its importance metric
    forgets: bool = False  # targeted forgetting: prunes the width units that hold a forget set (localize-*)

    @property
    def structure(self) -> str:
        """What it removes or changes: none, unstructured, subset, N:M, blocks, width, quantization, low-rank."""
        if self.kind == "dense":
            return "none"
        if self.kind == "transform":
            return self.family
        if self.forgets:
            return "units"
        return "N:M" if self.nm else "blocks" if self.removes_units else "width" if self.width else \
            "subset" if self.subset else "unstructured"

    @property
    def calibrated(self) -> bool:
        return self.calibration is not None

    def levels(self, model_levels: list[str], params: dict) -> list[str]:
        """The level rule: N:M has the single level 1 - N/M, quantization 0, low-rank 1 - each keep,
        targeted forgetting its unit budgets (prune.localize.budgets), dense 0, every other method the
        model's own levels."""
        if self.forgets:
            return [level_name(b) for b in params["prune"]["localize"]["budgets"]]
        if self.nm:
            return [level_name(1 - self.nm[0] / self.nm[1])]
        if self.kind == "dense" or self.family == "quantization":
            return [DENSE_LEVEL]
        if self.base == LOWRANK:
            return [level_name(1 - keep) for keep in params.get("compress", {}).get("lowrank", {}).get("keep", [])]
        return model_levels

    def function(self) -> Callable:
        """The method's code (imported now: torch and friends load here, not at registry import)."""
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


REGISTRY: dict[str, Entry] = {}


def register(entry: Entry) -> Entry:
    """Add a method; a second entry under one name is a programming error, not an override."""
    if entry.name in REGISTRY:
        raise ValueError(f"method {entry.name!r} is registered twice")
    REGISTRY[entry.name] = entry
    return entry


_M = "prunemem.prune.methods"
register(Entry("layerwise", f"{_M}:layerwise", paper=True))
for _name in ("global", "attention", "mlp", "first25", "last25"):
    register(Entry(_name, f"{_M}:{_name.replace('25', '')}_magnitude", reference=_name == "global", paper=True,
                   subset=_name != "global", params=("prune.block_fraction",) if _name.endswith("25") else ()))
register(Entry("random", f"{_M}:random_control", family="control", params=("prune.seed",), replicates=True))
register(Entry("magnitude", f"{_M}:magnitude_nm", nm_score=True, standalone=False))  # only as magnitude-NofM
register(Entry("wanda", f"{_M}:wanda", calibrated=True, ccds_variant=True, nm_score=True))
register(Entry("sparsegpt", f"{_M}:sparsegpt", params=("prune.damp",), calibrated=True, ccds_variant=True,
               nm_score=True, workload="hessian"))
register(Entry("owl", f"{_M}:owl", params=("prune.owl",), ccds_variant=True, calibrated_by="prune.owl.score",
               calibration_passes=4,  # its outlier ratios in a pass of their own
               calibrated=lambda params: params["prune"].get("owl", {}).get("score") == "wanda"))
register(Entry("sleb", f"{_M}:sleb", params=("prune.sleb.protect_ends",), calibrated=True, ccds_variant=True,
               removes_units=True, workload="forward"))
register(Entry("evop", f"{_M}:evop", params=(*EVOP_KEYS, "prune.seed"), calibrated=True, cluster_sampling=True,
               removes_units=True, search=True, threads="prune.evop.threads", workload="forward"))
register(Entry("evop-mem", f"{_M}:evop_mem", params=(*EVOP_KEYS, "prune.evop.lambda", "prune.seed"),
               calibrated=True, cluster_sampling=True, removes_units=True, search=True, search_split=True,
               threads="prune.evop.threads", workload="forward"))

_W = f"{_M}:width"  # one entry point; prunemem.prune.adapruner.run dispatches on the traits below
_DATA_METRICS = {"wanda", "taylor", "taylor-group", "flap"}  # read the calibration pass


def _width_reads_calibration(metric: str) -> Callable[[dict], bool]:
    return lambda params: metric in _DATA_METRICS or params["prune"].get("width", {}).get("allocation") == "owl"


for _metric in WIDTH_METRICS:  # width-l1 ... width-flap: one importance metric, prune.width's allocation
    register(Entry(f"width-{_metric}", _W, width=True, width_metric=_metric,
                   params=WIDTH_KEYS,
                   calibrated=_width_reads_calibration(_metric)))
# the fixed-metric baselines in an adapruner header use prune.width's allocation: WIDTH_KEYS
register(Entry("adapruner", _W, params=(*WIDTH_KEYS, *ADAPRUNER_KEYS, "prune.ccds.clusters", "prune.seed"),
               calibrated=True, width=True, trial_search=True, threads="prune.adapruner.threads"))
register(Entry("adapruner-mem", _W,
               params=(*WIDTH_KEYS, *ADAPRUNER_KEYS, "prune.adapruner.lambda", "prune.ccds.clusters", "prune.seed"),
               calibrated=True, width=True, trial_search=True, search_split=True, threads="prune.adapruner.threads"))
# targeted forgetting (prunemem.prune.localize): score the width units holding a forget set, prune the top ones;
# they read the members (the forget set), the calibration windows and the search split (the retain signal)
LOCALIZE_KEYS = ("prune.localize", "prune.seed", "samples.k", "samples.suffix_tokens")
for _name in ("activations", "zeroout", "ig", "slimming", "hardconcrete", "selective", "random"):
    register(Entry(f"localize-{_name}", f"{_M}:localize_{_name}", family="control" if _name == "random" else "pruning",
                   params=LOCALIZE_KEYS, calibrated=True, forgets=True, threads="prune.localize.threads"))


def _allowed() -> str:
    plain = [n for n, e in REGISTRY.items() if e.standalone]
    nm = "|".join(n for n, e in REGISTRY.items() if e.nm_score)
    return ", ".join(plain) + f", <{nm}>-NofM, <calibrated method>-ccds, random-s<seed>"


def _from_entry(name: str, entry: Entry, params: dict, **changes) -> Method:
    calibrated = entry.calibrated(params) if callable(entry.calibrated) else entry.calibrated
    calibration = ("cluster" if entry.cluster_sampling else "random") if calibrated else None
    keys = entry.params + (CALIBRATION_KEYS + PLACEMENT_KEYS if calibrated else ()) + \
        (CLUSTER_KEYS if calibration == "cluster" else ()) + (SEARCH_SPLIT_KEYS if entry.search_split else ())
    method = Method(name, "mask", entry.family, entry.name, entry.target, tuple(dict.fromkeys(keys)), calibration,
                    entry.removes_units, entry.search, entry.search_split, threads=entry.threads,
                    loads_model=calibrated, reference=entry.reference, paper=entry.paper, subset=entry.subset,
                    replicates=entry.replicates, workload=entry.workload if calibrated else None,
                    calibration_passes=entry.calibration_passes, width=entry.width,
                    trial_search=entry.trial_search, forgets=entry.forgets,
                    width_metric=entry.width_metric)
    return replace(method, **changes)


def replicate_name(base: str, seed: int) -> str:
    """The grid name of ``base``'s replicate at ``seed``: random -> random-s3 (the grammar's inverse)."""
    return f"{base}-s{seed}"


def _lookup(params: dict, key: str):
    node = params
    for part in key.split("."):
        node = node.get(part, {}) if isinstance(node, dict) else None
    return node


def uses_calibration(spec: dict) -> bool:
    """Whether a quantizer spec reads the calibration set (GPTQ)."""
    return spec.get("algorithm", "rtn") == "gptq"


def resolve(name: str, params: dict) -> Method:
    """The method ``name`` stands for under ``params``; one line naming the name when it is none."""
    compress = params.get("compress", {})
    if name == DENSE:
        return Method(name, "dense", "dense", DENSE)
    if name in compress.get("quantize", {}):
        spec = compress["quantize"][name]
        gptq = uses_calibration(spec)
        return Method(name, "transform", "quantization", name, "prunemem.compress.run:build_transform",
                      (f"compress.quantize.{name}",) + (CALIBRATION_KEYS + PLACEMENT_KEYS if gptq else ()),
                      "random" if gptq else None, loads_model=gptq, workload="gptq" if gptq else None)
    if name == LOWRANK:
        return Method(name, "transform", "low-rank", LOWRANK, "prunemem.compress.run:build_transform",
                      ("compress.lowrank.keep",), loads_model=True)
    if name in REGISTRY and REGISTRY[name].standalone:
        return _from_entry(name, REGISTRY[name], params)
    if name.endswith(CCDS):
        base = resolve(name[: -len(CCDS)], params)
        entry = REGISTRY.get(base.base)
        if entry is not None and entry.ccds_variant and base.calibration is None and entry.calibrated_by:
            key = entry.calibrated_by
            raise PrunememError(f"prune.methods: {name!r} reads no calibration set with {key} "
                                f"{_lookup(params, key)!r}; allowed: a {key} that reads calibration, or plain {base.name}")
        if base.kind != "mask" or entry is None or not entry.ccds_variant or base.calibration != "random":
            raise PrunememError(f"prune.methods: {name!r}: -ccds needs a method that reads a randomly sampled "
                                f"calibration set; allowed: {_allowed()}")
        return replace(base, name=name, calibration="cluster",
                       params=tuple(dict.fromkeys(base.params + CLUSTER_KEYS)), twin_of=base.name)
    nm = NM_NAME.match(name)
    if nm and nm["score"] in REGISTRY and REGISTRY[nm["score"]].nm_score:
        n, m = int(nm["n"]), int(nm["m"])
        return _from_entry(name, REGISTRY[nm["score"]], params, nm=(n, m))
    rep = REPLICATE_NAME.match(name)
    if rep and rep["base"] in REGISTRY and REGISTRY[rep["base"]].replicates:
        base = _from_entry(name, REGISTRY[rep["base"]], params)
        # the seed is in the name, so the shared prune.seed is not read
        return replace(base, seed=int(rep["seed"]), params=tuple(k for k in base.params if k != "prune.seed"),
                       replicate_of=rep["base"], replicates=False)
    raise PrunememError(f"prune.methods: unknown method {name!r}; allowed: {_allowed()}")


def describe(name: str) -> Method:
    """The traits of a name already in a validated grid, when its params are not at hand (the report).

    A grid name is dense, lowrank, a registry name or a quantizer key (the schema allows no other),
    so a name the grammar does not know is a quantizer; a params-dependent trait (OWL's
    calibration) is taken as the grid validated it.
    """
    permissive = {"prune": {"owl": {"score": "wanda"}}}
    try:
        return resolve(name, permissive)
    except PrunememError:
        return Method(name, "transform", "quantization", name, "prunemem.compress.run:build_transform")


def order(name: str) -> tuple[int, str]:
    """Sort key: registry order of the entry (then the name), for tables that list methods."""
    names = list(REGISTRY)
    base = describe(name).base
    return (names.index(base) if base in names else len(names), name)


def schema_keys(schema: dict) -> set[str]:
    """Every dotted params key the schema declares (``compress.quantize.<name>`` as one level)."""
    out: set[str] = set()

    def walk(node: dict, prefix: str) -> None:
        for key, sub in node.get("properties", {}).items():
            out.add(prefix + key)
            walk(sub, f"{prefix}{key}.")
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and prefix:
            out.add(prefix + "*")
            walk(extra, prefix + "*.")

    walk(schema, "")
    return out


def check_declared_keys(schema: dict) -> None:
    """Every params key a registry entry declares must exist in the schema (one line otherwise)."""
    known = schema_keys(schema)
    for entry in REGISTRY.values():
        for key in (*entry.params, *CALIBRATION_KEYS, *PLACEMENT_KEYS, *CLUSTER_KEYS, *SEARCH_SPLIT_KEYS,
                    entry.threads):
            if key not in known:
                raise PrunememError(f"method {entry.name}: declares params key {key!r}, which the params schema "
                                    "does not have; fix the registry entry or the schema")
