"""Sample sources (local files, preshuffled memmap, embedded) and the sampling rules (hf: test_fetch.py)."""

from __future__ import annotations

import copy
import json

import numpy as np
import polars as pl
import pytest
import yaml

from conftest import REPO
from prunemem import embedded
from prunemem.data import mmap, samples
from prunemem.data.sampling import token_prefixes
from prunemem.errors import PrunememError

K, SUFFIX = [8, 16], 8
WINDOW = max(K) + SUFFIX


@pytest.fixture(scope="module")
def corpus():
    """400 bundled documents (some shorter than a window) and a tokenizer trained on others."""
    docs = embedded.load_corpus()
    return [d["text"] for d in docs[:400]], embedded.train_tokenizer([d["text"] for d in docs[400:700]], 512)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, corpus):
    """What sampling reads from a checkpoint: its tokenizer and config.json."""
    root = tmp_path_factory.mktemp("ckpt")
    corpus[1].save_pretrained(root)
    (root / "config.json").write_text(json.dumps({"model_type": "gpt_neox", "max_position_embeddings": 64}))
    (root / "provenance.json").write_text(json.dumps({"checkpoint_sha256": "0" * 64}))
    return root


def _write(path, texts, fmt, field="text"):
    if fmt == "parquet":
        pl.DataFrame({field: texts, "meta": ["x"] * len(texts)}).write_parquet(path)
    elif fmt == "txt":
        path.write_text("".join(t.replace("\n", " ") + "\n" for t in texts))
    else:
        data = "".join(json.dumps({field: t, "meta": {"i": i}}) + "\n" for i, t in enumerate(texts)).encode()
        if fmt == "jsonl.zst":
            import pyarrow as pa

            with pa.CompressedOutputStream(str(path), "zstd") as out:
                out.write(data)
        else:
            path.write_bytes(data)
    return path


def _params(members, heldout, revision="step143000", n=20, **sample_overrides):
    params = {
        "models": {"m": {"source": "hub", "repo": "org/m", "revision": revision, "members": members,
                         "heldout": heldout}},
        "samples": {"seed": 0, "suffix_tokens": SUFFIX, "k": K, "training_members": n, "nonmembers": n,
                    "perplexity_tokens": 300, "calibration": {"sequences": 4, "tokens": 16}},
        "perplexity": {"window": 32, "stride": 16},
        "prune": {"methods": ["global"], "levels": [0.5], "block_fraction": 0.25, "seed": 0},
    }
    params["evaluate"] = yaml.safe_load((REPO / "params.yaml").read_text())["evaluate"]
    params["samples"].update(sample_overrides)
    from prunemem.plan import validate

    validate(params)
    return params


def _local(path, **kw):
    return {"kind": "local", "path": str(path), **({} if str(path).endswith(".txt") else {"text_field": "text"}), **kw}


def _build(ckpt, out, params):
    samples.build(ckpt, out, params, "m")
    return {name: pl.read_parquet(out / name) for name in samples.FILES + ("manifest.parquet",)}, \
        json.loads((out / "provenance.json").read_text())


def test_token_prefixes_are_exact_prefixes(corpus):
    texts, tok = corpus
    for n in (3, 20, 300):
        full = [ids[:n] for ids in embedded.tokenize(tok, texts[:120])]
        assert [list(x) for x in token_prefixes(tok, texts[:120], n)] == full


def test_formats_agree_windows_trace_to_documents_and_sets_are_disjoint(tmp_path, ckpt, corpus):
    texts, tok = corpus
    train, held = texts[:200], texts[200:]
    heldout = _local(_write(tmp_path / "held.jsonl", held, "jsonl"))
    results = {}
    for fmt in ("jsonl", "jsonl.zst", "parquet"):
        members = _local(_write(tmp_path / f"train.{fmt}", train, fmt))
        results[fmt] = _build(ckpt, tmp_path / fmt, _params(members, heldout))
    sets, prov = results["jsonl"]
    for fmt in ("jsonl.zst", "parquet"):  # selection follows content, not file format or order
        assert sets["members.parquet"]["tokens"].to_list() == results[fmt][0]["members.parquet"]["tokens"].to_list()
    # Every member is the first WINDOW tokens of the document the manifest names; k prefixes share the suffix.
    manifest = sets["manifest.parquet"]
    assert manifest.height == sum(sets[f].height for f in ("members.parquet", "nonmembers.parquet")) + \
        manifest.filter(pl.col("set").is_in(["perplexity", "calibration"])).height
    for row, window in zip(manifest.filter(pl.col("set") == "members").iter_rows(named=True),
                           sets["members.parquet"]["tokens"].to_list()):
        line = int(row["doc_id"].split()[1])
        assert embedded.tokenize(tok, [train[line - 1]])[0][:WINDOW] == window and len(window) == WINDOW
    assert sets["members.parquet"].height == sets["nonmembers.parquet"].height == 20
    assert prov["sources"]["overlaps"] == {k: 0 for k in prov["sources"]["overlaps"]}
    assert sum(len(t) for t in sets["perplexity.parquet"]["tokens"].to_list()) == 300
    assert sets["calibration.parquet"]["tokens"].list.len().to_list() == [16] * 4
    assert prov["sources"]["members"]["sha256"] and "manifest.parquet" in prov["files"]


def test_selection_is_seeded_and_heldout_excludes_members(tmp_path, ckpt, corpus):
    texts, _ = corpus
    path = _local(_write(tmp_path / "all.jsonl", texts, "jsonl"))
    a, prov = _build(ckpt, tmp_path / "a", _params(path, path))  # the same file on both sides
    b, _ = _build(ckpt, tmp_path / "b", _params(path, path))
    c, _ = _build(ckpt, tmp_path / "c", _params(path, path, seed=1))
    assert a["members.parquet"].equals(b["members.parquet"]) and not a["members.parquet"].equals(c["members.parquet"])
    assert sum(prov["sources"]["excluded_as_members"].values()) > 0
    assert prov["sources"]["overlaps"] == {k: 0 for k in prov["sources"]["overlaps"]}
    member_docs = set(a["manifest.parquet"].filter(pl.col("set") == "members")["doc_sha256"])
    assert not member_docs & set(a["manifest.parquet"].filter(pl.col("set") != "members")["doc_sha256"])


def test_txt_and_embedded_sources(tmp_path, ckpt, corpus):
    texts, _ = corpus
    txt = _local(_write(tmp_path / "train.txt", texts[:200], "txt"))
    sets, prov = _build(ckpt, tmp_path / "out", _params(txt, {"kind": "embedded", "split": "heldout"}))
    assert sets["members.parquet"]["source"].str.starts_with("line ").all()
    assert prov["sources"]["heldout"]["corpus_sha256"] == embedded.CORPUS_SHA256


@pytest.fixture(scope="module")
def memmap(tmp_path_factory):
    """1,100 preshuffled rows of 2049 tokens: rows 0-1023 were trained at step 0."""
    prefix = tmp_path_factory.mktemp("pile") / "document"
    rows = np.random.default_rng(0).integers(0, 500, size=(1100, 2049), dtype=np.uint16)
    mmap.write(prefix, list(rows))
    return prefix, rows


def test_preshuffled_members_come_before_the_step(tmp_path, ckpt, memmap):
    prefix, rows = memmap
    spec = {"kind": "pythia-preshuffled", "path": str(prefix)}
    sets, prov = _build(ckpt, tmp_path / "out", _params(spec, spec, revision="step1", n=10))
    drawn = {name: [int(s.split()[1]) for s in sets[f"{name}.parquet"]["source"]] for name in ("members", "nonmembers")}
    assert all(r < 1024 for r in drawn["members"]) and all(r >= 1024 for r in drawn["nonmembers"])
    for r, window in zip(drawn["members"], sets["members.parquet"]["tokens"].to_list()):
        assert window == rows[r, :WINDOW].tolist()
    assert prov["sources"]["members"]["rows"] == [0, 1024]


def test_preshuffled_bad_index(tmp_path, ckpt, memmap):
    prefix, rows = memmap
    spec = {"kind": "pythia-preshuffled", "path": str(prefix)}
    with pytest.raises(PrunememError, match=r"step 5 needs rows 0-5119 but .*document.idx has 1100 rows"):
        samples.build(ckpt, tmp_path / "a", _params(spec, spec, revision="step5", n=10), "m")
    short = tmp_path / "short"
    mmap.write(short, list(rows))
    with open(f"{short}.bin", "r+b") as fh:
        fh.truncate(2049 * 2 * 100)  # the index still lists 1,100 rows
    bad = {"kind": "pythia-preshuffled", "path": str(short)}
    with pytest.raises(PrunememError, match=r"short.bin: row \d+ spans bytes \d+-\d+ but the file has 409800"):
        samples.build(ckpt, tmp_path / "b", _params(bad, bad, revision="step1", n=10), "m")
    with pytest.raises(PrunememError, match="row 1100 is past the end of the index"):
        mmap.MMapIndexedDataset(prefix)[1100]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_too_few_long_documents_says_how_many(tmp_path, ckpt, corpus):
    texts, _ = corpus
    path = _local(_write(tmp_path / "t.jsonl", texts[:50], "jsonl"))
    with pytest.raises(PrunememError) as err:
        samples.build(ckpt, tmp_path / "out", _params(path, path, n=1000), "m")
    msg = str(err.value)
    assert "\n" not in msg and "models.m.members: too few long-enough documents for members" in msg
    assert f"of 50 read have >= {WINDOW} tokens; 1000 needed" in msg
    assert not (tmp_path / "out").exists()


def test_missing_text_field_is_one_line(tmp_path, ckpt, corpus, capsys):
    from conftest import write_params

    from prunemem.cli import main

    texts, _ = corpus
    path = _write(tmp_path / "c.jsonl", texts[:50], "jsonl", field="content")
    params = _params(_local(path), _local(path))
    (tmp_path / "data" / "checkpoints").mkdir(parents=True)
    (tmp_path / "data" / "checkpoints" / "m").symlink_to(ckpt)
    pfile = write_params(tmp_path / "p.yaml", params)
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["--params", str(pfile), "samples", "--model", "m"]) == 1
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"prunemem: error: {path}: line 1: no text field 'text'; fields: content, meta"
    assert not (tmp_path / "data" / "samples").exists()


@pytest.mark.parametrize("change,fragment", [
    ({"members": {"kind": "local", "path": "x.jsonl"}}, "models.m.members: kind local needs text_field"),
    ({"members": {"kind": "hf", "dataset": "d", "split": "train", "text_field": "t"}}, "kind hf needs revision"),
    ({"members": {"kind": "embedded", "split": "train", "path": "p"}}, "members.path: not a key of kind embedded"),
    ({"members": {"kind": "pythia-preshuffled", "path": "p"}, "revision": "main"}, "needs the model's revision"),
    ({"repo": None}, "'repo' is a required property"),
])
def test_bad_source_specs(change, fragment):
    from prunemem.plan import validate

    params = _params({"kind": "embedded", "split": "train"}, {"kind": "embedded", "split": "heldout"})
    model = copy.deepcopy(params["models"]["m"])
    model.update({k: v for k, v in change.items() if v is not None})
    for k in [k for k, v in change.items() if v is None]:
        del model[k]
    params["models"]["m"] = model
    with pytest.raises(PrunememError, match=fragment):
        validate(params)


def _shard(prefix, parts: int, cuts=None):
    """The hub's layout: document.idx plus document-000NN-of-000MM.bin, cut at odd byte offsets."""
    data = prefix.with_suffix(".bin").read_bytes()
    cuts = cuts or [len(data) * i // parts + (i % 2) for i in range(parts + 1)]
    cuts[0], cuts[-1] = 0, len(data)
    out = prefix.parent / "sharded"
    out.mkdir()
    for i in range(parts):
        (out / f"document-{i:05d}-of-{parts:05d}.bin").write_bytes(data[cuts[i]:cuts[i + 1]])
    (out / "document.idx").write_bytes(prefix.with_suffix(".idx").read_bytes())
    return out


def test_sharded_memmap_reads_as_one_without_unsharding(tmp_path, memmap):
    import shutil

    prefix, rows = memmap
    work = tmp_path / "document"
    for ext in (".bin", ".idx"):
        shutil.copyfile(f"{prefix}{ext}", f"{work}{ext}")
    out = _shard(work, 7)  # cuts fall inside rows and inside tokens (odd offsets of uint16 data)
    for path in (out / "document", out / "document.idx", out / "document-00003-of-00007.bin"):
        data = mmap.MMapIndexedDataset(path)
        assert len(data) == len(rows) and data.bin_size == work.with_suffix(".bin").stat().st_size
        for i in (0, 1, 156, 157, 500, 941, 1099):
            assert np.array_equal(data[i], rows[i])
    # a path ending .bin is the prefix, as Pythia's tools take it
    assert np.array_equal(mmap.MMapIndexedDataset(f"{work}.bin")[5], rows[5])
    (out / "document-00004-of-00007.bin").unlink()
    with pytest.raises(PrunememError, match=r"document-00004-of-00007.bin: shard 4 of 7 is missing"):
        mmap.MMapIndexedDataset(out / "document")


def test_readers_agree_on_lines_blank_lines_and_carriage_returns(tmp_path, corpus):
    import zstandard

    from prunemem.data.sources import read_texts

    texts, _ = corpus
    raw = "".join(json.dumps({"text": t}) + "\n" for t in texts[:50]).encode() + b"\n  \n"  # trailing blank lines
    (tmp_path / "a.jsonl").write_bytes(raw)
    cuts = [0, 7, len(raw) // 3, len(raw) // 3 + 1, len(raw)]  # frames that end mid-line and mid-character
    cctx = zstandard.ZstdCompressor()
    (tmp_path / "a.jsonl.zst").write_bytes(b"".join(cctx.compress(raw[a:b]) for a, b in zip(cuts, cuts[1:])))
    plain = list(read_texts(tmp_path / "a.jsonl", "jsonl", "text"))
    assert plain == list(read_texts(tmp_path / "a.jsonl.zst", "jsonl.zst", "text"))
    assert [t for _, t in plain] == texts[:50] and plain[-1][0] == "line 50"
    # a lone CR stays in its line, so `line n` is what `sed -n np` prints; CRLF endings lose the CR
    (tmp_path / "a.txt").write_bytes(b"a\rb\nc\r\n\nd")
    assert list(read_texts(tmp_path / "a.txt", "txt", None)) == [("line 1", "a\rb"), ("line 2", "c"),
                                                                  ("line 3", ""), ("line 4", "d")]
def test_occurrences_counts_exact_spans_inside_rows():
    import torch

    rows = torch.tensor([[1, 2, 3, 4, 1, 2, 3], [9, 1, 2, 3, 0, 0, 0], [3, 1, 2, 0, 0, 0, 0]], dtype=torch.int32)
    # [1,2,3] twice in row 0 and once in row 1; [3,1,2] only in row 2 (never across the row boundary 0->1)
    assert samples.occurrences(rows, [[1, 2, 3], [3, 1, 2], [2, 3, 9], [4, 4, 4]]) == [3, 1, 0, 0]


def test_heldout_windows_are_disjoint_seeded_and_say_how_many_they_can_supply():
    docs = [(f"h{i}", list(range(100 * i, 100 * i + 50))) for i in range(4)]  # 2 windows of 12 per document
    got = samples.heldout_windows(docs, 12, 6, seed=0)
    assert got == samples.heldout_windows(docs, 12, 6, seed=0) and len(got) == 6
    assert all(r["kind"] == "heldout" and not r["member"] and r["copies"] == 0 and len(r["tokens"]) == 12 for r in got)
    spans = {(r["source"], t) for r in got for t in r["tokens"]}
    assert len(spans) == 6 * 12  # no two windows overlap
    with pytest.raises(PrunememError, match=r"samples.nonmembers: asks for 9 held-out windows of 12 tokens but the "
                                            r"held-out split can supply 8"):
        samples.heldout_windows(docs, 12, 9, seed=0)
