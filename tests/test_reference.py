"""Reference perplexities (unigram, Witten-Bell bigram, no blocks) against direct computation."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import torch

from prunemem.evaluate.perplexity import combine, span_nll, spans
from prunemem.evaluate.reference import blocks_removed, ngram_perplexity, reference_perplexity, scored_pairs


def test_ngrams_match_a_direct_count():
    gen = torch.Generator().manual_seed(0)
    vocab = 12
    rows = torch.randint(0, 8, (30, 9), generator=gen, dtype=torch.int32)  # tokens 8..11 never seen
    stream = torch.randint(0, vocab, (40,), generator=gen)
    todo = spans(40, 16, 12)
    previous, target = scored_pairs(stream, todo)
    assert len(target) == 39 and target.tolist() == stream[1:].tolist()
    got = ngram_perplexity(rows, vocab, previous, target)

    flat = rows.flatten().tolist()
    uni = Counter(flat)
    big = Counter((a, b) for row in rows.tolist() for a, b in zip(row, row[1:]))
    ctx = Counter(a for row in rows.tolist() for a in row[:-1])
    followers = {v: len({b for (a, b) in big if a == v}) for v in range(vocab)}

    def p1(w):
        return (uni[w] + 1) / (len(flat) + vocab)

    def p2(v, w):
        if not ctx[v]:
            return p1(w)
        return (big[(v, w)] + followers[v] * p1(w)) / (ctx[v] + followers[v])

    uni_ppl = math.exp(-np.mean([math.log(p1(w)) for w in target]))
    bi_ppl = math.exp(-np.mean([math.log(p2(v, w)) for v, w in zip(previous, target)]))
    assert math.isclose(got["unigram"], uni_ppl, rel_tol=1e-9) and math.isclose(got["bigram"], bi_ppl, rel_tol=1e-9)
    # the bigram really conditions: a stream that follows the training rows' pairs scores better
    cycle = torch.tensor([[(s + j) % 8 for j in range(9)] for s in range(30)], dtype=torch.int32)
    follow = torch.arange(40) % 8
    p, t = scored_pairs(follow, spans(40, 16, 12))
    both = ngram_perplexity(cycle, vocab, p, t)
    assert both["bigram"] < 1.5 < 7.5 < both["unigram"]


def test_no_blocks_is_embed_norm_unembed_and_restores_the_model(random_model, tmp_path):
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(1))
    before = random_model(input_ids=ids).logits
    with blocks_removed(random_model) as empty:
        got = empty(input_ids=ids, attention_mask=torch.ones_like(ids),
                    position_ids=torch.arange(10).expand(2, 10)).logits
    net = random_model.gpt_neox
    expected = random_model.get_output_embeddings()(net.final_layer_norm(net.embed_in(ids)))
    assert torch.allclose(got, expected, atol=1e-6)
    assert len(net.layers) == 4 and torch.equal(random_model(input_ids=ids).logits, before)

    stream = torch.randint(0, 64, (50,), generator=torch.Generator().manual_seed(2))
    todo = spans(50, 16, 12)
    out = reference_perplexity(random_model, tmp_path, stream, todo, batch_size=2)
    assert set(out) == {"no_blocks"}  # no training rows beside a hub-like checkpoint: no n-grams
    with blocks_removed(random_model) as empty:
        direct = combine(float(span_nll(empty, stream, todo).sum()), todo)[0]
    assert math.isclose(out["no_blocks"], direct, rel_tol=1e-6)
