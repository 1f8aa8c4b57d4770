"""Membership-inference scores and metrics against plain, independent definitions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from prunemem.evaluate import mia
from prunemem.evaluate.memorization import score_batch


def _pairwise_auc(pos, neg):
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pairwise_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    pos, neg = rng.integers(0, 6, 17).astype(float), rng.integers(0, 5, 11).astype(float)  # many ties
    assert mia.auc(pos, neg) == pytest.approx(_pairwise_auc(pos, neg), abs=1e-12)
    assert mia.auc([2.0, 3.0], [0.0, 1.0]) == 1.0 and mia.auc([0.0], [1.0]) == 0.0 and mia.auc([1.0], [1.0]) == 0.5


@pytest.mark.parametrize("n_neg,fpr", [(20, 0.01), (250, 0.01), (250, 0.05)])
def test_tpr_at_fpr_is_the_best_admissible_threshold(n_neg, fpr):
    rng = np.random.default_rng(n_neg)
    pos, neg = rng.normal(1.0, 1.0, 300), rng.normal(0.0, 1.0, n_neg)
    best = 0.0
    for t in np.concatenate([pos, neg, [-np.inf]]):  # brute force over every threshold "score > t"
        if (neg > t).mean() <= fpr + 1e-12:
            best = max(best, (pos > t).mean())
    assert mia.tpr_at_fpr(pos, neg, fpr) == best


def test_bootstrap_ci_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(0.8, 1.0, 60), rng.normal(0.0, 1.0, 40)
    lo, hi = mia.bootstrap_ci(pos, neg, mia.auc, 500, seed=3)
    assert (lo, hi) == mia.bootstrap_ci(pos, neg, mia.auc, 500, seed=3)
    assert lo < mia.auc(pos, neg) < hi and 0.1 < hi - lo < 0.4
    assert mia.bootstrap_ci(pos, neg, mia.auc, 500, seed=4) != (lo, hi)


def test_token_scores_match_a_per_token_loop():
    torch.manual_seed(0)
    logits, targets = torch.randn(3, 10, 7) * 3, torch.randint(0, 7, (3, 10))
    got = mia.token_scores(logits, targets, fraction=0.2)
    for b in range(3):
        logp, plain, standard = torch.log_softmax(logits[b].double(), -1), [], []
        for t in range(10):
            p = logp[t].exp()
            mu = float((p * logp[t]).sum())
            sigma = math.sqrt(float((p * (logp[t] - mu) ** 2).sum()))
            plain.append(float(logp[t, targets[b, t]]))
            standard.append((plain[-1] - mu) / sigma)
        assert got["loss"][b].item() == pytest.approx(sum(plain) / 10, rel=1e-5)
        assert got["mink"][b].item() == pytest.approx(sum(sorted(plain)[:2]) / 2, rel=1e-5)  # 20% of 10 tokens
        assert got["minkpp"][b].item() == pytest.approx(sum(sorted(standard)[:2]) / 2, rel=1e-4)


def test_membership_scores_separate_trained_sequences(memorizing_model):
    model, seqs = memorizing_model
    scores = score_batch(model, seqs, 16, 12, mia_fraction=0.2)
    plain = score_batch(model, seqs, 16, 12)
    for name in ("extracted", "matched_prefix", "token_match_rate"):  # one pass serves both
        assert torch.equal(scores[name], plain[name])
    member = np.array([True] * 4 + [False] * 4)
    rows = {r["score"]: r for r in mia.summarize({s: scores[s].numpy() for s in ("loss", "mink", "minkpp")}
                                                 | {"zlib": scores["loss"].numpy()}, member, 200, 0)}
    assert set(rows) == set(mia.SCORES)
    for name in ("loss", "mink", "minkpp"):
        assert rows[name]["auc"] == 1.0 and rows[name]["tpr_at_1pct_fpr"] == 1.0


def test_summarize_refuses_a_one_sided_sample():
    with pytest.raises(Exception, match="members and non-members"):
        mia.summarize({s: np.zeros(3) for s in mia.SCORES}, np.ones(3, bool), 100, 0)
