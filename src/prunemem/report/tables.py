"""Tidy tables from the evaluation summaries (polars)."""

from __future__ import annotations

import polars as pl

from prunemem.errors import PrunememError
from prunemem.evaluate.mia import SCORES
from prunemem.plan import DENSE, DOWNSTREAM_SUMMARY, Plan
from prunemem.provenance import read_json, read_parquet
from prunemem.prune.registry import describe, order

# per membership score: AUC, its bootstrap 95% CI, and the TPR at 1% FPR
MIA_COLUMNS = [f"mia_{score}_{stat}" for score in SCORES for stat in ("auc", "auc_low", "auc_high", "tpr_1pct")]
RESULT_COLUMNS = [
    "model", "method", "level", "k", "n_samples", "n_extracted", "extraction_rate", "ci_low", "ci_high",
    "token_match_rate", "n_rechecked", "n_flipped", "n_cross_checked", "perplexity", "achieved_sparsity",
    "target_sparsity", "compression", *MIA_COLUMNS,
    "checkpoint_sha256", "mask_sha256", "samples_sha256", "metrics_sha256", "params_digest", "code_version",
]


def percent(x: float) -> str:
    return f"{100 * x:.1f}%"


def _mia_columns(summary: dict) -> dict[str, float]:
    out = {}
    for row in summary["mia"]:
        prefix = f"mia_{row['score']}"
        out.update({f"{prefix}_auc": row["auc"], f"{prefix}_auc_low": row["auc_ci_low"],
                    f"{prefix}_auc_high": row["auc_ci_high"], f"{prefix}_tpr_1pct": row["tpr_at_1pct_fpr"]})
    return out


def downstream_summary(plan: Plan, model: str, method: str, level: str) -> dict:
    """A variant's lm-eval scores (``prunemem.downstream.run``), or one line naming what is missing."""
    path = plan.downstream_dir(model, method, level) / DOWNSTREAM_SUMMARY
    if not path.is_file():
        raise PrunememError(f"{path}: missing; run `prunemem downstream --model {model} --method {method} "
                            f"--level {level}` before the report")
    return read_json(path, "downstream summary")


def results(plan: Plan) -> pl.DataFrame:
    """One row per (model, method, level, k), in plan order, from every summary.json; with
    ``downstream:`` each task's metrics and their stderr as ``downstream_<task>_<metric>`` columns."""
    from prunemem.downstream.run import columns as downstream_columns

    rows, extra = [], {}
    for model in plan.models:
        for method, level in plan.variants(model):
            path = plan.metrics_dir(model, method, level) / "summary.json"
            if not path.is_file():
                raise PrunememError(f"{path}: missing; evaluate {model} {method} {level} before the report")
            summary = read_json(path, "evaluation summary")
            prov = summary["provenance"]
            env = prov["environment"]
            scores = downstream_columns(downstream_summary(plan, model, method, level)) if plan.downstream else {}
            extra.update(dict.fromkeys(scores))
            for per_k in summary["per_k"]:
                rows.append({
                    "model": model, "method": method, "level": float(level), **per_k,
                    "perplexity": summary["perplexity"], "achieved_sparsity": summary["achieved_sparsity"],
                    "target_sparsity": summary["target_sparsity"], "compression": summary["compression"],
                    **_mia_columns(summary), "checkpoint_sha256": prov["inputs"]["checkpoint"],
                    "mask_sha256": prov["inputs"].get("mask") or prov["inputs"].get("transform"),
                    "samples_sha256": prov["inputs"]["samples"], "metrics_sha256": summary["memorization_sha256"],
                    "params_digest": prov["params_digest"],
                    "code_version": f"{env['prunemem']}+{(env['git_commit'] or 'nogit')[:12]}", **scores,
                })
    return pl.DataFrame(rows, infer_schema_length=None).select([*RESULT_COLUMNS, *extra])


def layer_sparsity(plan: Plan) -> pl.DataFrame:
    """Achieved sparsity per transformer block for every mask, read from the mask headers."""
    from prunemem.identity import mask_header as header
    from prunemem.prune.targets import prunable

    rows = []
    for model in plan.models:
        for method, level in plan.variants(model):
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
        frames.append(grouped.with_columns(pl.lit(model).alias("model"), pl.lit(f"{method} {level}").alias("variant")))
    table = pl.concat(frames).sort("variant", "copies")
    cis = [wilson(h, n) for h, n in zip(table["hits"], table["n"])]
    return table.with_columns(
        (pl.col("hits") / pl.col("n")).alias("extraction_rate"),
        pl.Series("ci_low", [c[0] for c in cis]), pl.Series("ci_high", [c[1] for c in cis]),
    )


def by_kind(plan: Plan, model: str, variants: list[tuple[str, str]], k: int) -> pl.DataFrame:
    """Extraction at ``k`` per sample kind, members and non-members apart (``stats.kind_rates``),
    with the canaries' copy counts pooled: planted canaries, ordinary training windows, 0-copy
    canaries, held-out windows."""
    from prunemem.evaluate.stats import kind_rates

    rows = []
    for method, level in variants:
        per_sample = read_parquet(plan.metrics_dir(model, method, level) / "memorization.parquet", "per-sample results")
        pooled = per_sample.filter(pl.col("k") == k).with_columns(
            pl.when(pl.col("kind") == "canary").then(pl.col("member").cast(pl.Int32)).otherwise(pl.col("copies"))
            .alias("copies"))  # canaries: 1 = planted at least once, 0 = never
        rows += [{"model": model, "variant": f"{method} {level}", **r} for r in kind_rates(pooled)]
    return pl.DataFrame(rows, schema={"model": pl.String, "variant": pl.String, "k": pl.Int64, "kind": pl.String,
                                      "copies": pl.Int64, "member": pl.Boolean, "n_samples": pl.Int64,
                                      "n_extracted": pl.Int64, "extraction_rate": pl.Float64, "ci_low": pl.Float64,
                                      "ci_high": pl.Float64})


PAPER_VALUES = "pruning-as-a-defense-values.csv"
PAPER_SOURCE = ("Gupta et al., \"Pruning as a Defense: Reducing Memorization in Large Language Models\", "
                "arXiv 2502.15796 (values as quoted in the project's paper summary)")


def paper_values() -> pl.DataFrame:
    """The paper's published numbers, bundled with their source (``PAPER_SOURCE``)."""
    from importlib import resources

    text = resources.files("prunemem").joinpath("resources", PAPER_VALUES).read_text()
    return pl.read_csv(text.encode(), schema_overrides={"k": pl.String, "value": pl.String})


def paper_comparison(results: pl.DataFrame, paper: pl.DataFrame, model_names: dict[str, str]) -> pl.DataFrame:
    """Each published value beside ours, with the direction of each effect on both sides.

    ``model_names`` maps our model name to the paper's (``pythia-12b``) or to ``""`` for models
    the paper never ran (the embedded one). "ours" is filled where model and method match, at our
    level nearest the paper's (its Table 1 range for that model, else 0.4) and at the paper's k,
    else our k nearest 50, all said in "comparable". "direction here" compares the same method with
    dense on our first model that ran it, whether or not the model is the paper's.
    """
    ours_by_paper_name = {paper_name: ours for ours, paper_name in model_names.items() if paper_name}
    ks = sorted(results["k"].unique().to_list())
    ranges = {r["model"]: [float(x) for x in r["value"].split("-")] for r in
              paper.filter(pl.col("metric") == "level_range").iter_rows(named=True)}
    results_ = paper.filter(pl.col("metric").is_in(["extraction_rate", "perplexity"]))

    def fmt(metric, v):
        return f"{100 * v:.2f}%" if metric == "extraction_rate" else f"{v:.2f}"

    def arrow(value, base):
        return "=" if value == base else ("↓" if value < base else "↑")

    rows = []
    for row in results_.iter_rows(named=True):
        metric, value = row["metric"], float(row["value"])
        paper_dense = results_.filter((pl.col("model") == row["model"]) & (pl.col("method") == DENSE)
                                      & (pl.col("metric") == metric))
        paper_dir = ("reference" if row["method"] == DENSE else
                     f"{arrow(value, float(paper_dense['value'][0]))} vs dense {fmt(metric, float(paper_dense['value'][0]))}"
                     if paper_dense.height else "no dense value given")
        target_level = sum(ranges.get(row["model"], [0.4])) / len(ranges.get(row["model"], [0.4]))
        k = int(row["k"]) if row["k"] else min(ks, key=lambda x: abs(x - 50))
        entry = {"model": row["model"], "method": row["method"], "metric": metric, "paper": fmt(metric, value),
                 "paper k": row["k"] or "not stated", "paper direction": paper_dir, "ours": "", "direction here": "",
                 "comparable": "", "note": row["note"] or ""}
        here = results.filter((pl.col("method") == row["method"]) & (pl.col("k") == k))
        if here.height:
            model = (ours_by_paper_name.get(row["model"]) if ours_by_paper_name.get(row["model"]) in
                     set(here["model"]) else here["model"][0])
            mine = here.filter(pl.col("model") == model)
            pick = mine.sort((pl.col("level") - target_level).abs(), "level").row(0, named=True)
            dense = results.filter((pl.col("model") == model) & (pl.col("method") == DENSE) & (pl.col("k") == k))
            if row["method"] == DENSE:
                entry["direction here"] = "reference"
            elif dense.height:
                entry["direction here"] = (f"{arrow(pick[metric], dense[metric][0])} vs dense "
                                           f"{fmt(metric, dense[metric][0])} ({model}, level {pick['level']:g})")
            if ours_by_paper_name.get(row["model"]) == model:
                entry["ours"] = fmt(metric, pick[metric])
                entry["comparable"] = (f"same model and method; ours at level {pick['level']:g} (nearest "
                                       f"{target_level:g}), k={k}" + ("" if row["k"] else " (paper's k not stated)"))
            else:
                entry["comparable"] = ("not comparable: model not in this study" if any(model_names.values())
                                       else "not comparable: embedded model; direction only")
        else:
            entry["comparable"] = "method not run here"
        rows.append(entry)
    return pl.DataFrame(rows, schema={c: pl.String for c in ("model", "method", "metric", "paper", "paper k",
                                                             "paper direction", "ours", "direction here",
                                                             "comparable", "note")})


def pareto_front(results: pl.DataFrame) -> pl.DataFrame:
    """Per model and k, the variants no other variant beats on both perplexity and extraction rate."""
    ordered = results.sort("model", "k", "perplexity", "extraction_rate")
    running_best = pl.col("extraction_rate").cum_min().shift(1, fill_value=float("inf")).over("model", "k")
    return ordered.filter(pl.col("extraction_rate") < running_best)


def provenance_appendix(results: pl.DataFrame, checkpoint_ids: dict[str, str]) -> pl.DataFrame:
    """One row per evaluated variant: where each of its numbers came from (full hashes in results.csv)."""
    short = lambda column: pl.col(column).str.slice(0, 12)  # noqa: E731
    return results.unique(subset=["model", "method", "level"], maintain_order=True).select(
        "model", "method", "level",
        pl.col("model").replace_strict(checkpoint_ids, default="?").alias("checkpoint"),
        short("mask_sha256").fill_null("-").alias("mask / transform"), short("samples_sha256").alias("samples"),
        short("metrics_sha256").alias("metrics"), short("params_digest").alias("params"), "code_version")


def checkpoint_ids(plan: Plan) -> dict[str, str]:
    """How each model's checkpoint is named in the provenance appendix: hub id@commit, or the embedded hash."""
    from prunemem.identity import CHECKPOINT_PROVENANCE as PROVENANCE

    ids = {}
    for model in plan.models:
        prov = read_json(plan.checkpoint_dir(model) / PROVENANCE, "checkpoint provenance")
        ids[model] = (f"{prov['repo']}@{prov['commit_sha']}" if prov.get("source") == "hub"
                      else f"embedded {prov['checkpoint_sha256'][:12]}")
    return ids


def paper_model_name(plan: Plan, model: str) -> str:
    """The paper's name for one of our models (``pythia-12b``), or "" when the paper did not run it."""
    spec = plan.params["models"][model]
    repo = spec.get("repo", "")
    name = repo.rsplit("/", 1)[-1].lower()
    return name if name in set(paper_values()["model"].to_list()) else ""


def headline_metrics(results: pl.DataFrame) -> dict:
    """``reports/metrics.json`` for ``dvc metrics show``: model -> variant -> k -> the key numbers."""
    out: dict = {}
    for row in results.iter_rows(named=True):
        variant = out.setdefault(row["model"], {}).setdefault(f"{row['method']}@{row['level']:g}", {})
        variant[f"k{row['k']}"] = {"extraction_rate": row["extraction_rate"], "perplexity": row["perplexity"],
                                   "achieved_sparsity": row["achieved_sparsity"],
                                   "mia_minkpp_auc": row["mia_minkpp_auc"]}
    return out


HISTORY_SCHEMA = {"model": pl.String, "method": pl.String, "level": pl.Float64, "generation": pl.Int64,
                  "best_fitness": pl.Float64, "mean_fitness": pl.Float64, "worst_fitness": pl.Float64,
                  "best_perplexity": pl.Float64, "best_extraction": pl.Float64, "evaluated": pl.Int64,
                  "best_pattern": pl.String}


def search_history(plan: Plan) -> pl.DataFrame:
    """EvoP's fitness per generation for every searched mask, read from the mask headers
    (``reports/search_history.csv``; the pattern names removed units: '2' a block, '2.mlp' a sublayer)."""
    from prunemem.identity import mask_header as header
    from prunemem.prune.units import unit_names

    rows = []
    for model in plan.models:
        for method, level in plan.variants(model):
            if not plan.method(method).search:
                continue
            found = header(plan.mask_path(model, method, level))["info"].get("search")
            if found is None:
                raise PrunememError(f"{plan.mask_path(model, method, level)}: an {method} mask without its search "
                                    "history; rebuild it (prunemem mask)")
            n_blocks = found["units"] if found["granularity"] == "block" else found["units"] // 2
            names = unit_names(n_blocks, found["granularity"])
            for row in found["history"]:
                rows.append({"model": model, "method": method, "level": float(level),
                             **{k: row[k] for k in HISTORY_SCHEMA if k in row and k != "best_pattern"},
                             "best_pattern": " ".join(names[u] for u in row["best_pattern"])})
    return pl.DataFrame(rows, schema=HISTORY_SCHEMA)


TRIAL_SCHEMA = {"model": pl.String, "method": pl.String, "level": pl.Float64, "trial": pl.Int64, "metric": pl.String,
                "allocation": pl.String, "windows": pl.Int64, "cluster": pl.String, "owl_M": pl.Float64,
                "owl_lambda": pl.Float64, "state": pl.String, "value": pl.Float64, "perplexity": pl.Float64,
                "extraction": pl.Float64, "best_value": pl.Float64}
FIXED_SCHEMA = {"model": pl.String, "method": pl.String, "level": pl.Float64, "removed units": pl.Int64,
                "best trial": pl.Int64, "best trial objective": pl.Float64, "best trial metric": pl.String,
                "best fixed metric": pl.String, "best fixed objective": pl.Float64, "search beats fixed": pl.Boolean}


def _trial_headers(plan: Plan):
    from prunemem.prune.masks import header

    for model in plan.models:
        for method, level in plan.variants(model):
            if plan.method(method).trial_search:
                found = header(plan.mask_path(model, method, level))["info"].get("trials")
                if found is None:
                    raise PrunememError(f"{plan.mask_path(model, method, level)}: an {method} mask without its trial "
                                        "history; rebuild it (prunemem mask)")
                yield model, method, level, found


def trial_history(plan: Plan) -> pl.DataFrame:
    """AdaPruner's trials for every searched mask, read from the mask headers: the configuration, the
    objective (calibration perplexity, + lambda x search-split extraction for adapruner-mem), best so far."""
    rows = [{"model": model, "method": method, "level": float(level),
             **{k: row.get(k) for k in TRIAL_SCHEMA if k not in ("model", "method", "level")}}
            for model, method, level, found in _trial_headers(plan) for row in found["history"]]
    return pl.DataFrame(rows, schema=TRIAL_SCHEMA)


def search_against_fixed(plan: Plan) -> pl.DataFrame:
    """The best trial against the best single fixed metric (``width-<metric>``'s pattern), both removing the
    same number of units, hence parameters, scored by the same objective."""
    rows = []
    for model, method, level, found in _trial_headers(plan):
        best = next(r for r in found["history"] if r["trial"] == found["best"])
        fixed = {m: f for m, f in found.get("fixed", {}).items() if f["state"] == "complete"}
        top = min(fixed, key=lambda m: (fixed[m]["value"], m)) if fixed else None
        rows.append({"model": model, "method": method, "level": float(level), "removed units": found["removed"],
                     "best trial": found["best"], "best trial objective": best["value"],
                     "best trial metric": best["metric"], "best fixed metric": top,
                     "best fixed objective": fixed[top]["value"] if top else None,
                     "search beats fixed": best["value"] < fixed[top]["value"] if top else None})
    return pl.DataFrame(rows, schema=FIXED_SCHEMA)


def calibration_comparison(results: pl.DataFrame, k: int) -> pl.DataFrame:
    """Each calibrated method beside its '-ccds' twin (cluster-sampled calibration) at every level."""
    at_k = results.filter(pl.col("k") == k)
    twins = [m for m in at_k["method"].unique(maintain_order=True) if describe(m).twin_of in set(at_k["method"])]
    rows = []
    for twin in twins:
        base = describe(twin).twin_of
        pair = at_k.filter(pl.col("method") == base).join(
            at_k.filter(pl.col("method") == twin), on=["model", "level"], suffix="_ccds")
        for r in pair.iter_rows(named=True):
            rows.append({"model": r["model"], "method": base, "level": r["level"],
                         "extraction (random)": r["extraction_rate"], "extraction (ccds)": r["extraction_rate_ccds"],
                         "perplexity (random)": r["perplexity"], "perplexity (ccds)": r["perplexity_ccds"],
                         "Δ extraction (points)": 100 * (r["extraction_rate_ccds"] - r["extraction_rate"]),
                         "Δ perplexity (%)": 100 * (r["perplexity_ccds"] / r["perplexity"] - 1)})
    return pl.DataFrame(rows, schema={"model": pl.String, "method": pl.String, "level": pl.Float64,
                                      "extraction (random)": pl.Float64, "extraction (ccds)": pl.Float64,
                                      "perplexity (random)": pl.Float64, "perplexity (ccds)": pl.Float64,
                                      "Δ extraction (points)": pl.Float64, "Δ perplexity (%)": pl.Float64})


def structured_comparison(results: pl.DataFrame, k: int) -> pl.DataFrame:
    """Methods that remove whole units (blocks, sublayers, heads and neurons) side by side at each level:
    what they remove and what that costs."""
    structured = sorted((m for m in results["method"].unique() if describe(m).removes_units or describe(m).width),
                        key=order)
    return results.filter((pl.col("k") == k) & pl.col("method").is_in(structured)).select(
        "model", "level", "method", "achieved_sparsity", "perplexity", "extraction_rate", "ci_low", "ci_high"
    ).sort("model", "level", pl.col("method").replace_strict({m: i for i, m in enumerate(structured)}))
