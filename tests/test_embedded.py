"""The embedded corpus, split, tokenizer and training stream: pinned, disjoint, deterministic."""

from __future__ import annotations

import shutil

import pytest
import torch

from prunemem import embedded
from prunemem.errors import PrunememError


@pytest.fixture(scope="module")
def corpus():
    return embedded.load_corpus()


def test_corpus_hash_is_pinned_and_checked(corpus, tmp_path):
    assert len(corpus) > 3000 and all(d["text"].strip() for d in corpus)
    tampered = tmp_path / "corpus.jsonl.xz"
    shutil.copyfile(embedded.corpus_path(), tampered)
    with open(tampered, "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00")
    with pytest.raises(PrunememError, match="does not match the pinned"):
        embedded.load_corpus(tampered)


def test_split_is_disjoint_seeded_and_complete(corpus):
    cfg = {"heldout": 0.1, "canary_pool": 0.15}
    a, b = embedded.split_corpus(corpus, cfg, 0), embedded.split_corpus(corpus, cfg, 0)
    ids = {name: {d["id"] for d in docs} for name, docs in a.items()}
    assert not (ids["train"] & ids["heldout"]) and not (ids["train"] & ids["canary_pool"])
    assert not (ids["heldout"] & ids["canary_pool"])
    assert sum(map(len, ids.values())) == len(corpus)
    assert [d["id"] for d in a["heldout"]] == [d["id"] for d in b["heldout"]]
    assert ids["heldout"] != {d["id"] for d in embedded.split_corpus(corpus, cfg, 1)["heldout"]}


def test_tokenizer_training_is_deterministic(corpus):
    texts = [d["text"] for d in corpus[:200]]
    a, b = embedded.train_tokenizer(texts, 600), embedded.train_tokenizer(texts, 600)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert len(a) == 600 and a.eos_token_id == 0
    ids = embedded.tokenize(a, ["def f(x):\n    return x\n"])[0]
    assert a.decode(ids) == "def f(x):\n    return x\n"


def test_training_stream_plants_each_canary_its_number_of_times():
    train_ids = [list(range(1, 50))] * 40
    canaries = [embedded.Canary(i, f"d{i}", 0, c, [100 + i] * 10) for i, c in enumerate([0, 1, 3, 5])]
    stream = embedded.build_training_stream(train_ids, canaries, eos_id=0, n_rows=12, seq_len=16, seed=0)
    assert stream.rows.shape == (12, 16)
    for c in canaries:
        rows = (stream.row_canary == c.canary_id).nonzero().flatten()
        assert rows.numel() == c.copies
        for r in rows:
            off = int(stream.row_canary_offset[r])
            assert stream.rows[r, off:off + 10].tolist() == c.tokens
        assert int((stream.rows == 100 + c.canary_id).sum()) == 10 * c.copies
    again = embedded.build_training_stream(train_ids, canaries, eos_id=0, n_rows=12, seq_len=16, seed=0)
    assert torch.equal(stream.rows, again.rows)


def test_training_stream_passes_over_the_text_again_in_a_new_order():
    docs = [[10 + d] * 7 for d in range(6)]  # 6 documents of 8 tokens with EOS: 48 tokens a pass
    stream = embedded.build_training_stream(docs, [], eos_id=0, n_rows=9, seq_len=16, seed=0)
    assert stream.epochs == pytest.approx(3.0)
    flat = stream.rows.flatten().tolist()
    passes = [[t for t in flat[i * 48:(i + 1) * 48] if t] for i in range(3)]
    firsts = [[p[j] for j in range(0, 42, 7)] for p in passes]
    assert all(sorted(f) == list(range(10, 16)) for f in firsts)  # each pass holds every document once
    assert firsts[0] == list(range(10, 16)) and firsts[1] != firsts[0]  # later passes are reshuffled
    with pytest.raises(PrunememError, match="embedded.split: the training split has no text"):
        embedded.build_training_stream([[]], [], eos_id=0, n_rows=4, seq_len=16, seed=0)


def test_canaries_per_copy_count_cut_several_windows_per_document():
    pool = [{"id": f"d{i}"} for i in range(3)]
    ids = [list(range(1000 * i, 1000 * i + 100)) for i in range(3)]
    cfg = {"tokens": 10, "copies": [0, 1, 4], "per_copy_count": [6, 3, 2]}
    assert embedded.canary_counts(cfg) == {0: 6, 1: 3, 4: 2} and embedded.planted_tokens(cfg) == 10 * (3 + 8)
    canaries = embedded.choose_canaries(pool, ids, cfg, seed=0)
    assert [c.copies for c in canaries] == [0] * 6 + [1] * 3 + [4] * 2
    spans = sorted((c.doc_id, c.offset) for c in canaries)
    for (d1, o1), (d2, o2) in zip(spans, spans[1:]):  # same-document canaries at least one window apart
        assert d1 != d2 or o2 - o1 >= 20
    assert len({c.doc_id for c in canaries}) == 3
    for c in canaries:
        assert c.tokens == ids[int(c.doc_id[1:])][c.offset:c.offset + 10]
    with pytest.raises(PrunememError, match=r"asks for 60 canaries of 10 tokens but the canary pool can supply 15"):
        embedded.choose_canaries(pool, ids, {**cfg, "per_copy_count": 20}, seed=0)
    with pytest.raises(PrunememError, match="per_copy_count: 2 counts for 3 copy counts"):
        embedded.canary_counts({**cfg, "per_copy_count": [1, 2]})
