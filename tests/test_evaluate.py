"""Teacher-forced extraction against greedy generate(); perplexity against a plain loop; Wilson CIs."""

from __future__ import annotations

import math

import pytest
import torch

from prunemem.evaluate.memorization import greedy_extracted, score_windows
from prunemem.evaluate.perplexity import perplexity
from prunemem.errors import PrunememError
from prunemem.evaluate.stats import wilson
from prunemem.prune import masks
from prunemem.prune.methods import MaskContext, compute
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
    reference = greedy_extracted(model, seqs, k, suffix, pad_id=0)
    assert torch.equal(scores["extracted"], reference)
    # batched prompts (no padding: one k, one length) decode as one prompt at a time does
    assert torch.equal(greedy_extracted(model, seqs, k, suffix, pad_id=0, batch_size=1), reference)
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
        assert torch.equal(scores["extracted"], greedy_extracted(pruned, seqs, 16, 12, pad_id=0))


def test_per_sample_fields_are_consistent(memorizing_model):
    model, seqs = memorizing_model
    s = score_windows(model, seqs, 16, 12, batch_size=5)
    assert torch.equal(s["extracted"], s["matched_prefix"] == 12)
    assert torch.equal(s["extracted"], s["token_match_rate"] == 1.0)
    assert (s["min_margin"] >= 0).all()
    # greedy decoding reaches a subset of the suffix positions, so their smallest margin is no smaller
    assert (s["decision_margin"] >= s["min_margin"]).all()
    assert torch.equal(s["decision_margin"][s["extracted"]], s["min_margin"][s["extracted"]])
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


@pytest.mark.parametrize("window,stride,batch", [(16, 16, 1), (16, 8, 4), (20, 7, 3), (64, 64, 2)])
def test_perplexity_matches_plain_loop(random_model, window, stride, batch):
    tokens = torch.randint(1, 64, (53,), generator=torch.Generator().manual_seed(3))
    ours, n = perplexity(random_model, tokens, window, stride, batch_size=batch)
    ref, n_ref = _plain_perplexity(random_model, tokens, window, stride)
    assert n == n_ref and (n == 52 or stride == window)
    assert ours == pytest.approx(ref, rel=1e-5)


def test_wilson_known_values():
    assert wilson(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-4)
    assert wilson(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-4)
    assert wilson(45, 45)[1] == 1.0 and wilson(45, 45)[0] == pytest.approx(0.92135, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)
    assert wilson(0, 7)[0] == 0.0 and wilson(7, 7)[1] == 1.0  # exact at the edges, no rounding residue


def _store(tmp_path):
    from prunemem.evaluate.run import PartialResults

    return PartialResults(tmp_path, {"inputs": "a", "params": 1})


def test_batched_resumes_after_preemption(tmp_path):
    from prunemem.evaluate.run import batched

    calls = []

    def compute(lo, hi, fail_at=None):
        if lo == fail_at:
            raise KeyboardInterrupt  # what a preempted job sees, give or take the signal
        calls.append(lo)
        return {"x": torch.arange(lo, hi, dtype=torch.float64) ** 2}

    with pytest.raises(KeyboardInterrupt):
        batched(_store(tmp_path), "k8", 23, 5, lambda lo, hi: compute(lo, hi, fail_at=15))
    assert calls == [0, 5, 10]
    calls.clear()
    resumed = _store(tmp_path)
    out = batched(resumed, "k8", 23, 5, compute)
    assert calls == [15, 20] and resumed.resumed == 3
    assert torch.equal(out["x"], torch.arange(23, dtype=torch.float64) ** 2)
    # another key (e.g. a changed param) must not reuse those batches
    from prunemem.evaluate.run import PartialResults

    other = PartialResults(tmp_path, {"inputs": "b", "params": 1})
    calls.clear()
    batched(other, "k8", 23, 5, compute)
    assert calls == [0, 5, 10, 15, 20] and other.resumed == 0
    other.clear()
    assert not (tmp_path / ".partial").exists()


def _checks(reference, seqs, scores, margin, cross_check):
    import polars as pl

    from prunemem.evaluate.run import _recheck_and_cross_check

    samples = pl.DataFrame({"sample_id": [f"s{i}" for i in range(len(seqs))]})
    ev = {"near_tie_margin": margin, "cross_check": cross_check, "seed": 0}
    return _recheck_and_cross_check(reference, seqs, samples, 16, 12, scores, ev, pad=0)


def test_low_precision_verdicts_are_settled_by_fp32_generate(memorizing_model):
    model, seqs = memorizing_model
    low = type(model)(model.config).to(torch.bfloat16)
    low.load_state_dict(model.state_dict())
    scores = score_windows(low.eval(), seqs, 16, 12, batch_size=8)
    checks = _checks(model, seqs, scores, margin=1e9, cross_check=len(seqs))  # re-check every verdict
    assert checks["rechecked"].all() and checks["cross_checked"] == len(seqs)
    assert torch.equal(scores["extracted"], greedy_extracted(model, seqs, 16, 12, pad_id=0))


def test_cross_check_stops_on_a_disagreement(memorizing_model):
    model, seqs = memorizing_model
    scores = score_windows(model, seqs, 16, 12, batch_size=8)
    assert _checks(model, seqs, dict(scores), margin=0.0, cross_check=8)["flipped"].sum() == 0
    scores["extracted"] = scores["extracted"].clone()
    scores["extracted"][5] = ~scores["extracted"][5]  # a verdict generate() will not confirm
    with pytest.raises(PrunememError, match=r"disagree at k=16 on 1 of 8 samples \(s5\)"):
        _checks(model, seqs, scores, margin=0.0, cross_check=8)
    fixed = _checks(model, seqs, scores, margin=1e9, cross_check=8)  # ...unless it is re-checked first
    assert fixed["flipped"].tolist() == [i == 5 for i in range(8)]


def test_fitted_batch_size_shrinks_with_sequence_length(random_model):
    from prunemem.evaluate.run import fit_batch_size

    sizes = [fit_batch_size(random_model.config, t, t, torch.float32, "cpu", cap=10**9) for t in (64, 512, 4096)]
    assert sizes[0] > sizes[1] > sizes[2] >= 1
    assert fit_batch_size(random_model.config, 64, 64, torch.float32, "cpu", cap=7) == 7


def test_end_of_text_inside_a_suffix_is_an_ordinary_token(random_model):
    with torch.no_grad():
        random_model.get_output_embeddings().weight[0] *= 30  # token 0 (end-of-text) now wins often
    prompts = torch.randint(1, 64, (6, 8), generator=torch.Generator().manual_seed(0))
    ids = prompts
    with torch.no_grad():
        for _ in range(10):  # the model's own greedy continuation, by hand
            ids = torch.cat([ids, random_model(ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert (ids[:, 8:] == 0).any(1).sum() >= 3 and (ids[:, 8:-1] == 0).any()  # end-of-text mid-suffix
    assert greedy_extracted(random_model, ids, 8, 10, pad_id=0).all()
    assert score_windows(random_model, ids, 8, 10, batch_size=4)["extracted"].all()


def test_document_mode_matches_lm_eval_loglikelihood_rolling(pipeline):
    """perplexity.mode: document reproduces lm-eval's per-document rolling log-likelihood on the embedded model."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from prunemem import embedded
    from prunemem.checkpoints import load_model, load_tokenizer
    from prunemem.evaluate.perplexity import layout, span_nll
    from tests.conftest import SMALL

    ckpt = pipeline / "data" / "checkpoints" / "tiny"
    model, tokenizer = load_model(ckpt), load_tokenizer(ckpt)
    window = 24  # short blocks: each document spans several, and some end in a short block
    heldout = embedded.split_corpus(embedded.load_corpus(), SMALL["embedded"]["split"], 0)["heldout"]
    texts = [heldout[0]["text"][:300], heldout[1]["text"][:41], heldout[2]["text"][:170], "x"]
    eos = tokenizer.eos_token_id
    docs = [ids + [eos] for ids in embedded.tokenize(tokenizer, texts)]  # EOS-terminated, as the samples stage writes
    tokens, todo, span_doc = layout(docs, {"window": window, "stride": 8, "mode": "document"}, eos, eos)
    nll = span_nll(model, tokens, todo)
    ours = [-float(nll[[i for i, d in enumerate(span_doc) if d == doc]].sum()) for doc in range(len(docs))]

    lm = HFLM(pretrained=model, tokenizer=tokenizer, max_length=window, batch_size=3, device="cpu")
    requests = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=i)
                for i, text in enumerate(texts)]
    theirs = lm.loglikelihood_rolling(requests, disable_tqdm=True)
    assert [len(ids) - 1 for ids in docs] == [len(lm.tok_encode(text)) for text in texts]
    assert ours == pytest.approx(theirs, rel=1e-5)
    # every text token is scored exactly once, the prefix and the trailing end-of-text never
    assert sum(s.end - s.first_scored for s in todo) == sum(len(ids) - 1 for ids in docs)


def test_stream_and_document_layouts_differ_only_in_convention(memorizing_model):
    """The same documents: stream mode scores the EOS separators and windows across documents; both are finite."""
    from prunemem.evaluate.perplexity import combine, layout, span_nll

    model, seqs = memorizing_model
    docs = [row.tolist()[:n] + [0] for row, n in zip(seqs[:4], (30, 17, 9, 30))]
    out = {}
    for mode in ("stream", "document"):
        tokens, todo, span_doc = layout(docs, {"window": 16, "stride": 8, "mode": mode}, 0, 0)
        assert span_doc == sorted(span_doc) and set(span_doc) == set(range(len(docs)))
        out[mode] = combine(float(span_nll(model, tokens, todo).sum()), todo)
    # stream scores every token after the first (EOS separators included); document skips each EOS
    assert out["stream"][1] == sum(map(len, docs)) - 1
    assert out["document"][1] == sum(map(len, docs)) - len(docs)
    assert math.isfinite(out["stream"][0]) and math.isfinite(out["document"][0])
