"""The window helpers both sample builders share: embedded (``data.samples``) and hub (``data.sampling``).

    python -c "from prunemem.data.windows import calibration_pool_size; print(calibration_pool_size({'sequences': 8}))"

They live here, below both builders, so that neither imports the other (no import cycle).
"""

from __future__ import annotations

import polars as pl

from prunemem.errors import PrunememError

SAMPLE_SCHEMA = {"sample_id": pl.String, "kind": pl.String, "copies": pl.Int32, "member": pl.Boolean,
                 "source": pl.String, "position": pl.Int64, "tokens": pl.List(pl.Int32)}


def _perplexity_docs(docs: list[tuple[str, list[int]]], eos: int, budget: int) -> tuple[list[dict], int]:
    """Whole held-out documents (EOS-terminated) up to ``budget`` tokens; returns them and how many docs were used."""
    wanted, rows = budget, []
    for used, (doc_id, ids) in enumerate(docs, start=1):
        ids = (ids + [eos])[:budget]
        rows.append({"doc_id": doc_id, "tokens": ids})
        budget -= len(ids)
        if budget == 0:
            return rows, used
    raise PrunememError(f"samples.perplexity_tokens: asks for {wanted} but the held-out split has only {wanted - budget}")


def calibration_pool_size(cfg: dict) -> int:
    """How many calibration windows the samples stage writes (``pool``, default ``sequences``)."""
    return cfg.get("pool", cfg["sequences"])


def _calibration_windows(docs: list[tuple[str, list[int]]], eos: int, cfg: dict) -> list[dict]:
    """The calibration pool: consecutive windows over the held-out documents the perplexity set did not use."""
    n, length = calibration_pool_size(cfg), cfg["tokens"]
    stream: list[int] = []
    spans: list[tuple[str, int, int]] = []  # (doc id, first token, end) in the stream
    for doc_id, ids in docs:
        spans.append((doc_id, len(stream), len(stream) + len(ids) + 1))
        stream.extend(ids + [eos])
        if len(stream) >= n * length:
            break
    if len(stream) < n * length:
        raise PrunememError(f"samples.calibration: {n} x {length} tokens exceed the {len(stream)} held-out tokens "
                            "left after the perplexity set")
    windows = []
    for i in range(n):
        lo, hi = i * length, (i + 1) * length
        windows.append({"doc_ids": ",".join(d for d, a, b in spans if a < hi and b > lo), "tokens": stream[lo:hi]})
    return windows
