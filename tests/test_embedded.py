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


def test_training_stream_refuses_too_little_text():
    with pytest.raises(PrunememError, match="lower embedded.training.steps"):
        embedded.build_training_stream([[1, 2, 3]], [], eos_id=0, n_rows=4, seq_len=16, seed=0)
