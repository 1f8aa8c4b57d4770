"""The report renders a paper-sized grid (about 1,000 rows of results.csv) in under 30 s."""

from __future__ import annotations

import time

import numpy as np
import pytest
import polars as pl

from prunemem.report import html, tables
from prunemem.report.tables import MIA_COLUMNS, RESULT_COLUMNS

MODELS = {"pythia-160m": 12, "pythia-410m": 24, "pythia-1_4b": 24, "pythia-2_8b": 32, "pythia-6_9b": 32,
          "pythia-12b": 36}
METHODS = ["layerwise", "global", "attention", "mlp", "first25", "last25", "random", "wanda", "sparsegpt", "owl",
           "sleb", "evop", "evop-mem", "wanda-ccds"]


def synthetic_grid(seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    rows, layers = [], []
    for model, blocks in MODELS.items():
        variants = [("dense", 0.0)] + [(m, lv) for m in METHODS for lv in (0.3, 0.4, 0.5)] + [
            ("int8", 0.0), ("int4", 0.0), ("int4-gptq", 0.0), ("lowrank", 0.3), ("lowrank", 0.5)]
        for method, level in variants:
            for k in (50, 100, 200, 500):
                n, rate = 5000, max(0.0, 0.02 * (1 - level) + rng.normal(0, 0.002)) * k / 100
                hits = int(rate * n)
                row = {c: "x" * 64 for c in RESULT_COLUMNS}
                row.update(model=model, method=method, level=level, k=k, n_samples=n, n_extracted=hits,
                           extraction_rate=hits / n, ci_low=max(0, hits / n - 0.004), ci_high=hits / n + 0.004,
                           token_match_rate=0.5, n_rechecked=3, n_flipped=0, n_cross_checked=32,
                           perplexity=8 * (1 + level) ** 2, achieved_sparsity=level, target_sparsity=level,
                           compression=1 - level, code_version="0.1.0+abc")
                row.update({c: 0.6 + rng.normal(0, 0.02) if "tpr" not in c else 0.1 for c in MIA_COLUMNS})
                rows.append(row)
            if method not in ("dense", "int8", "int4", "int4-gptq", "lowrank"):
                layers += [{"model": model, "method": method, "level": level, "block": b,
                            "sparsity": float(np.clip(level + rng.normal(0, 0.05), 0, 1))} for b in range(blocks)]
    return pl.DataFrame(rows).select(RESULT_COLUMNS), pl.DataFrame(layers)


def test_a_paper_sized_report_renders_in_under_30_seconds():
    results, layers = synthetic_grid()
    assert 1000 <= results.height <= 1300
    dup = pl.DataFrame(schema={"copies": pl.Int32, "n": pl.UInt32, "hits": pl.UInt32, "model": pl.String,
                               "variant": pl.String, "extraction_rate": pl.Float64, "ci_low": pl.Float64,
                               "ci_high": pl.Float64})
    context = {"suffix": 50, "k": 500, "ks": [50, 100, 200, 500], "built_by": "test",
               "checkpoint_ids": {m: f"EleutherAI/{m}@{'0' * 40}" for m in MODELS},
               "paper_names": {m: m.replace("_", ".") for m in MODELS},
               "examples": pl.DataFrame(schema={"model": pl.String, "sample_id": pl.String, "copies": pl.Int32,
                                                "suffix": pl.String}),
               "history": pl.DataFrame([{"model": m, "method": me, "level": lv, "generation": g,
                                         "best_fitness": 20.0 - g / 4, "mean_fitness": 30.0 - g / 2,
                                         "worst_fitness": 40.0, "best_perplexity": 20.0 - g / 4,
                                         "best_extraction": 0.01, "evaluated": 16 * (g + 1), "best_pattern": "1 3"}
                                        for m in MODELS for me in ("evop", "evop-mem") for lv in (0.3, 0.4, 0.5)
                                        for g in range(20)], schema=tables.HISTORY_SCHEMA)}
    start = time.perf_counter()
    page = html.render(results, layers, dup, context)
    elapsed = time.perf_counter() - start
    assert elapsed < 30, elapsed
    assert page.count("<svg") >= 5 and "Matched perplexity" in page and "Appendix: provenance" in page
    assert "EvoP search history" in page and "Structured removal" in page and "Calibration sampling" in page
    # the paper's 12B values sit beside ours because model and method match
    comparison = tables.paper_comparison(results, tables.paper_values(), context["paper_names"])
    row = comparison.filter((pl.col("model") == "pythia-12b") & (pl.col("method") == "global")
                            & (pl.col("metric") == "extraction_rate")).row(0, named=True)
    assert row["ours"].startswith("0.3: ") and row["comparable"].startswith("same model and method; ours at k=50")
    print(f"rendered {results.height} rows in {elapsed:.1f} s")


def test_pareto_front_and_matched_perplexity():
    frame = pl.DataFrame({"model": ["m"] * 4, "k": [50] * 4, "method": ["dense", "a", "b", "c"],
                          "level": [0.0, 0.5, 0.5, 0.5], "perplexity": [10.0, 10.4, 11.0, 12.0],
                          "extraction_rate": [0.05, 0.04, 0.045, 0.01]})
    assert tables.pareto_front(frame)["method"].to_list() == ["dense", "a", "c"]  # b is beaten by a
    matched = {r["method"]: r for r in tables.matched_perplexity(frame, 50, budgets=(0.05, 0.25)).to_dicts()}
    assert matched["a"]["<= +5% ppl"] == "4.0% (0.5)" and matched["c"]["<= +5% ppl"] == "-"
    assert matched["c"]["<= +25% ppl"] == "1.0% (0.5)"


def test_calibration_twins_and_search_verdicts():
    frame = pl.DataFrame({
        "model": ["m"] * 6, "k": [50] * 6, "level": [0.5] * 6,
        "method": ["wanda", "wanda-ccds", "sleb", "evop", "evop-mem", "dense"],
        "perplexity": [10.0, 9.5, 20.0, 15.0, 15.1, 8.0], "extraction_rate": [0.10, 0.08, 0.05, 0.04, 0.02, 0.2],
        "achieved_sparsity": [0.5, 0.5, 0.5, 0.5, 0.5, 0.0], "ci_low": [0.0] * 6, "ci_high": [0.3] * 6})
    twins = tables.calibration_comparison(frame, 50).row(0, named=True)
    assert twins["method"] == "wanda" and twins["Δ extraction (points)"] == pytest.approx(-2.0)
    assert twins["Δ perplexity (%)"] == pytest.approx(-5.0)
    verdicts = tables.search_verdicts(frame, 50)
    assert verdicts[0].startswith("m, level 0.5: evop-mem forgets more at lower perplexity than sleb")
    assert "evop-mem forgets more at equal perplexity than evop" in verdicts[1]  # +0.7% is within 1%
    costly = frame.with_columns(pl.when(pl.col("method") == "evop-mem").then(17.0).otherwise(pl.col("perplexity"))
                                .alias("perplexity"))
    assert "forgets more, at +13.3% perplexity, than evop" in tables.search_verdicts(costly, 50)[1]
    cheaper = frame.with_columns(pl.when(pl.col("method") == "evop-mem").then(14.0).otherwise(pl.col("perplexity"))
                                 .alias("perplexity"))
    assert "evop-mem forgets more at lower perplexity than evop" in tables.search_verdicts(cheaper, 50)[1]
    assert tables.structured_comparison(frame, 50)["method"].to_list() == ["sleb", "evop", "evop-mem"]
