"""Confidence intervals for rates, and the paired tests the report rests its verdicts on.

Every comparison between two variants is made on the *same* samples (members, non-members,
perplexity documents), so the tests are paired: exact McNemar on per-sample extraction, a paired
bootstrap on perplexity (resampling documents) and on membership AUCs (resampling members and
non-members, stratified). Holm's step-down corrects a family of p-values. Small closed forms are
written out here (they are one-liners next to a dependency); each is checked against scipy or
brute force in tests/test_stats.py.
"""

from __future__ import annotations

import functools
import math

import numpy as np

Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
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


def kind_rates(per_sample) -> list[dict]:
    """Extraction per (k, kind, copies) with Wilson 95% intervals: canaries by copy count, ordinary
    training windows (``train``) and held-out windows (``heldout``) apart, members and non-members alike.

    One definition for the summary's ``per_kind`` and the report's table of member kinds.
    """
    rows = []
    for (k, kind, copies), group in sorted(per_sample.group_by("k", "kind", "copies"),
                                           key=lambda item: (item[0][0], item[0][1], item[0][2] or 0)):
        n, hits = group.height, int(group["extracted"].sum())
        lo, hi = wilson(hits, n)
        rows.append({"k": int(k), "kind": kind, "copies": int(copies or 0), "member": bool(group["member"][0]),
                     "n_samples": n, "n_extracted": hits, "extraction_rate": hits / n, "ci_low": lo, "ci_high": hi})
    return rows


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs (a binomial test of b vs b + c at 1/2).

    ``only_a``: samples extracted by A and not B; ``only_b`` the reverse. 1.0 with no discordant pair.
    """
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_rate_difference(a: np.ndarray, b: np.ndarray, z: float = Z95) -> tuple[float, float, float]:
    """Rate(A) - rate(B) on the same samples with Newcombe's hybrid score interval (his method 10).

    Newcombe, "Improved confidence intervals for the difference between binomial proportions based
    on paired data", Stat. Med. 17 (1998): Wilson intervals of both marginals, combined with the
    phi correlation of the pairs. Unlike a bootstrap it does not collapse to [0, 0] when no pair is
    discordant. Returns (difference, low, high).
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    n = a.size
    both, only_a, only_b = int((a & b).sum()), int((a & ~b).sum()), int((~a & b).sum())
    neither = n - both - only_a - only_b
    p1, p2 = (both + only_a) / n, (both + only_b) / n
    l1, u1 = wilson(both + only_a, n, z)
    l2, u2 = wilson(both + only_b, n, z)
    denom = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    phi = (both * neither - only_a * only_b) / math.sqrt(denom) if denom else 0.0
    diff = p1 - p2
    down = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    up = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return diff, max(-1.0, diff - down), min(1.0, diff + up)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given); controls the family-wise error rate."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def bootstrap_summary(diffs: np.ndarray, observed: float, level: float = 0.95) -> tuple[float, float, float]:
    """(low, high, p) from bootstrap replicates of a difference: the percentile CI, and a two-sided
    p-value from the bootstrap standard error, 2 (1 - Phi(|observed| / se)).

    The normal form rather than counting replicates beyond 0: a count cannot go below 1/resamples,
    which a Holm correction over dozens of tests would turn into "nothing is ever significant".
    Replicates with no spread give p = 1 for an observed 0 and 0 otherwise.
    """
    diffs = np.asarray(diffs, float)
    tail = (1 - level) / 2
    low, high = float(np.quantile(diffs, tail)), float(np.quantile(diffs, 1 - tail))
    se = float(diffs.std(ddof=1)) if diffs.size > 1 else 0.0
    if se == 0.0 or not math.isfinite(se):
        return low, high, 1.0 if observed == 0 else 0.0
    return low, high, float(math.erfc(abs(observed) / se / math.sqrt(2)))


def resample_counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) multiplicities of a bootstrap over n units: row r counts how often each unit was
    drawn. Applying one matrix to both variants is what makes the bootstrap paired, and weighted sums
    (W @ x) replace materialised resamples."""
    return _counts(n, resamples, seed)  # shared and read-only


@functools.lru_cache(maxsize=64)
def _counts(n: int, resamples: int, seed: int) -> np.ndarray:
    # index draws counted per row (bincount over row-offset indices): the same bootstrap as
    # drawing resamples, 50x faster than rng.multinomial over n equal cells
    idx = np.random.default_rng(seed).integers(0, n, (resamples, n))
    flat = (idx + n * np.arange(resamples)[:, None]).ravel()
    counts = np.bincount(flat, minlength=resamples * n).reshape(resamples, n).astype(float)
    counts.flags.writeable = False
    return counts


def paired_perplexity_change(a: np.ndarray, b: np.ndarray, resamples: int, seed: int):
    """Relative perplexity change ppl(A)/ppl(B) - 1 on the same documents, paired bootstrap over documents.

    ``a``, ``b``: (documents, 2) arrays of [summed NLL, scored tokens], row-aligned. The log ratio is
    bootstrapped (symmetric in A and B) and reported as a relative change. Returns (change, low, high, p).
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    w = resample_counts(a.shape[0], resamples, seed)
    log_ratio = lambda x, y: (x[..., 0] / x[..., 1]) - (y[..., 0] / y[..., 1])  # noqa: E731
    observed = log_ratio(a.sum(0), b.sum(0))
    low, high, p = bootstrap_summary(log_ratio(w @ a, w @ b), float(observed))
    return math.expm1(observed), math.expm1(low), math.expm1(high), p


def interpolated_rate(outcomes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Rate of a point between levels: ``outcomes`` (units, levels) 0/1, ``weights`` (levels,) summing to 1."""
    return np.asarray(outcomes, float) @ np.asarray(weights, float) / np.asarray(outcomes).shape[0]


def paired_rate_bootstrap(a: np.ndarray, b: np.ndarray, resamples: int, seed: int):
    """Difference of two (possibly interpolated) rates on the same units, paired bootstrap.

    ``a``, ``b``: (units,) per-unit values in [0, 1] (0/1 outcomes, or a weighted mix of two levels'
    outcomes). Used where McNemar does not apply: between rates interpolated at a matched perplexity.
    Returns (difference, low, high, p).
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    w = resample_counts(a.size, resamples, seed)
    d = a - b
    low, high, p = bootstrap_summary(w @ d / a.size, float(d.mean()))
    return float(d.mean()), low, high, p


def _wins(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> np.ndarray:
    """(m, n): 1 where a member outscores a non-member, 1/2 on a tie (the Mann-Whitney kernel)."""
    diff = member_scores[:, None] - nonmember_scores[None, :]
    return (diff > 0) + 0.5 * (diff == 0)


def paired_auc_difference(a: np.ndarray, b: np.ndarray, member: np.ndarray, resamples: int, seed: int):
    """AUC(A) - AUC(B) of two scorings of the same samples (higher = more member-like).

    Members and non-members are resampled separately (stratified) with the same draws for A and B.
    A resample's AUC is W_m K W_n^T / (m n) with K the Mann-Whitney kernel of the original scores,
    so no resample is materialised. Returns (difference, low, high, p).
    """
    a, b, member = np.asarray(a, float), np.asarray(b, float), np.asarray(member, bool)
    m, n = int(member.sum()), int((~member).sum())
    wm = resample_counts(m, resamples, seed)
    wn = resample_counts(n, resamples, seed + 1)
    ka, kb = _wins(a[member], a[~member]), _wins(b[member], b[~member])
    observed = float(ka.mean() - kb.mean())
    diffs = ((wm @ (ka - kb)) * wn).sum(1) / (m * n)
    low, high, p = bootstrap_summary(diffs, observed)
    return observed, low, high, p
