"""The units a structured search removes, and how many a level removes: torch-free arithmetic
shared by the search (``prunemem.prune.search``) and the params checks (``prunemem.plan``);
the names width pruning may search over (``prunemem.prune.importance``, ``prunemem.prune.adapruner``).

    python -c "from prunemem.prune.units import unit_names; print(unit_names(2, 'sublayer'))"
"""

from __future__ import annotations

import math

from prunemem.errors import PrunememError

SUBLAYERS = ("attention", "mlp")
# width pruning's registered importance metrics and allocations (their code: prunemem.prune.importance)
WIDTH_METRICS = ("l1", "l2", "wanda", "taylor", "taylor-group", "flap")
WIDTH_ALLOCATIONS = ("uniform", "owl")
WIDTH_SCOPES = ("mlp", "attention", "both")


def unit_names(n_blocks: int, granularity: str) -> list[str]:
    """Human names of the searchable units: '2' (block 2) or '2.attention' / '2.mlp'."""
    if granularity == "block":
        return [str(b) for b in range(n_blocks)]
    return [f"{b}.{s}" for b in range(n_blocks) for s in SUBLAYERS]


def removed_count(level: float, n_units: int) -> int:
    return math.floor(level * n_units + 1e-9)


def check_evop_level(level: float, n_blocks: int, granularity: str, key: str) -> None:
    """One line when a level removes nothing or every block (or every sublayer)."""
    units = len(unit_names(n_blocks, granularity))
    n_remove = removed_count(level, units)
    if units < 2:
        raise PrunememError(f"{key}: evop needs at least 2 {granularity}s (one removed, one kept) and the model has "
                            f"{units}; allowed: prune.evop.granularity sublayer, or a deeper model")
    if n_remove >= units:
        raise PrunememError(f"{key}: {level!r} would remove all {units} {granularity}s of the model for evop; "
                            f"allowed: < 1 (at most {units - 1} of {units})")
    if n_remove == 0:
        raise PrunememError(f"{key}: {level:g} removes no {granularity} of {units} for evop; allowed: "
                            f">= {1 / units:.4g}")


def check_width_names(metrics, allocations, key: str) -> None:
    """One line naming the first importance metric or allocation that is not registered, listing those that are."""
    for metric in metrics:
        if metric not in WIDTH_METRICS:
            raise PrunememError(f"{key}: importance metric {metric!r} is not registered; allowed: "
                                f"{', '.join(WIDTH_METRICS)}")
    for allocation in allocations:
        if allocation not in WIDTH_ALLOCATIONS:
            raise PrunememError(f"{key}: allocation {allocation!r} is not registered; allowed: "
                                f"{', '.join(WIDTH_ALLOCATIONS)}")


def check_adapruner_space(spec: dict, key: str = "prune.adapruner") -> None:
    """One line naming the key when AdaPruner's budget or search space is unusable."""
    trials = spec.get("trials")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise PrunememError(f"{key}.trials: {trials!r}; allowed: an integer >= 1")
    for name in ("metrics", "allocations", "windows"):
        if not spec.get(name):
            raise PrunememError(f"{key}.{name}: empty; allowed: at least one value to search")
    check_width_names(spec["metrics"], [], f"{key}.metrics")
    check_width_names([], spec["allocations"], f"{key}.allocations")
    if "owl" in spec["allocations"]:
        for name in ("owl_lambda", "owl_M"):
            bounds = spec.get(name)
            if not (isinstance(bounds, list) and len(bounds) == 2 and bounds[0] <= bounds[1]):
                raise PrunememError(f"{key}.{name}: {bounds!r}; allowed: [low, high] with low <= high")
    single = all(len(set(spec[n])) == 1 for n in ("metrics", "allocations", "windows"))
    if single and not spec.get("clusters", False) and spec["allocations"] != ["owl"]:
        raise PrunememError(f"{key}: a search space with nothing to search (one metric, one allocation, one "
                            "window count, clusters false); allowed: two or more values of metrics, allocations "
                            "or windows, or clusters: true")
