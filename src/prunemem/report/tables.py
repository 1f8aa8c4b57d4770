"""Tidy tables from the evaluation summaries (polars)."""

from __future__ import annotations

import json

import polars as pl

from prunemem.errors import PrunememError
from prunemem.evaluate.mia import SCORES
from prunemem.plan import Plan

# per membership score: AUC, its bootstrap 95% CI, and the TPR at 1% FPR
MIA_COLUMNS = [f"mia_{score}_{stat}" for score in SCORES for stat in ("auc", "auc_low", "auc_high", "tpr_1pct")]
RESULT_COLUMNS = [
    "model", "method", "level", "k", "n_samples", "n_extracted", "extraction_rate", "ci_low", "ci_high",
    "token_match_rate", "n_rechecked", "n_flipped", "n_cross_checked", "perplexity", "achieved_sparsity",
    "target_sparsity", "compression", *MIA_COLUMNS,
    "checkpoint_sha256", "mask_sha256", "samples_sha256", "metrics_sha256", "params_digest", "code_version",
]


def _mia_columns(summary: dict) -> dict[str, float]:
    out = {}
    for row in summary["mia"]:
        prefix = f"mia_{row['score']}"
        out.update({f"{prefix}_auc": row["auc"], f"{prefix}_auc_low": row["auc_ci_low"],
                    f"{prefix}_auc_high": row["auc_ci_high"], f"{prefix}_tpr_1pct": row["tpr_at_1pct_fpr"]})
    return out


def results(plan: Plan) -> pl.DataFrame:
    """One row per (model, method, level, k), in plan order, from every summary.json."""
    rows = []
    for model in plan.models:
        for method, level in plan.variants():
            path = plan.metrics_dir(model, method, level) / "summary.json"
            if not path.is_file():
                raise PrunememError(f"{path}: missing; evaluate {model} {method} {level} before the report")
            summary = json.loads(path.read_text())
            prov = summary["provenance"]
            env = prov["environment"]
            for per_k in summary["per_k"]:
                rows.append({
                    "model": model, "method": method, "level": float(level), **per_k,
                    "perplexity": summary["perplexity"], "achieved_sparsity": summary["achieved_sparsity"],
                    "target_sparsity": summary["target_sparsity"], "compression": summary["compression"],
                    **_mia_columns(summary), "checkpoint_sha256": prov["inputs"]["checkpoint"],
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
        per_sample = pl.read_parquet(plan.metrics_dir(model, method, level) / "memorization.parquet")
        grouped = (per_sample.filter((pl.col("k") == k) & (pl.col("kind") == "canary"))
                   .group_by("copies").agg(pl.len().alias("n"), pl.col("extracted").sum().alias("hits")))
        frames.append(grouped.with_columns(pl.lit(f"{method} {level}").alias("variant")))
    table = pl.concat(frames).sort("variant", "copies")
    cis = [wilson(h, n) for h, n in zip(table["hits"], table["n"])]
    return table.with_columns(
        (pl.col("hits") / pl.col("n")).alias("extraction_rate"),
        pl.Series("ci_low", [c[0] for c in cis]), pl.Series("ci_high", [c[1] for c in cis]),
    )
