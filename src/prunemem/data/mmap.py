"""Read (and, for fixtures, write) the Megatron / GPT-NeoX ``MMapIndexedDataset`` format.

Pythia's exact training order is published as this format ("preshuffled" Pile:
``EleutherAI/pile-standard-pythia-preshuffled`` and ``...-deduped-...``; merge the shards with
Pythia's ``utils/unshard_memmap.py`` into ``document.bin`` + ``document.idx``). Each item is one
training row of 2049 tokens and row i was in the batch of step i // 1024.

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

import struct
from pathlib import Path

import numpy as np

from prunemem.errors import PrunememError
from prunemem.provenance import atomic_path

MAGIC = b"MMIDIDX\x00\x00"
DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float32, 7: np.float64,
          8: np.uint16}
_HEADER = struct.Struct("<9sQBQQ")


class MMapIndexedDataset:
    """Random access to the items of ``prefix.bin`` through ``prefix.idx``; nothing is read eagerly."""

    def __init__(self, prefix: str | Path):
        self.prefix = Path(prefix)
        self.idx_path, self.bin_path = Path(f"{prefix}.idx"), Path(f"{prefix}.bin")
        for path in (self.idx_path, self.bin_path):
            if not path.is_file():
                raise PrunememError(f"{path}: not found (pythia-preshuffled wants path without .bin/.idx)")
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
        self.bin_size = self.bin_path.stat().st_size
        self._bin = np.memmap(self.bin_path, mode="r", dtype=np.uint8) if self.bin_size else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> np.ndarray:
        """Item ``i`` as a read-only array view; a clear error past the end of either file."""
        if not 0 <= i < self.length:
            raise PrunememError(f"{self.idx_path}: row {i} is past the end of the index ({self.length} rows)")
        start, size = int(self.pointers[i]), int(self.sizes[i])
        end = start + size * self.dtype.itemsize
        if start < 0 or end > self.bin_size:
            raise PrunememError(f"{self.bin_path}: row {i} spans bytes {start}-{end} but the file has "
                                f"{self.bin_size} (truncated .bin or wrong .idx)")
        return np.frombuffer(self._bin, dtype=self.dtype, count=size, offset=start)


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
