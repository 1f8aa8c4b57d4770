"""Files in the hub's real layouts, for the fake hub (tests/fakehub.py) to publish.

- ``pile_shard``: a ``.jsonl.zst`` of several zstd frames (as the Pile's shards are), lines
  ``{"text", "meta": {"pile_set_name"}}``;
- ``pile_dataset``: monology/pile-uncopyrighted's layout, ``train/NN.jsonl.zst`` plus
  ``val.jsonl.zst`` and ``test.jsonl.zst`` at the root, a README and no dataset card config.
"""

from __future__ import annotations

import json

PILE_SPLIT_FILES = {"train": "train/*.jsonl.zst", "validation": "val.jsonl.zst", "test": "test.jsonl.zst"}


def pile_shard(texts: list[str], frames: int = 3) -> bytes:
    import zstandard

    lines = [json.dumps({"text": t, "meta": {"pile_set_name": "Pile-CC"}}) + "\n" for t in texts]
    step = max(1, -(-len(lines) // frames))
    cctx = zstandard.ZstdCompressor(level=3)
    return b"".join(cctx.compress("".join(lines[i:i + step]).encode()) for i in range(0, len(lines), step))


def pile_dataset(train: list[list[str]], val: list[str], test: list[str]) -> dict[str, bytes]:
    files = {f"train/{i:02d}.jsonl.zst": pile_shard(texts) for i, texts in enumerate(train)}
    files.update({"val.jsonl.zst": pile_shard(val), "test.jsonl.zst": pile_shard(test),
                  "README.md": b"---\nlicense: other\n---\n# A miniature pile-uncopyrighted\n",
                  ".gitattributes": b"*.zst filter=lfs diff=lfs merge=lfs -text\n"})
    return files


def point_hub_at(monkeypatch, server) -> None:
    """Point huggingface_hub's endpoint constants at the fake hub (in this process)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        server.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
