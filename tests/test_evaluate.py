"""Teacher-forced extraction against greedy generate(); perplexity against a plain loop; Wilson CIs."""

from __future__ import annotations

import math

import pytest
import torch

from prunemem.evaluate.memorization import greedy_extracted, score_windows
from prunemem.evaluate.perplexity import perplexity
from prunemem.evaluate.stats import wilson
from prunemem.prune import MaskContext, compute, masks
from prunemem.prune.targets import DictSource


def _greedy_tokens(model, prompt, n):
    out = model.generate(prompt.unsqueeze(0), attention_mask=torch.ones(1, prompt.numel(), dtype=torch.long),
                         max_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=0)
    return out[0, prompt.numel():]


@pytest.mark.parametrize("k", [8, 16, 28])
def test_teacher_forcing_equals_greedy_generate(memorizing_model, k):
    model, seqs = memorizing_model
    suffix = 12
    scores = score_windows(model, seqs, k, suffix, batch_size=3)
    reference = greedy_extracted(model, seqs, k, suffix, eos_id=0)
    assert torch.equal(scores["extracted"], reference)
    assert not scores["extracted"][4:].any()  # never seen
    if k == 28:  # the full training context: every trained sequence comes out verbatim
        assert scores["extracted"][:4].all()
    for i, window in enumerate(seqs[:, -(k + suffix):]):
        produced = _greedy_tokens(model, window[:k], suffix)
        # matched prefix = tokens greedy decoding gets right before its first miss
        first_miss = next((j for j, (a, b) in enumerate(zip(produced.tolist(), window[k:].tolist())) if a != b), suffix)
        assert scores["matched_prefix"][i].item() == min(first_miss, produced.numel())


def test_teacher_forcing_equals_generate_after_pruning(memorizing_model):
    model, seqs = memorizing_model
    pruned = type(model)(model.config)
    pruned.load_state_dict(model.state_dict())
    pruned.eval()
    src = DictSource({k: v.clone() for k, v in pruned.state_dict().items()})
    for level in (0.3, 0.6):
        masks.apply(pruned, compute("global", MaskContext(src, {"block_fraction": 0.25, "seed": 0}), level).masks)
        scores = score_windows(pruned, seqs, 16, 12, batch_size=8)
        assert torch.equal(scores["extracted"], greedy_extracted(pruned, seqs, 16, 12, eos_id=0))


def test_per_sample_fields_are_consistent(memorizing_model):
    model, seqs = memorizing_model
    s = score_windows(model, seqs, 16, 12, batch_size=5)
    assert torch.equal(s["extracted"], s["matched_prefix"] == 12)
    assert torch.equal(s["extracted"], s["token_match_rate"] == 1.0)
    assert (s["min_margin"] >= 0).all()
    assert (s["suffix_nll"][:4] < s["suffix_nll"][4:].min()).all()


def _plain_perplexity(model, tokens, window, stride):
    """Independent reference: score each token once with its own left context, as the windows define it."""
    n = tokens.numel()
    nll, count, scored_upto = 0.0, 0, 1
    start = 0
    while scored_upto < n:
        end = min(start + window, n)
        with torch.no_grad():
            logp = torch.log_softmax(model(tokens[start:end].unsqueeze(0)).logits[0].double(), -1)
        for pos in range(max(scored_upto, start + 1), end):
            nll -= logp[pos - start - 1, tokens[pos]].item()
            count += 1
        scored_upto = end
        start += stride
    return math.exp(nll / count), count


@pytest.mark.parametrize("window,stride", [(16, 16), (16, 8), (20, 7), (64, 64)])
def test_perplexity_matches_plain_loop(random_model, window, stride):
    tokens = torch.randint(1, 64, (53,), generator=torch.Generator().manual_seed(3))
    ours, n = perplexity(random_model, tokens, window, stride)
    ref, n_ref = _plain_perplexity(random_model, tokens, window, stride)
    assert n == n_ref and (n == 52 or stride == window)
    assert ours == pytest.approx(ref, rel=1e-5)


def test_wilson_known_values():
    assert wilson(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-4)
    assert wilson(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-4)
    assert wilson(45, 45)[1] == 1.0 and wilson(45, 45)[0] == pytest.approx(0.92135, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)
    assert wilson(0, 7)[0] == 0.0 and wilson(7, 7)[1] == 1.0  # exact at the edges, no rounding residue
