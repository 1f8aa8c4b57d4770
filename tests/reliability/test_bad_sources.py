"""Bad sample-source files: exit status 1, one line naming the file and the line or record, nothing written.

Each case writes one corpus file with one defect among good documents, points a hub-style model's
members at it, and runs `prunemem samples` in this process.
"""

from __future__ import annotations

import io
import json

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from test_sampling import _params

from prunemem import embedded

from .conftest import cli, error_line


@pytest.fixture(scope="module")
def texts():
    return [d["text"] for d in embedded.load_corpus()[:120]]


@pytest.fixture
def root(tmp_path, monkeypatch, texts):
    ckpt = tmp_path / "data" / "checkpoints" / "m"
    embedded.train_tokenizer(texts[60:], 512).save_pretrained(ckpt)
    (ckpt / "config.json").write_text(json.dumps({"model_type": "gpt_neox", "max_position_embeddings": 64}))
    (ckpt / "provenance.json").write_text(json.dumps({"checkpoint_sha256": "0" * 64}))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def good_lines(texts) -> bytes:
    return "".join(json.dumps({"text": t}) + "\n" for t in texts[:40]).encode()


def zst(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(data)


def parquet(column) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": column}), buf)
    return buf.getvalue()


CASES = [
    # (id, file name, bytes(texts), fragments of the error line)
    ("jsonl-invalid-utf8", "c.jsonl", lambda t: b'{"text": "ok"}\n{"text": "caf\xe9"}\n' + good_lines(t),
     ["c.jsonl: line 2: invalid UTF-8", "0xe9"]),
    ("txt-invalid-utf8", "c.txt", lambda t: b"fine\nalso fine\n\xff\xfe\n", ["c.txt: line 3: invalid UTF-8"]),
    ("jsonl-lone-surrogate", "c.jsonl", lambda t: good_lines(t) + b'{"text": "a\\ud800b"}\n',
     ["c.jsonl: line 41: field 'text' holds a lone surrogate"]),
    ("jsonl-malformed", "c.jsonl", lambda t: good_lines(t) + b'{"text": "cut\n', ["c.jsonl: line 41 is not JSON"]),
    ("jsonl-null", "c.jsonl", lambda t: good_lines(t) + b'{"text": null}\n', ["c.jsonl: line 41: field 'text' is null"]),
    ("zst-truncated", "c.jsonl.zst", lambda t: zst(good_lines(t))[:-9], ["c.jsonl.zst: corrupt zstd stream"]),
    ("zst-not-zstd", "c.jsonl.zst", lambda t: good_lines(t), ["c.jsonl.zst: corrupt zstd stream after line 0"]),
    ("parquet-int", "c.parquet", lambda t: parquet(list(range(40))), ["c.parquet: field 'text' is int64, not text"]),
    ("parquet-binary", "c.parquet", lambda t: parquet([s.encode() for s in t[:40]]),
     ["c.parquet: field 'text' is binary, not text"]),
    ("parquet-corrupt", "c.parquet", lambda t: parquet(t[:40])[:-30], ["c.parquet: not a readable parquet file"]),
    ("parquet-null", "c.parquet", lambda t: parquet([t[0], None, *t[1:40]]), ["c.parquet: row 1: field 'text' is null"]),
]


@pytest.mark.parametrize("name,content,fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_corpus_file_is_one_line_naming_file_and_record(root, texts, capsys, name, content, fragments):
    (root / name).write_bytes(content(texts))
    members = {"kind": "local", "path": name, **({} if name.endswith(".txt") else {"text_field": "text"})}
    heldout = {"kind": "embedded", "split": "heldout"}
    (root / "p.yaml").write_text(yaml.safe_dump(_params(members, heldout, n=4)))
    capsys.readouterr()
    assert cli("samples", "--model", "m", params=("p.yaml",)) == 1
    line = error_line(capsys.readouterr().err)
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert not (root / "data" / "samples").exists()


def test_an_hf_source_without_its_fetch_record_names_the_fetch_command(root, capsys):
    hf = {"kind": "hf", "dataset": "org/d", "revision": "main", "split": "train", "text_field": "text",
          "split_files": {"train": "train/*.jsonl.zst"}}
    (root / "p.yaml").write_text(yaml.safe_dump(_params(hf, {"kind": "embedded", "split": "heldout"}, n=4)))
    capsys.readouterr()
    assert cli("samples", "--model", "m", params=("p.yaml",)) == 1
    line = error_line(capsys.readouterr().err)
    assert "data/fetched/m.json: fetch record not found; run `prunemem --params p.yaml fetch --model m`" in line
    assert not (root / "data" / "samples").exists()


def test_parquet_and_jsonl_nulls_behave_the_same(root, texts):
    """Both are an error naming the record (never a silent empty document)."""
    from prunemem.data.sources import read_texts
    from prunemem.errors import PrunememError

    (root / "n.jsonl").write_text('{"text": "a"}\n{"text": null}\n')
    (root / "n.parquet").write_bytes(parquet(["a", None]))
    for path, fmt, where in ((root / "n.jsonl", "jsonl", "line 2"), (root / "n.parquet", "parquet", "row 1")):
        with pytest.raises(PrunememError, match=f"{where}: field 'text' is null"):
            list(read_texts(path, fmt, "text"))
    assert pl.read_parquet(root / "n.parquet")["text"].null_count() == 1
