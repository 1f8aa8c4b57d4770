"""`prunemem fetch`: a hub dataset's split, fetched into the real HF cache layout, then sampled offline.

The real huggingface_hub download code fills a real cache (refs/, blobs named by hash, symlinked
snapshots) from the loopback fake hub; the test then goes offline and samples from that cache
with prunemem's own readers.
"""

from __future__ import annotations

import json
import os

import polars as pl
import pytest
from fakehub import FakeHub
from mirror import PILE_SPLIT_FILES, pile_dataset, point_hub_at

from prunemem import embedded
from prunemem.data import fetch, samples, sources
from prunemem.errors import PrunememError

DATASET = "monology/pile-uncopyrighted"
CMD = "prunemem --params p.yaml fetch --model m"


@pytest.fixture(scope="module")
def texts():
    return [d["text"] for d in embedded.load_corpus()[:330]]


@pytest.fixture
def hub(monkeypatch, texts):
    server = FakeHub()
    files = pile_dataset([texts[:100], texts[100:200], texts[200:250]], texts[250:320], texts[320:330])
    server.sha = server.add(DATASET, "main", files, repo_type="dataset")
    point_hub_at(monkeypatch, server)
    yield server
    server.close()


def spec(split, **kw):
    return {"kind": "hf", "dataset": DATASET, "revision": "main", "split": split, "text_field": "text",
            "split_files": PILE_SPLIT_FILES, **kw}


def params(members, heldout, n=10):
    from test_sampling import _params

    p = _params({"kind": "embedded", "split": "train"}, {"kind": "embedded", "split": "heldout"}, n=n)
    p["models"]["m"].update(members=members, heldout=heldout)
    return p


def resolved(hub):
    return [p.split("/resolve/main/")[1] for m, p, _ in hub.requests if m == "GET" and "/resolve/" in p]


def test_fetch_downloads_only_the_shards_max_documents_needs_then_samples_offline(hub, tmp_path, monkeypatch,
                                                                                  texts):
    from huggingface_hub import constants

    cache = tmp_path / "hf"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    p = params(spec("train", max_documents=150), spec("validation"))
    record = json.loads(fetch.fetch(p, "m", tmp_path / "fetched.json", CMD).read_text())
    # 150 documents: shard 00 (100) and shard 01 (the next 50); never 02, test, or the README
    assert resolved(hub) == ["train/00.jsonl.zst", "train/01.jsonl.zst", "val.jsonl.zst"]
    members = record["sources"]["members"]
    assert members["commit_sha"] == hub.sha and members["documents"] == 150
    assert [f["documents"] for f in members["files"]] == [100, 50] and members["not_fetched"] == ["train/02.jsonl.zst"]
    # the real cache layout: refs/main -> sha, blobs named by sha256, snapshot files are symlinks to them
    repo_dir = cache / "datasets--monology--pile-uncopyrighted"
    assert (repo_dir / "refs" / "main").read_text() == hub.sha
    snap = repo_dir / "snapshots" / hub.sha / "train" / "00.jsonl.zst"
    assert snap.is_symlink() and os.path.basename(os.path.realpath(snap)) == members["files"][0]["sha256"]

    # offline: the fetch re-resolves from the cache, and sampling reads the cached files
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.requests.clear()
    again = json.loads(fetch.fetch(p, "m", tmp_path / "offline.json", CMD).read_text())
    assert hub.requests == [] and again["sources_sha256"] == record["sources_sha256"]
    ckpt = tmp_path / "ckpt"
    tok = embedded.train_tokenizer(texts[:200], 512)
    tok.save_pretrained(ckpt)
    (ckpt / "config.json").write_text(json.dumps({"model_type": "gpt_neox", "max_position_embeddings": 64}))
    (ckpt / "provenance.json").write_text(json.dumps({"checkpoint_sha256": "0" * 64}))
    prov = samples.build(ckpt, tmp_path / "samples", p, "m", fetch_record=tmp_path / "fetched.json", fetch_command=CMD)
    assert prov["inputs"]["fetch"] == record["sources_sha256"]
    assert prov["sources"]["members"]["resolved_sha"] == hub.sha
    manifest = pl.read_parquet(tmp_path / "samples" / "manifest.parquet")
    member_ids = manifest.filter(pl.col("set") == "members")["doc_id"].to_list()
    assert all(d.startswith(("train/00.jsonl.zst:line ", "train/01.jsonl.zst:line ")) for d in member_ids)
    # line n of shard 01 is document 100 + n - 1 of the corpus: ids trace back exactly
    for d in member_ids:
        name, line = d.split(":line ")
        text = texts[int(line) - 1 + (100 if name.endswith("01.jsonl.zst") else 0)]
        assert int(line) <= (100 if name.endswith("00.jsonl.zst") else 50) and text
    assert all(d.startswith("val.jsonl.zst:line ") for d in
               manifest.filter(pl.col("set") == "nonmembers")["doc_id"].to_list())


def test_offline_with_an_empty_cache_says_what_to_run(hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PrunememError) as err:
        fetch.fetch(params(spec("train"), spec("validation")), "m", tmp_path / "f.json", CMD)
    msg = str(err.value)
    assert "\n" not in msg and f"{DATASET}@main is not in the Hugging Face cache" in msg and CMD in msg
    assert not (tmp_path / "f.json").exists()


def test_a_file_missing_from_the_cache_names_repo_revision_file_and_the_command(hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    p = params(spec("train", max_documents=150), spec("validation"))
    record = json.loads(fetch.fetch(p, "m", tmp_path / "f.json", CMD).read_text())
    snap = tmp_path / "hf" / "datasets--monology--pile-uncopyrighted" / "snapshots" / hub.sha
    (snap / "train" / "01.jsonl.zst").unlink()
    with pytest.raises(PrunememError, match=rf"{DATASET}@main \({hub.sha[:12]}\): train/01.jsonl.zst is not in "
                                            rf"the Hugging Face cache .*{CMD}"):
        sources.locate(record["sources"]["members"], CMD)


def test_an_unreachable_hub_falls_back_to_the_cache_or_says_one_line(hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    dead = "http://127.0.0.1:9"
    monkeypatch.setattr(constants, "ENDPOINT", dead)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", dead + "/{repo_id}/resolve/{revision}/{filename}")
    with pytest.raises(PrunememError, match=f"the hub is unreachable .*cache does not have it; run .*{CMD}"):
        fetch.fetch(params(spec("train"), spec("validation")), "m", tmp_path / "f.json", CMD)


def test_a_corrupt_download_is_removed_and_named(hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    hub.corrupt.add("val.jsonl.zst")
    with pytest.raises(PrunememError, match="val.jsonl.zst: sha256 .* removed the corrupt file"):
        fetch.fetch(params(spec("train", max_documents=10), spec("validation")), "m", tmp_path / "f.json", CMD)
    assert not (tmp_path / "f.json").exists()


def test_split_files_are_validated():
    from prunemem.plan import validate

    with pytest.raises(PrunememError, match="heldout.split: 'valid' is not a key of split_files; allowed: test, "
                                            "train, validation"):
        validate(params(spec("train"), spec("valid")))
    with pytest.raises(PrunememError, match=r"split_files.train: 'train/\*' names no known file type"):
        validate(params(spec("train", split_files={"train": "train/*"}), spec("validation")))
