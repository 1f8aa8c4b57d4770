"""Memorized text in the report: redacted unless params say ``report.show_text: true``.

Extracted text can be personal data or someone's licensed text, and a report travels further
than the data it came from. By default an example shows only the sha256 of its suffix tokens
and its first three tokens: enough to tell examples apart and to find one in the data, not to
read it.
"""

from __future__ import annotations

import hashlib
import struct

import polars as pl

from prunemem.errors import PrunememError
from prunemem.plan import DENSE, DENSE_LEVEL, Plan
from prunemem.provenance import read_parquet

SHOWN_TOKENS = 3
MAX_EXAMPLES = 10


def redact(ids: list[int], decode) -> str:
    """``sha256:1a2b3c4d5e6f 'def foo(' … (32 tokens)`` for a token sequence."""
    digest = hashlib.sha256(struct.pack(f"<{len(ids)}i", *ids)).hexdigest()[:12]
    return f"sha256:{digest} {decode(ids[:SHOWN_TOKENS])!r} … ({len(ids)} tokens)"


def _decoder(checkpoint_dir):
    from tokenizers import Tokenizer

    path = checkpoint_dir / "tokenizer.json"
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as err:  # noqa: BLE001 (tokenizers raises a plain Exception for a missing or corrupt file)
        raise PrunememError(f"{path}: cannot load tokenizer ({str(err).splitlines()[0]})") from None
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=False)


def extracted_examples(plan: Plan) -> pl.DataFrame:
    """Members the dense model extracts at the largest k, most duplicated first, suffixes redacted by default."""
    show = plan.params.get("report", {}).get("show_text", False)
    k, suffix = plan.ks[-1], plan.params["samples"]["suffix_tokens"]
    rows = []
    for model in plan.models:
        per_sample = read_parquet(plan.metrics_dir(model, DENSE, DENSE_LEVEL) / "memorization.parquet",
                                  "per-sample results")
        hits = (per_sample.filter((pl.col("k") == k) & pl.col("member") & pl.col("extracted"))
                .sort(["copies", "sample_id"], descending=[True, False]).head(MAX_EXAMPLES))
        if not hits.height:
            continue
        members = read_parquet(plan.samples_dir(model) / "members.parquet", "member samples")
        tokens = dict(zip(members["sample_id"], members["tokens"].to_list()))
        decode = _decoder(plan.checkpoint_dir(model))
        for row in hits.iter_rows(named=True):
            ids = tokens[row["sample_id"]][-suffix:]
            rows.append({"model": model, "sample_id": row["sample_id"], "copies": row["copies"],
                         "suffix": decode(ids) if show else redact(ids, decode)})
    return pl.DataFrame(rows, schema={"model": pl.String, "sample_id": pl.String, "copies": pl.Int32,
                                      "suffix": pl.String})
