"""The report renders a paper-sized grid (about 1,000 rows of results.csv) in under 30 s."""

from __future__ import annotations

import time

import numpy as np
import pytest
import polars as pl

from prunemem.errors import PrunememError
from prunemem.report import charts, compare, html, tables
from prunemem.report.tables import MIA_COLUMNS, RESULT_COLUMNS

MODELS = {"pythia-160m": 12, "pythia-410m": 24, "pythia-1_4b": 24, "pythia-2_8b": 32, "pythia-6_9b": 32,
          "pythia-12b": 36}
METHODS = ["layerwise", "global", "attention", "mlp", "first25", "last25", "random", "random-s1", "random-s2",
           "wanda", "sparsegpt", "owl", "sleb", "evop", "evop-mem", "wanda-ccds"]


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


def synthetic_samples(results: pl.DataFrame, members: int = 5000, nonmembers: int = 1000, documents: int = 200,
                      seed: int = 0) -> dict:
    """Per-sample outcomes consistent with each variant's row: the first n_extracted members are extracted."""
    from prunemem.report.compare import ModelSamples

    rng = np.random.default_rng(seed)
    out = {}
    for model in results["model"].unique(maintain_order=True):
        rows = results.filter(pl.col("model") == model)
        s = ModelSamples(kinds=np.array(["canary"] * 1000 + ["train"] * (members - 1000)),
                         copies=np.r_[np.repeat([1, 4, 16, 64, 256], 200), np.zeros(members - 1000, int)],
                         extracted={}, member=np.r_[np.ones(members, bool), np.zeros(nonmembers, bool)])
        base = rng.normal(0, 1, members + nonmembers) + 0.5 * s.member
        tokens = rng.integers(200, 800, documents).astype(float)
        for r in rows.iter_rows(named=True):
            key = (r["method"], r["level"])
            s.extracted.setdefault(key, {})[r["k"]] = np.arange(members) < r["n_extracted"]
            if r["k"] == rows["k"].max():
                s.mia[key] = {score: base + rng.normal(0, 0.1, base.size) for score in ("loss", "zlib", "mink", "minkpp")}
                s.documents[key] = np.c_[tokens * np.log(r["perplexity"]) * rng.uniform(0.98, 1.02, documents), tokens]
        out[model] = s
    return out


def synthetic_context(results: pl.DataFrame) -> dict:
    return {"suffix": 50, "k": 500, "ks": [50, 100, 200, 500], "built_by": "test",
            "checkpoint_ids": {m: f"EleutherAI/{m}@{'0' * 40}" for m in MODELS},
            "paper_names": {m: m.replace("_", ".") for m in MODELS},
            "examples": pl.DataFrame(schema={"model": pl.String, "sample_id": pl.String, "copies": pl.Int32,
                                             "suffix": pl.String}),
            "samples": synthetic_samples(results),
            "history": pl.DataFrame([{"model": m, "method": me, "level": lv, "generation": g,
                                      "best_fitness": 20.0 - g / 4, "mean_fitness": 30.0 - g / 2,
                                      "worst_fitness": 40.0, "best_perplexity": 20.0 - g / 4,
                                      "best_extraction": 0.01, "evaluated": 16 * (g + 1), "best_pattern": "1 3"}
                                     for m in MODELS for me in ("evop", "evop-mem") for lv in (0.3, 0.4, 0.5)
                                     for g in range(20)], schema=tables.HISTORY_SCHEMA)}


EMPTY_DUP = pl.DataFrame(schema={"copies": pl.Int32, "n": pl.UInt32, "hits": pl.UInt32, "model": pl.String,
                                 "variant": pl.String, "extraction_rate": pl.Float64, "ci_low": pl.Float64,
                                 "ci_high": pl.Float64})


def test_a_paper_sized_report_renders_in_under_30_seconds():
    results, layers = synthetic_grid()
    assert 1000 <= results.height <= 1300
    context = synthetic_context(results)
    start = time.perf_counter()
    page, figures, analyses = html.render(results, layers, EMPTY_DUP, context)
    elapsed = time.perf_counter() - start
    assert elapsed < 30, elapsed
    assert len(page.encode()) <= 3_000_000, len(page.encode())
    assert page.count("data-chart=") >= 5 and "Matched perplexity" in page and "Appendix: provenance" in page
    assert "EvoP search history" in page and "Structured removal" in page and "Calibration sampling" in page
    import re

    assert "None" not in re.sub(r"<script.*?</script>", "", page, flags=re.S)  # no Python None in the text
    # every chart panel holds at most six series
    for name, spec in figures.items():
        for scale in _colour_domains(spec):
            assert len(scale) <= charts.MAX_SERIES, (name, scale)
    # every model's claims are tested the same way, and each finding carries a CI and a Holm p
    claims = [c for a in analyses.values() for c in a.claims]
    assert len(claims) == 5 * len(MODELS) and {c["status"] for c in claims} <= {"confirmed", "refuted", "inconclusive"}
    for a in analyses.values():
        tested = [f for f in a.findings if "Holm p" in f]
        assert len(tested) >= 2 and all("95% CI" in f for f in tested)
    # the paper's 12B values sit beside ours because model and method match
    comparison = tables.paper_comparison(results, tables.paper_values(), context["paper_names"])
    row = comparison.filter((pl.col("model") == "pythia-12b") & (pl.col("method") == "global")
                            & (pl.col("metric") == "extraction_rate")).row(0, named=True)
    assert row["ours"].endswith("%") and row["comparable"].startswith("same model and method; ours at level 0.4")
    assert row["paper direction"].startswith("↓ vs dense") and row["paper k"] == "not stated"
    print(f"rendered {results.height} rows in {elapsed:.1f} s, page {len(page.encode()) / 1e6:.2f} MB")


def _colour_domains(spec):
    """Every colour scale domain in a Vega-Lite spec (one per panel: scales are resolved independently)."""
    if isinstance(spec, dict):
        enc = spec.get("encoding", {})
        colour = enc.get("color", {}) if isinstance(enc, dict) else {}
        if isinstance(colour, dict) and isinstance(colour.get("scale", {}).get("domain"), list):
            yield colour["scale"]["domain"]
        for v in spec.values():
            yield from _colour_domains(v)
    elif isinstance(spec, list):
        for v in spec:
            yield from _colour_domains(v)


def test_a_missing_column_names_itself_and_its_stage():
    results, layers = synthetic_grid()
    with pytest.raises(PrunememError, match=r"^results.csv: column 'perplexity' is missing; it is written by the "
                                            r"evaluate stage"):
        html.render(results.drop("perplexity"), layers, EMPTY_DUP, synthetic_context(results))


def test_a_model_without_a_dense_row_still_renders_and_says_what_is_missing():
    results, layers = synthetic_grid()
    results = results.filter(pl.col("model").is_in(["pythia-160m", "pythia-410m"]))
    results = results.filter(~((pl.col("model") == "pythia-160m") & (pl.col("method") == "dense")))
    context = synthetic_context(results)
    page, _, analyses = html.render(results, layers.filter(pl.col("model").is_in(["pythia-160m", "pythia-410m"])),
                                    EMPTY_DUP, context)
    assert analyses["pythia-160m"].findings[0].startswith("pythia-160m: no dense row: every comparison against the "
                                                          "unpruned model")
    assert all(c["status"] == "inconclusive" for c in analyses["pythia-160m"].claims)
    assert "pythia-160m: no dense row, so no perplexity change to plot" in page
    assert len(analyses["pythia-410m"].comparisons) > 0


def test_pareto_front_and_matched_perplexity_interpolates_between_levels():
    frame = pl.DataFrame({"model": ["m"] * 4, "k": [50] * 4, "method": ["dense", "a", "b", "c"],
                          "level": [0.0, 0.5, 0.5, 0.5], "perplexity": [10.0, 10.4, 11.0, 12.0],
                          "extraction_rate": [0.05, 0.04, 0.045, 0.01]})
    assert tables.pareto_front(frame)["method"].to_list() == ["dense", "a", "c"]  # b is beaten by a
    frame = pl.DataFrame({"model": ["m"] * 3, "k": [50] * 3, "method": ["dense", "a", "a"], "level": [0.0, 0.3, 0.6],
                          "perplexity": [10.0, 10.2, 11.0], "extraction_rate": [0.10, 0.06, 0.02],
                          "ci_low": [0.08, 0.04, 0.01], "ci_high": [0.12, 0.08, 0.03]})
    row = compare.matched_perplexity(frame, 50, budgets=(0.01, 0.05, 0.25)).row(0, named=True)
    assert row["extraction_rate +1%"] == pytest.approx(0.08) and row["levels +1%"] == "dense–0.3"  # halfway
    assert row["extraction_rate +5%"] == pytest.approx(0.06 - 0.04 * 3 / 8) and row["levels +5%"] == "0.3–0.6"
    assert row["ci_low +5%"] == pytest.approx(0.04 - 0.03 * 3 / 8)
    assert row["extraction_rate +25%"] is None  # never that costly


def test_calibration_twins_and_structured_rows():
    frame = pl.DataFrame({
        "model": ["m"] * 6, "k": [50] * 6, "level": [0.5] * 6,
        "method": ["wanda", "wanda-ccds", "sleb", "evop", "evop-mem", "dense"],
        "perplexity": [10.0, 9.5, 20.0, 15.0, 15.1, 8.0], "extraction_rate": [0.10, 0.08, 0.05, 0.04, 0.02, 0.2],
        "achieved_sparsity": [0.5, 0.5, 0.5, 0.5, 0.5, 0.0], "ci_low": [0.0] * 6, "ci_high": [0.3] * 6})
    twins = tables.calibration_comparison(frame, 50).row(0, named=True)
    assert twins["method"] == "wanda" and twins["Δ extraction (points)"] == pytest.approx(-2.0)
    assert twins["Δ perplexity (%)"] == pytest.approx(-5.0)
    assert tables.structured_comparison(frame, 50)["method"].to_list() == ["sleb", "evop", "evop-mem"]


def test_same_pattern_says_when_the_two_searches_agree():
    history = pl.DataFrame([{"model": "m", "method": me, "level": lv, "generation": g, "best_fitness": 1.0,
                             "mean_fitness": 2.0, "worst_fitness": 3.0, "best_perplexity": 1.0, "best_extraction": 0.0,
                             "evaluated": 4, "best_pattern": "1 2" if (me == "evop" or lv == 0.5) else "0 3"}
                            for me in ("evop", "evop-mem") for lv in (0.5, 0.7) for g in range(2)],
                           schema=tables.HISTORY_SCHEMA)
    lines = html.same_pattern(history)
    assert lines == ["m, level 0.5: evop and evop-mem chose the same pattern (1 2), so they are the same model.",
                     "m, level 0.7: evop and evop-mem chose different patterns."]


def test_every_figure_compiles_with_unique_views_and_at_most_six_series():
    """Cloned family panels must not share a Vega view name (Vega would draw one panel's lines in all)."""
    import json
    import re

    import vl_convert

    results, layers = synthetic_grid()
    results = results.filter(pl.col("model") == "pythia-160m")
    for figure in (charts.mia_vs_sparsity(results, "pythia-160m", "minkpp"),
                   charts.extraction_vs_sparsity(results, "pythia-160m", [50, 500]),
                   charts.perplexity_vs_sparsity(results, "pythia-160m")):
        spec = figure.to_dict(validate=False)
        vega = json.dumps(vl_convert.vegalite_to_vega(spec, vl_version=charts.VL_VERSION))
        names = re.findall(r"\"name\": \"([^\"]*_marks)\"", vega)
        assert names and len(names) == len(set(names)), names
        domains = list(_colour_domains(spec))
        assert domains and all(1 <= len(d) <= charts.MAX_SERIES for d in domains)
        shown = [m for d in {tuple(d) for d in domains} for m in d]
        assert sorted(shown) == sorted(set(results["method"]) - {"dense"})  # every method in one panel, dense aside


def test_structured_methods_are_compared_at_matched_parameter_count():
    """Width, block and sublayer removal meet where they remove the same share of weights, not at a level."""
    from prunemem.report.compare import Comparisons, ModelSamples, _matched_parameter_tests

    removed = {("adapruner", 0.5): 1 / 3, ("width-flap", 0.5): 1 / 3, ("evop", 0.3): 1 / 3 + 0.001,
               ("sleb", 0.5): 0.5, ("evop", 0.5): 0.5, ("width-flap", 0.7): 0.466, ("wanda", 0.5): 0.5,
               ("random", 0.5): 0.5}
    n = 400
    samples = ModelSamples(kinds=np.array(["canary"] * n), copies=np.full(n, 64), extracted={})
    for i, v in enumerate(removed):
        samples.extracted[v] = {32: np.arange(n) < 10 * (i + 1)}
    rows = pl.DataFrame([{"method": m, "level": lv, "achieved_sparsity": a, "perplexity": 20.0 + 10 * a + lv + (m == "sleb")}
                         for (m, lv), a in removed.items()])
    c = Comparisons("m", samples, rows, 32)
    groups = _matched_parameter_tests(c, rows, list(removed))
    assert [round(share, 3) for share, _ in groups] == [0.334, 0.5]
    third, half = (pairs for _, pairs in groups)
    # AdaPruner is the reference where it is present; the unstructured wanda and the random control never enter
    assert [(t["a"], t["b"]) for t, _ in third] == [("adapruner@0.5", "evop@0.3"), ("adapruner@0.5", "width-flap@0.5")]
    # else the lowest-perplexity variant: sleb 0.5 and evop 0.5 both remove half, evop has the lower perplexity
    assert [(t["a"], t["b"]) for t, _ in half] == [("evop@0.5", "sleb@0.5")]
    # the extraction test is the paired one on these samples: adapruner (10 extracted) vs evop 0.3 (30)
    assert third[0][0]["test"].startswith("exact McNemar") and third[0][0]["effect"] == pytest.approx(-20 / n)
