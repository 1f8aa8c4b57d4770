"""Membership-inference scores and their metrics (AUC, TPR at a fixed FPR).

Scores, each oriented so that *higher means "more likely a member"*, computed from one
teacher-forced pass over the whole sample window:

- ``loss``: minus the mean token NLL (Yeom et al. 2018).
- ``zlib``: minus the mean NLL divided by the zlib-compressed size of the text in bytes
  (Carlini et al. 2021, "Extracting Training Data from Large Language Models"): text that is
  cheap for the model but not for zlib is suspicious.
- ``mink``: Min-K% Prob, the mean log-probability of the k% least likely tokens (Shi et al.
  2024, "Detecting Pretraining Data from Large Language Models"), k = 20%.
- ``minkpp``: Min-K%++, the same over token log-probabilities standardised by the mean and
  standard deviation of log p under the model's own next-token distribution (Zhang et al. 2025,
  "Min-K%++: Improved Baseline for Detecting Pre-Training Data from LLMs").

AUC and TPR@FPR are a few lines of numpy; a scikit-learn/scipy dependency (hundreds of MB)
for two rank statistics would be the wrong trade.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

import numpy as np

from prunemem.errors import PrunememError

if TYPE_CHECKING:
    import torch

SCORES = ("loss", "zlib", "mink", "minkpp")


def lowest_fraction_mean(values: torch.Tensor, fraction: float) -> torch.Tensor:
    """Per row, the mean of the ``max(1, floor(fraction * n))`` smallest values."""
    n = max(1, int(fraction * values.shape[-1]))
    return values.topk(n, dim=-1, largest=False).values.mean(dim=-1)


def token_scores(logits: torch.Tensor, targets: torch.Tensor, fraction: float) -> dict[str, torch.Tensor]:
    """Per-sample ``loss``, ``mink`` and ``minkpp`` from logits [b, t, v] predicting targets [b, t]."""
    import torch  # here, not at the top: the report and the audit read SCORES and the AUC code without torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    token_logp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    probs = logp.exp()
    mu = (probs * logp).sum(-1)
    sigma = ((probs * logp.square()).sum(-1) - mu.square()).clamp_min(0).sqrt()
    standardised = (token_logp - mu) / sigma.clamp_min(1e-12)
    return {"loss": token_logp.mean(-1), "mink": lowest_fraction_mean(token_logp, fraction),
            "minkpp": lowest_fraction_mean(standardised, fraction)}


def zlib_bytes(text: str) -> int:
    return len(zlib.compress(text.encode("utf-8")))


def auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """P(member score > non-member score) + 0.5 P(tie), i.e. the Mann-Whitney U statistic over m*n."""
    negatives = np.sort(np.asarray(nonmembers, float))
    members = np.asarray(members, float)
    below = np.searchsorted(negatives, members, side="left")
    at_or_below = np.searchsorted(negatives, members, side="right")
    return float((below + at_or_below).sum() / (2 * members.size * negatives.size))


def tpr_at_fpr(members: np.ndarray, nonmembers: np.ndarray, fpr: float = 0.01) -> float:
    """The largest TPR of a threshold rule ``score > t`` whose FPR is at most ``fpr``.

    With n non-members at most floor(fpr * n) may score above t, so t is the
    (floor(fpr * n) + 1)-th largest non-member score; with fewer than 100 non-members at 1%
    FPR this is "above every non-member".
    """
    allowed = int(np.floor(fpr * len(nonmembers) + 1e-9))
    threshold = np.sort(np.asarray(nonmembers, float))[::-1][allowed]
    return float((np.asarray(members, float) > threshold).mean())


def bootstrap_ci(members: np.ndarray, nonmembers: np.ndarray, metric, resamples: int, seed: int,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI, resampling members and non-members separately (stratified)."""
    rng = np.random.default_rng(seed)
    members, nonmembers = np.asarray(members, float), np.asarray(nonmembers, float)
    stats = np.array([metric(members[rng.integers(0, members.size, members.size)],
                             nonmembers[rng.integers(0, nonmembers.size, nonmembers.size)])
                      for _ in range(resamples)])
    tail = (1 - level) / 2
    return float(np.quantile(stats, tail)), float(np.quantile(stats, 1 - tail))


def summarize(scores: dict[str, np.ndarray], member: np.ndarray, resamples: int, seed: int) -> list[dict]:
    """One row per score: AUC with its bootstrap 95% CI, and the TPR at 1% FPR."""
    member = np.asarray(member, bool)
    rows = []
    for name in SCORES:
        values = np.asarray(scores[name], float)
        pos, neg = values[member], values[~member]
        if pos.size == 0 or neg.size == 0:
            raise PrunememError(f"samples: membership inference needs members and non-members; "
                                f"have {pos.size} and {neg.size}")
        lo, hi = bootstrap_ci(pos, neg, auc, resamples, seed)
        rows.append({"score": name, "auc": auc(pos, neg), "auc_ci_low": lo, "auc_ci_high": hi,
                     "tpr_at_1pct_fpr": tpr_at_fpr(pos, neg, 0.01),
                     "n_members": int(pos.size), "n_nonmembers": int(neg.size)})
    return rows
