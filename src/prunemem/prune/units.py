"""The units a structured search removes, and how many a level removes: torch-free arithmetic
shared by the search (``prunemem.prune.search``) and the params checks (``prunemem.plan``).

    python -c "from prunemem.prune.units import unit_names; print(unit_names(2, 'sublayer'))"
"""

from __future__ import annotations

import math

from prunemem.errors import PrunememError

SUBLAYERS = ("attention", "mlp")


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
