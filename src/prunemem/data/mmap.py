"""Read (and, for fixtures, write) the Megatron / GPT-NeoX ``MMapIndexedDataset`` format.

Pythia's exact training order is published as this format ("preshuffled" Pile:
``EleutherAI/pile-standard-pythia-preshuffled`` and ``...-deduped-...``), with the ``.bin``
split into shards ``document-00000-of-00020.bin`` ... beside one ``document.idx``. The shards
are read in place as one virtual file (their byte ranges back to back, exactly what Pythia's
``utils/unshard_memmap.py`` would concatenate), so no second ~600 GB copy is needed. Each item
is one training row of 2049 tokens and row i was in the batch of step i // 1024.

The path may be the prefix (``.../document``), ``document.bin``, or any shard's ``.bin``, as
Pythia's tools take them.

Written here with ``numpy.memmap`` because the official reader lives inside gpt-neox / Megatron
(and a copy in the Pythia repo), not in any pip-installable library. Layout of ``.idx``, all
little-endian:

    magic  b"MMIDIDX\\x00\\x00"   9 bytes
    version                      u64 (= 1)
    dtype code                   u8  (1 u8, 2 i8, 3 i16, 4 i32, 5 i64, 6 f32, 7 f64, 8 u16)
    len                          u64 number of items
    doc_count                    u64 entries of doc_idx
    sizes                        i32[len]     tokens per item
    pointers                     i64[len]     byte offset of each item in .bin
    doc_idx                      i64[doc_count]

``.bin`` is the raw tokens of all items, back to back.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np

from prunemem.errors import PrunememError
from prunemem.provenance import atomic_path

MAGIC = b"MMIDIDX\x00\x00"
DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float32, 7: np.float64,
          8: np.uint16}
_HEADER = struct.Struct("<9sQBQQ")


_SHARD = re.compile(r"^(?P<stem>.+)-(?P<i>\d{5})-of-(?P<n>\d{5})$")


def _prefix(path: str | Path) -> Path:
    """The dataset prefix of a path given as Pythia's tools take it: prefix, prefix.bin/.idx or a shard's .bin."""
    path = Path(path)
    if path.suffix in (".bin", ".idx"):
        path = path.with_suffix("")
    shard = _SHARD.match(path.name)
    return path.with_name(shard["stem"]) if shard else path


def _shards(prefix: Path) -> list[Path]:
    """``prefix.bin``, or every shard ``prefix-000NN-of-000MM.bin`` in order; a gap is one line naming it."""
    single = Path(f"{prefix}.bin")
    if single.is_file():
        return [single]
    found = sorted(prefix.parent.glob(f"{prefix.name}-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9].bin"))
    if not found:
        raise PrunememError(f"{single}: not found, nor shards {prefix.name}-000NN-of-000MM.bin beside it "
                            "(pythia-preshuffled path: the prefix, document.bin or a shard)")
    totals = {_SHARD.match(p.stem)["n"] for p in found}
    if len(totals) > 1:
        raise PrunememError(f"{prefix.parent}: shards of {prefix.name} from different sets (-of-{', -of-'.join(sorted(totals))})")
    n = int(totals.pop())
    have = {int(_SHARD.match(p.stem)["i"]) for p in found}
    for i in range(n):
        if i not in have:
            raise PrunememError(f"{prefix}-{i:05d}-of-{n:05d}.bin: shard {i} of {n} is missing (every shard "
                                "is needed to read the rows in order)")
    return [Path(f"{prefix}-{i:05d}-of-{n:05d}.bin") for i in range(n)]


class MMapIndexedDataset:
    """Random access to the items of ``prefix.bin`` (or its shards) through ``prefix.idx``; nothing is read eagerly."""

    def __init__(self, prefix: str | Path):
        self.prefix = _prefix(prefix)
        self.idx_path = Path(f"{self.prefix}.idx")
        if not self.idx_path.is_file():
            raise PrunememError(f"{self.idx_path}: not found (pythia-preshuffled path: the prefix, document.bin "
                                "or a shard)")
        self.bin_paths = _shards(self.prefix)
        self.bin_path = self.bin_paths[0] if len(self.bin_paths) == 1 else \
            self.prefix.with_name(f"{self.prefix.name}-*.bin")
        with open(self.idx_path, "rb") as fh:
            head = fh.read(_HEADER.size)
        if len(head) < _HEADER.size or head[:9] != MAGIC:
            raise PrunememError(f"{self.idx_path}: not an MMapIndexedDataset index (bad magic)")
        _, version, code, self.length, doc_count = _HEADER.unpack(head)
        if version != 1 or code not in DTYPES:
            raise PrunememError(f"{self.idx_path}: unsupported index (version {version}, dtype code {code})")
        self.dtype = np.dtype(DTYPES[code])
        expected = _HEADER.size + self.length * 12 + doc_count * 8
        if self.idx_path.stat().st_size < expected:
            raise PrunememError(f"{self.idx_path}: truncated index ({self.idx_path.stat().st_size} bytes, "
                                f"header says {expected})")
        index = np.memmap(self.idx_path, mode="r", dtype=np.uint8)
        self.sizes = np.frombuffer(index, dtype=np.int32, count=self.length, offset=_HEADER.size)
        self.pointers = np.frombuffer(index, dtype=np.int64, count=self.length, offset=_HEADER.size + self.length * 4)
        sizes = [p.stat().st_size for p in self.bin_paths]
        self.starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])  # shard i holds bytes starts[i]..
        self.bin_size = int(self.starts[-1])
        self._bins = [np.memmap(p, mode="r", dtype=np.uint8) if n else np.zeros(0, np.uint8)
                      for p, n in zip(self.bin_paths, sizes)]

    def __len__(self) -> int:
        return self.length

    def _bytes(self, start: int, end: int):
        """Bytes start..end of the virtual concatenation of the shards (a view unless a row spans two)."""
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        pieces = []
        while start < end:
            lo = start - int(self.starts[first])
            hi = min(end, int(self.starts[first + 1])) - int(self.starts[first])
            pieces.append(self._bins[first][lo:hi])
            start += hi - lo
            first += 1
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def __getitem__(self, i: int) -> np.ndarray:
        """Item ``i`` as a read-only array; a clear error past the end of either file."""
        if not 0 <= i < self.length:
            raise PrunememError(f"{self.idx_path}: row {i} is past the end of the index ({self.length} rows)")
        start, size = int(self.pointers[i]), int(self.sizes[i])
        end = start + size * self.dtype.itemsize
        if start < 0 or end > self.bin_size:
            have = "the file has" if len(self.bin_paths) == 1 else f"its {len(self.bin_paths)} shards have"
            raise PrunememError(f"{self.bin_path}: row {i} spans bytes {start}-{end} but {have} "
                                f"{self.bin_size} (truncated .bin or wrong .idx)")
        return np.frombuffer(self._bytes(start, end), dtype=self.dtype, count=size) if size else \
            np.zeros(0, self.dtype)


def write(prefix: str | Path, items: list, dtype=np.uint16) -> None:
    """Write ``items`` (token sequences) as ``prefix.bin`` + ``prefix.idx``, one document per item.

    Test fixtures and small corpora use this; the layout is the one ``MMapIndexedDataset`` reads.
    """
    dtype = np.dtype(dtype)
    code = next(c for c, t in DTYPES.items() if np.dtype(t) == dtype)
    sizes = np.array([len(x) for x in items], dtype=np.int32)
    pointers = np.zeros(len(items), dtype=np.int64)
    np.cumsum(sizes[:-1].astype(np.int64) * dtype.itemsize, out=pointers[1:])
    doc_idx = np.arange(len(items) + 1, dtype=np.int64)
    with atomic_path(f"{prefix}.bin") as tmp, open(tmp, "wb") as fh:
        fh.writelines(np.asarray(item, dtype=dtype).tobytes() for item in items)
    with atomic_path(f"{prefix}.idx") as tmp, open(tmp, "wb") as fh:
        fh.write(_HEADER.pack(MAGIC, 1, code, len(items), len(doc_idx)))
        fh.write(sizes.tobytes() + pointers.tobytes() + doc_idx.tobytes())
