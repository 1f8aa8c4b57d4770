"""How many canaries the embedded recipe plants, per copy count: torch-free arithmetic shared by the
training stream (``prunemem.embedded``) and the params checks (``prunemem.plan``).

    python -c "from prunemem.data.canaries import planted_tokens; print(planted_tokens({'tokens': 48, 'copies': [0, 32], 'per_copy_count': [300, 20]}))"
"""

from __future__ import annotations

from prunemem.errors import PrunememError


def canary_counts(cfg: dict) -> dict[int, int]:
    """``{copies: canaries}`` from ``embedded.canaries``: ``per_copy_count`` is one number for every
    copy count, or a list beside ``copies`` (so that the buckets whose rate is near 50% can be
    large and the always- or never-extracted ones small)."""
    per = cfg["per_copy_count"]
    if isinstance(per, int):
        per = [per] * len(cfg["copies"])
    if len(per) != len(cfg["copies"]):
        raise PrunememError(f"embedded.canaries.per_copy_count: {len(per)} counts for {len(cfg['copies'])} copy "
                            "counts; allowed: one number, or one count per entry of embedded.canaries.copies")
    return dict(zip(cfg["copies"], per))


def planted_tokens(cfg: dict) -> int:
    """Canary tokens in the training stream: every copy of every canary."""
    return cfg["tokens"] * sum(copies * n for copies, n in canary_counts(cfg).items())
