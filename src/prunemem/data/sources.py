"""Sample sources behind one interface: ``open_source(spec, ...)`` -> ``Source``.

    members: {kind: local, path: corpus.jsonl.zst, text_field: text}
    heldout: {kind: hf, dataset: monology/pile-uncopyrighted, revision: main, split: validation, text_field: text}
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
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prunemem.errors import PrunememError
from prunemem.data.layout import PRESHUFFLED_ROW, local_format
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
    if not isinstance(text, str):
        raise PrunememError(f"{where}: field {field!r} is {type(text).__name__}, not text")
    return text


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

    def _texts(self) -> Iterator[tuple[str, str]]:
        field = self.spec.get("text_field")
        if self.format == "parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(self.path)
            if field not in pf.schema_arrow.names:
                raise PrunememError(f"{self.path}: no text field {field!r}; fields: {', '.join(pf.schema_arrow.names)}")
            row = 0
            for batch in pf.iter_batches(columns=[field], batch_size=4096):
                for text in batch.column(0).to_pylist():
                    yield f"row {row}", text if text is not None else ""
                    row += 1
            return
        with self._open() as fh:
            for n, line in enumerate(fh, start=1):
                if self.format == "txt":
                    yield f"line {n}", line.rstrip("\n")
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise PrunememError(f"{self.path}: line {n} is not JSON ({err.msg})") from None
                yield f"line {n}", _field(row, field, f"{self.path}: line {n}")

    def _open(self):
        if self.format == "jsonl.zst":
            # zstandard is not installed here; pyarrow (already required by datasets and polars)
            # ships a streaming zstd decoder, so no new dependency is needed.
            import pyarrow as pa

            raw = pa.CompressedInputStream(pa.OSFile(str(self.path)), "zstd")
            return io.TextIOWrapper(io.BufferedReader(raw, buffer_size=1 << 20), encoding="utf-8")
        return open(self.path, encoding="utf-8", buffering=1 << 20)

    def records(self, seed: int, want: int) -> Iterator[Record]:
        limit = self.spec.get("max_documents")
        for i, (doc_id, text) in enumerate(self._texts()):
            if limit is not None and i >= limit:
                return
            yield text_record(seed, doc_id, text)


class HfSource(Source):
    """``datasets`` streaming of a dataset id at a revision pinned to its commit sha."""

    def __init__(self, spec: dict, where: str):
        super().__init__(spec, where)
        self.sha = self._resolve()

    def _resolve(self) -> str:
        """The dataset's commit sha: from the hub, or the revision itself offline / for a local dataset dir."""
        from huggingface_hub import HfApi, constants

        dataset, revision = self.spec["dataset"], self.spec["revision"]
        if Path(dataset).is_dir() or constants.HF_HUB_OFFLINE:
            return revision
        from huggingface_hub.errors import HfHubHTTPError

        try:
            return HfApi().dataset_info(dataset, revision=revision).sha
        except HfHubHTTPError as err:
            raise PrunememError(f"{self.where}: {dataset}@{revision}: {str(err).splitlines()[0]}") from None

    def identity(self) -> dict:
        return {**self.spec, "resolved_sha": self.sha}

    def label(self) -> str:
        return f"hf:{self.spec['dataset']}@{self.sha[:12]}/{self.spec['split']}"

    def records(self, seed: int, want: int) -> Iterator[Record]:
        import datasets

        spec = self.spec
        try:
            local = Path(spec["dataset"]).is_dir()  # a dataset directory has no revisions
            stream = datasets.load_dataset(spec["dataset"], spec.get("config"), revision=None if local else self.sha,
                                           split=spec["split"], streaming=True)
        except (FileNotFoundError, ValueError, ConnectionError, OSError) as err:
            raise PrunememError(f"{self.where}: cannot stream {spec['dataset']}@{self.sha} split "
                                f"{spec['split']} ({str(err).splitlines()[0]})") from None
        limit = spec.get("max_documents")
        for i, row in enumerate(stream):
            if limit is not None and i >= limit:
                return
            text = _field(row, spec["text_field"], f"{spec['dataset']} {spec['split']}[{i}]")
            yield text_record(seed, f"{spec['split']}[{i}]", text)


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
                "idx_sha256": sha256_file(self.data.idx_path), "bin_bytes": self.data.bin_size}

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


def open_source(spec: dict, where: str, params: dict, model: dict, role: str) -> Source:
    """The source a ``members`` / ``heldout`` spec describes; ``where`` names it in errors."""
    from prunemem.data.layout import preshuffled_step

    kind = spec["kind"]
    if kind == "local":
        return LocalSource(spec, where)
    if kind == "hf":
        return HfSource(spec, where)
    if kind == "embedded":
        return EmbeddedSource(spec, where, params)
    return PreshuffledSource(spec, where, preshuffled_step(model), role)

