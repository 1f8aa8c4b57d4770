"""The report's paired statistics against independent references (scipy, brute force, simulation)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sp

from prunemem.evaluate import stats
from prunemem.evaluate.mia import auc


@pytest.mark.parametrize("only_a,only_b", [(0, 0), (0, 5), (3, 9), (10, 10), (1, 30), (25, 7)])
def test_exact_mcnemar_is_scipys_binomial_test_on_the_discordant_pairs(only_a, only_b):
    expected = 1.0 if only_a + only_b == 0 else sp.binomtest(only_a, only_a + only_b, 0.5).pvalue
    assert stats.mcnemar_exact(only_a, only_b) == pytest.approx(expected, rel=1e-12)


def test_holm_matches_brute_force_step_down():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06
    assert stats.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    rng = np.random.default_rng(0)
    for _ in range(50):  # the defining property: reject H_i at alpha iff Holm's sequential procedure does
        q = rng.uniform(0, 0.2, 6).tolist()
        adj = stats.holm(q)
        for alpha in (0.01, 0.05, 0.1):
            order, rejected = sorted(range(6), key=lambda i: q[i]), set()
            for rank, i in enumerate(order):
                if q[i] > alpha / (6 - rank):
                    break
                rejected.add(i)
            assert {i for i in range(6) if adj[i] <= alpha} == rejected


def test_newcombe_paired_interval_covers_and_never_collapses():
    diff, low, high = stats.paired_rate_difference(np.zeros(50, bool), np.zeros(50, bool))
    assert diff == 0 and low < 0 < high  # no discordant pair still leaves uncertainty
    rng = np.random.default_rng(1)
    covered, n, trials = 0, 80, 600
    for _ in range(trials):  # correlated pairs: P(A)=0.3, P(B)=0.2
        u = rng.uniform(size=n)
        a, b = u < 0.3, (u < 0.15) | ((u > 0.85) & (u < 0.9))
        _, lo, hi = stats.paired_rate_difference(a, b)
        covered += lo <= 0.1 <= hi
    assert 0.92 <= covered / trials <= 0.99, covered / trials


def test_auc_kernel_matches_mann_whitney_and_the_bootstrap_is_paired():
    rng = np.random.default_rng(2)
    member = np.r_[np.ones(30, bool), np.zeros(40, bool)]
    a = rng.normal(member * 1.0, 1.0).round(1)  # rounding makes ties
    assert stats._wins(a[member], a[~member]).mean() == pytest.approx(auc(a[member], a[~member]))
    u = sp.mannwhitneyu(a[member], a[~member]).statistic / (30 * 40)
    assert stats._wins(a[member], a[~member]).mean() == pytest.approx(u)
    diff, low, high, p = stats.paired_auc_difference(a, a, member, 200, 0)
    assert (diff, low, high, p) == (0.0, 0.0, 0.0, 1.0)  # the same scoring never differs from itself
    b = a + rng.normal(0, 0.05, a.size)  # a nearly identical scoring: paired CI is narrow
    diff, low, high, p = stats.paired_auc_difference(a, b, member, 500, 0)
    assert low <= diff <= high and high - low < 0.05
    # brute force on a tiny case: the weighted-kernel resample equals recomputing the AUC on the resample
    wm, wn = stats.resample_counts(30, 3, 5), stats.resample_counts(40, 3, 6)
    for r in range(3):
        im, inn = np.repeat(np.flatnonzero(member), wm[r].astype(int)), np.repeat(np.flatnonzero(~member), wn[r].astype(int))
        direct = auc(a[im], a[inn])
        assert (wm[r] @ stats._wins(a[member], a[~member]) @ wn[r]) / (30 * 40) == pytest.approx(direct)


def test_paired_perplexity_bootstrap_against_direct_resampling():
    rng = np.random.default_rng(3)
    tokens = rng.integers(20, 60, 40).astype(float)
    a = np.c_[tokens * rng.uniform(2.0, 2.4, 40), tokens]
    b = np.c_[a[:, 0] * 1.05, tokens]  # B is exactly 5% worse in log space per document
    change, low, high, p = stats.paired_perplexity_change(b, a, 400, 0)
    assert change == pytest.approx(math.exp(0.05 * a[:, 0].sum() / tokens.sum()) - 1)
    assert low > 0 and p < 0.01
    w = stats.resample_counts(40, 400, 0)  # the same replicates, by materialising each resample
    ppl = lambda x: math.exp(x[:, 0].sum() / x[:, 1].sum())  # noqa: E731
    direct = [math.log(ppl(b[np.repeat(np.arange(40), c.astype(int))]) / ppl(a[np.repeat(np.arange(40), c.astype(int))]))
              for c in w]
    assert math.expm1(np.quantile(direct, 0.025)) == pytest.approx(low)


def test_paired_rate_bootstrap_and_exhaustive_small_case():
    a = np.array([1, 1, 0, 0, 1], float)
    b = np.array([1, 0, 0, 0, 0], float)
    diff, low, high, p = stats.paired_rate_bootstrap(a, b, 2000, 0)
    assert diff == pytest.approx(0.4)
    # exhaustive bootstrap distribution of mean(a - b) over all 5^5 resamples
    d = a - b
    exact = sorted(np.mean([d[i] for i in idx]) for idx in itertools.product(range(5), repeat=5))
    assert low == pytest.approx(np.quantile(exact, 0.025), abs=0.05)
    assert high == pytest.approx(np.quantile(exact, 0.975), abs=0.05)


def test_bootstrap_p_value_is_the_normal_tail_of_the_bootstrap_standard_error():
    rng = np.random.default_rng(4)
    diffs = rng.normal(0.3, 0.1, 4000)
    low, high, p = stats.bootstrap_summary(diffs, 0.3)
    assert p == pytest.approx(2 * sp.norm.sf(0.3 / diffs.std(ddof=1)))  # about 0.003, below any replicate count
    assert low == pytest.approx(np.quantile(diffs, 0.025)) and high == pytest.approx(np.quantile(diffs, 0.975))
    assert stats.bootstrap_summary(np.zeros(10), 0.0)[2] == 1.0
