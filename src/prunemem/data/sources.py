"""Sample sources behind one interface: ``open_source(spec, ...)`` -> ``Source``.

    members: {kind: local, path: corpus.jsonl.zst, text_field: text}
    heldout: {kind: hf, dataset: monology/pile-uncopyrighted, revision: main, split: validation, text_field: text,
              split_files: {train: "train/*.jsonl.zst", validation: val.jsonl.zst}}   # after `prunemem fetch`
    members: {kind: pythia-preshuffled, path: /data/pile-deduped/document}    # .bin + .idx
    members: {kind: embedded, split: train}                                   # the bundled corpus

Every source yields ``Record``s: a selection key, where the document is in the source, and how
to get its text or tokens. Text sources stream (nothing is loaded whole); the key is a seeded
hash of the document's text, so which documents are drawn does not depend on file order or
sharding, and identical texts always share a key. The preshuffled memmap is tokenized already
and read at random: its records come in seeded random row order with rising keys.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prunemem.errors import PrunememError
from prunemem.data.layout import PRESHUFFLED_ROW, file_format, local_format
from prunemem.provenance import sha256_file

log = logging.getLogger(__name__)

STEP_ROWS = 1024  # Pythia's batch size in rows: row i was trained on at step i // 1024


@dataclass
class Record:
    key: int                       # selection key (smallest keys are drawn)
    doc_id: str                    # where the document is in its source
    text: str | None = None        # text sources
    tokens: np.ndarray | None = None  # tokenized sources
    size: int = 0                  # UTF-8 bytes of the text, or tokens: an upper bound on its token count


def text_record(seed: int, doc_id: str, text: str) -> Record:
    """A text document keyed by a seeded 64-bit hash of its text: the order in which documents are drawn."""
    data = text.encode("utf-8", "surrogatepass")
    key = int.from_bytes(hashlib.blake2b(data, digest_size=8, key=seed.to_bytes(8, "little")).digest(), "little")
    return Record(key, doc_id, text=text, size=len(data))


class Source(ABC):
    """A stream of documents. ``ordered`` sources yield rising keys, so a selection may stop early."""

    ordered = False
    tokenized = False

    def __init__(self, spec: dict, where: str):
        self.spec, self.where = spec, where

    def identity(self) -> dict:
        """What provenance records about the source (ids, pinned revisions, file hashes)."""
        return dict(self.spec)

    def label(self) -> str:
        """A short id for the manifest's source column."""
        return self.spec["kind"]

    @abstractmethod
    def records(self, seed: int, want: int) -> Iterator[Record]:
        """The source's documents, in the order this kind of source yields them."""


def _field(row: dict, field: str, where: str) -> str:
    try:
        text = row[field]
    except (KeyError, TypeError):
        fields = ", ".join(sorted(row)) if isinstance(row, dict) else type(row).__name__
        raise PrunememError(f"{where}: no text field {field!r}; fields: {fields}") from None
    if text is None:
        raise PrunememError(f"{where}: field {field!r} is null (a document needs text)")
    if not isinstance(text, str):
        raise PrunememError(f"{where}: field {field!r} is {type(text).__name__}, not text")
    return text


def _utf8(text: str, where: str, field: str | None) -> str:
    """Refuse lone surrogates (JSON's "\\ud800"): no UTF-8 text holds them, and tokenizers reject them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        what = f"field {field!r}" if field else "the text"
        raise PrunememError(f"{where}: {what} holds a lone surrogate ({text[err.start]!r} at character "
                            f"{err.start}), which is not text") from None
    return text


def _zstd_blocks(raw, path: Path) -> Iterator[bytes]:
    """The decompressed bytes of every zstd frame in ``raw``, in order; a cut or foreign stream is an error.

    Written with ``decompressobj`` rather than ``stream_reader``: the reader ends quietly at a frame
    cut short (a truncated download), which would silently drop the documents after the cut.
    """
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    frame, fed = dctx.decompressobj(), False
    while block := raw.read(1 << 20):
        while block:  # a block may end one frame and start the next: the Pile's shards are many frames
            fed = True
            out = frame.decompress(block)
            if out:
                yield out
            if frame.eof:
                block, frame, fed = frame.unused_data, dctx.decompressobj(), False
            else:
                block = b""
    if fed:
        raise zstandard.ZstdError("the last frame is cut short")


def _binary_lines(path: Path, fmt: str) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes without its newline) of a text or zstd file, split on LF only.

    Only LF ends a line, as for `sed -n` and `wc -l`: a lone CR stays inside its line (a CRLF
    ending loses its CR). A truncated or foreign zstd stream is one line naming the file.
    """
    import zstandard

    n, rest = 0, b""
    try:
        with open(path, "rb") as raw:
            blocks = _zstd_blocks(raw, path) if fmt == "jsonl.zst" else iter(lambda: raw.read(1 << 20), b"")
            for block in blocks:
                lines = (rest + block).split(b"\n")
                rest = lines.pop()
                for line in lines:
                    n += 1
                    yield n, line[:-1] if line.endswith(b"\r") else line
    except zstandard.ZstdError as err:
        raise PrunememError(f"{path}: corrupt zstd stream after line {n} ({err}); a truncated download or not "
                            "a .zst file (fetch it again)") from None
    if rest:  # a last line without its newline
        yield n + 1, rest[:-1] if rest.endswith(b"\r") else rest


def _decode(line: bytes, where: str) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PrunememError(f"{where}: invalid UTF-8 (byte {line[err.start]:#04x} at byte {err.start} of the "
                            "line)") from None


def read_texts(path: Path, fmt: str, field: str | None) -> Iterator[tuple[str, str]]:
    """(document id, text) of every document of a jsonl, jsonl.zst, parquet or txt file, streamed.

    The readers agree on what a document is: jsonl lines that are blank (a trailing newline,
    an empty last line) are not documents and are skipped, as ``datasets``' json loader skips
    them; a txt line is a document even when empty (it then never qualifies for a window), so
    ``line n`` is always the n-th line as ``sed -n np`` prints it. A null text is an error
    naming its record in every format.
    """
    if fmt == "parquet":
        yield from _parquet_texts(path, field)
        return
    for n, line in _binary_lines(path, fmt):
        where = f"{path}: line {n}"
        if fmt == "txt":
            yield f"line {n}", _utf8(_decode(line, where), where, None)
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(_decode(line, where))
        except json.JSONDecodeError as err:
            raise PrunememError(f"{where} is not JSON ({err.msg})") from None
        yield f"line {n}", _utf8(_field(row, field, where), where, field)


def _parquet_texts(path: Path, field: str) -> Iterator[tuple[str, str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise PrunememError(f"{path}: not a readable parquet file ({str(err).splitlines()[0]})") from None
    if field not in pf.schema_arrow.names:
        raise PrunememError(f"{path}: no text field {field!r}; fields: {', '.join(pf.schema_arrow.names)}")
    kind = pf.schema_arrow.field(field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        raise PrunememError(f"{path}: field {field!r} is {kind}, not text; allowed: a string column")
    row = 0
    try:
        for batch in pf.iter_batches(columns=[field], batch_size=4096):
            for text in batch.column(0).to_pylist():
                where = f"{path}: row {row}"
                if text is None:
                    raise PrunememError(f"{where}: field {field!r} is null (a document needs text)")
                yield f"row {row}", _utf8(text, where, field)
                row += 1
    except (pa.ArrowException, OSError) as err:
        raise PrunememError(f"{path}: corrupt parquet after row {row} ({str(err).splitlines()[0]})") from None


class LocalSource(Source):
    """A jsonl, jsonl.zst, parquet or txt file, streamed; ``max_documents`` bounds the scan."""

    def __init__(self, spec: dict, where: str):
        super().__init__(spec, where)
        self.path = Path(spec["path"])
        if not self.path.is_file():
            raise PrunememError(f"{where}.path: {self.path} not found")
        self.format = local_format(spec)

    def identity(self) -> dict:
        return {**self.spec, "format": self.format, "sha256": sha256_file(self.path),
                "bytes": self.path.stat().st_size}

    def label(self) -> str:
        return f"local:{self.path.name}"

    def records(self, seed: int, want: int) -> Iterator[Record]:
        limit = self.spec.get("max_documents")
        for i, (doc_id, text) in enumerate(read_texts(self.path, self.format, self.spec.get("text_field"))):
            if limit is not None and i >= limit:
                return
            yield text_record(seed, doc_id, text)


def fetch_hint(command: str) -> str:
    """How to fill the HF cache a fetched file is missing from."""
    from huggingface_hub import constants

    return f"run `HF_HOME={constants.HF_HOME} {command}` where the hub is reachable and bring that cache here"


def locate(fetched: dict, command: str, cache_dir: str | None = None) -> list[tuple[str, Path]]:
    """(file name, cached path) of every fetched file, checked against its recorded hash by blob name.

    The cache names an LFS blob by its sha256 and any other blob by its git id, and fetch verified
    the bytes, so the name is the check here: sampling does not re-hash gigabytes.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    out = []
    for entry in fetched["files"]:
        path = try_to_load_from_cache(fetched["dataset"], entry["name"], cache_dir=cache_dir,
                                      revision=fetched["commit_sha"], repo_type="dataset")
        want = entry.get("sha256", entry.get("git_oid"))
        if not isinstance(path, str) or not os.path.isfile(path):
            raise PrunememError(f"{fetched['dataset']}@{fetched['revision']} ({fetched['commit_sha'][:12]}): "
                                f"{entry['name']} is not in the Hugging Face cache "
                                f"({cache_dir or constants.HF_HUB_CACHE}); {fetch_hint(command)}")
        if Path(os.path.realpath(path)).name != want:
            raise PrunememError(f"{path}: cached blob {Path(os.path.realpath(path)).name[:12]}... is not the fetched "
                                f"{want[:12]}...; run `{command}` again")
        out.append((entry["name"], Path(path)))
    return out


class HfSource(Source):
    """A hub dataset's split, read from the files ``prunemem fetch`` put in the HF cache.

    Streams the fetched files in name order with ``read_texts`` (no ``datasets`` streaming: it
    neither reads the HF cache offline nor knows splits without a dataset card), up to
    ``max_documents``. Document ids are ``<file>:line <n>``.
    """

    def __init__(self, spec: dict, where: str, fetched: dict, command: str):
        super().__init__(spec, where)
        if fetched.get("dataset") != spec["dataset"] or fetched.get("revision") != spec["revision"] or \
                fetched.get("split") != spec["split"]:
            raise PrunememError(f"{where}: the fetch record is for {fetched.get('dataset')}@{fetched.get('revision')} "
                                f"split {fetched.get('split')}; run `{command}` again")
        self.fetched, self.sha = fetched, fetched["commit_sha"]
        self.files = [(name, path, file_format(spec, name)) for name, path in locate(fetched, command)]

    def identity(self) -> dict:
        return {**self.spec, "resolved_sha": self.sha, "files": self.fetched["files"]}

    def label(self) -> str:
        return f"hf:{self.spec['dataset']}@{self.sha[:12]}/{self.spec['split']}"

    def records(self, seed: int, want: int) -> Iterator[Record]:
        limit = self.spec.get("max_documents")
        i = 0
        for name, path, fmt in self.files:
            for doc_id, text in read_texts(path, fmt, self.spec["text_field"]):
                if limit is not None and i >= limit:
                    return
                i += 1
                yield text_record(seed, f"{name}:{doc_id}", text)


class EmbeddedSource(Source):
    """The bundled corpus, split exactly as the embedded model splits it."""

    def __init__(self, spec: dict, where: str, params: dict):
        super().__init__(spec, where)
        from prunemem import embedded

        cfg = params.get("embedded", {"split": {"heldout": 0.1, "canary_pool": 0.15}, "seed": 0})
        self.docs = embedded.split_corpus(embedded.load_corpus(), cfg["split"], cfg["seed"])[spec["split"]]

    def identity(self) -> dict:
        from prunemem import embedded

        return {**self.spec, "corpus_sha256": embedded.CORPUS_SHA256}

    def label(self) -> str:
        return f"embedded:{self.spec['split']}"

    def records(self, seed: int, want: int) -> Iterator[Record]:
        for doc in self.docs:
            yield text_record(seed, doc["id"], doc["text"])


class PreshuffledSource(Source):
    """Rows of Pythia's preshuffled memmap: members before the checkpoint's step, held-out rows after it."""

    ordered = True
    tokenized = True

    def __init__(self, spec: dict, where: str, step: int, role: str):
        super().__init__(spec, where)
        from prunemem.data.mmap import MMapIndexedDataset

        self.data = MMapIndexedDataset(spec["path"])
        self.step, self.role = step, role
        boundary = step * STEP_ROWS
        if role == "members" and boundary > len(self.data):
            raise PrunememError(f"{where}: step {step} needs rows 0-{boundary - 1} but {self.data.idx_path} has "
                                f"{len(self.data)} rows (a shorter or unfinished memmap?)")
        self.rows = (0, boundary) if role == "members" else (boundary, len(self.data))

    def identity(self) -> dict:
        return {**self.spec, "step": self.step, "rows": list(self.rows), "index_rows": len(self.data),
                "idx_sha256": sha256_file(self.data.idx_path), "bin_bytes": self.data.bin_size,
                "bin_files": [p.name for p in self.data.bin_paths]}

    def label(self) -> str:
        return f"pythia-preshuffled:{self.data.prefix.name}"

    def records(self, seed: int, want: int) -> Iterator[Record]:
        lo, hi = self.rows
        n = hi - lo
        # Draw without replacement; a margin over `want` absorbs rows dropped as duplicates.
        draws = np.random.default_rng(seed).choice(n, size=min(n, 2 * want + 64), replace=False) if n else []
        for rank, offset in enumerate(draws):
            row = lo + int(offset)
            tokens = self.data[row]
            if len(tokens) != PRESHUFFLED_ROW:
                raise PrunememError(f"{self.data.idx_path}: row {row} has {len(tokens)} tokens; a Pythia "
                                    f"preshuffled row has {PRESHUFFLED_ROW}")
            yield Record(rank, f"row {row} (step {row // STEP_ROWS})", tokens=tokens, size=len(tokens))


def open_source(spec: dict, where: str, params: dict, model: dict, role: str, fetched: dict | None = None,
                command: str = "prunemem fetch") -> Source:
    """The source a ``members`` / ``heldout`` spec describes; ``where`` names it in errors.

    ``fetched``: for ``kind: hf``, this role's entry of the fetch record; ``command`` the fetch
    command that makes it, named in errors.
    """
    from prunemem.data.layout import preshuffled_step

    kind = spec["kind"]
    if kind == "local":
        return LocalSource(spec, where)
    if kind == "hf":
        if fetched is None:
            raise PrunememError(f"{where}: kind hf reads fetched files; run `{command}` first")
        return HfSource(spec, where, fetched, command)
    if kind == "embedded":
        return EmbeddedSource(spec, where, params)
    return PreshuffledSource(spec, where, preshuffled_step(model), role)

