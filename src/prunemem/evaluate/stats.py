"""Confidence intervals for rates."""

from __future__ import annotations

import math


def wilson(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default); (0, 1) when n == 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at 0 or n successes the bound is exactly 0 or 1; the formula leaves rounding residue there
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def rate_row(per_sample, k: int) -> dict:
    """The extraction rate at ``k`` over the members of a per-sample frame (memorization.parquet).

    One definition for the summary the evaluation writes and the figures the audit recomputes.
    """
    import polars as pl

    members = per_sample.filter((pl.col("k") == k) & pl.col("member"))
    n, hits = members.height, int(members["extracted"].sum())
    lo, hi = wilson(hits, n)
    return {"k": k, "n_samples": n, "n_extracted": hits, "extraction_rate": hits / n if n else 0.0,
            "ci_low": lo, "ci_high": hi,
            "token_match_rate": float(members["token_match_rate"].mean()) if n else 0.0}
