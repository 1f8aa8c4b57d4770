"""Tidy tables from the evaluation summaries (polars)."""

from __future__ import annotations

import polars as pl

from prunemem.errors import PrunememError
from prunemem.plan import Plan
from prunemem.provenance import read_json, read_parquet

RESULT_COLUMNS = [
    "model", "method", "level", "k", "n_samples", "n_extracted", "extraction_rate", "ci_low", "ci_high",
    "token_match_rate", "perplexity", "achieved_sparsity", "target_sparsity", "compression",
    "checkpoint_sha256", "mask_sha256", "samples_sha256", "metrics_sha256", "params_digest", "code_version",
]


def results(plan: Plan) -> pl.DataFrame:
    """One row per (model, method, level, k), in plan order, from every summary.json."""
    rows = []
    for model in plan.models:
        for method, level in plan.variants():
            path = plan.metrics_dir(model, method, level) / "summary.json"
            if not path.is_file():
                raise PrunememError(f"{path}: missing; evaluate {model} {method} {level} before the report")
            summary = read_json(path, "evaluation summary")
            prov = summary["provenance"]
            env = prov["environment"]
            for per_k in summary["per_k"]:
                rows.append({
                    "model": model, "method": method, "level": float(level), **per_k,
                    "perplexity": summary["perplexity"], "achieved_sparsity": summary["achieved_sparsity"],
                    "target_sparsity": summary["target_sparsity"], "compression": summary["compression"],
                    "checkpoint_sha256": prov["inputs"]["checkpoint"],
                    "mask_sha256": prov["inputs"].get("mask") or prov["inputs"].get("transform"),
                    "samples_sha256": prov["inputs"]["samples"], "metrics_sha256": summary["memorization_sha256"],
                    "params_digest": prov["params_digest"],
                    "code_version": f"{env['prunemem']}+{(env['git_commit'] or 'nogit')[:12]}",
                })
    return pl.DataFrame(rows).select(RESULT_COLUMNS)


def layer_sparsity(plan: Plan) -> pl.DataFrame:
    """Achieved sparsity per transformer block for every mask, read from the mask headers."""
    from prunemem.prune.masks import header
    from prunemem.prune.targets import prunable

    rows = []
    for model in plan.models:
        for method, level in plan.variants():
            if plan.kind(method) != "mask":
                continue
            meta = header(plan.mask_path(model, method, level))
            per_block: dict[int, list[int]] = {}
            for target in prunable(list(meta["shapes"])):
                size = 1
                for dim in meta["shapes"][target.name]:
                    size *= dim
                kept_total = per_block.setdefault(target.layer, [0, 0])
                kept_total[0] += meta["kept"][target.name]
                kept_total[1] += size
            rows += [{"model": model, "method": method, "level": float(level), "block": block,
                      "sparsity": 1 - kept / total} for block, (kept, total) in sorted(per_block.items())]
    return pl.DataFrame(rows, schema={"model": pl.String, "method": pl.String, "level": pl.Float64,
                                      "block": pl.Int64, "sparsity": pl.Float64})


def by_duplication(plan: Plan, model: str, variants: list[tuple[str, str]], k: int) -> pl.DataFrame:
    """Canary extraction rate per copy count (Carlini et al.'s duplication curve), with Wilson CIs."""
    from prunemem.evaluate.stats import wilson

    frames = []
    for method, level in variants:
        per_sample = read_parquet(plan.metrics_dir(model, method, level) / "memorization.parquet", "per-sample results")
        grouped = (per_sample.filter((pl.col("k") == k) & (pl.col("kind") == "canary"))
                   .group_by("copies").agg(pl.len().alias("n"), pl.col("extracted").sum().alias("hits")))
        frames.append(grouped.with_columns(pl.lit(f"{method} {level}").alias("variant")))
    table = pl.concat(frames).sort("variant", "copies")
    cis = [wilson(h, n) for h, n in zip(table["hits"], table["n"])]
    return table.with_columns(
        (pl.col("hits") / pl.col("n")).alias("extraction_rate"),
        pl.Series("ci_low", [c[0] for c in cis]), pl.Series("ci_high", [c[1] for c in cis]),
    )
