"""The targeted-forgetting section (prunemem.report.forgetting) on synthetic per-member outcomes:
the removal, retain fall, specificity and verdict follow from the data, and the charts are valid."""

from __future__ import annotations

import numpy as np
import polars as pl

from prunemem.report import charts, forgetting
from prunemem.report.compare import ModelSamples

K = 32


def _study():
    ids = np.array([f"canary-{i:05d}" for i in range(20)])
    dense = np.arange(20) < 10  # members 0-9 extracted by the dense model
    forget, retain = list(ids[:5]), list(ids[5:10])
    targeted = dense.copy()
    targeted[:5] = False  # forgets the forget set, keeps the retain set
    blunt = np.zeros(20, bool)  # forgets everything
    docs = np.c_[np.full(30, 100.0), np.full(30, 25.0)]  # 30 documents, 4 nats/token
    variants = {("dense", 0.0): (dense, 1.0), ("localize-zeroout", 0.01): (targeted, 1.01),
                ("localize-selective", 0.01): (blunt, 1.3), ("global", 0.5): (blunt, 1.5),
                ("localize-random", 0.01): (dense, 1.001)}
    samples = ModelSamples(kinds=np.array(["canary"] * 20), copies=np.full(20, 8), extracted={}, ids=ids)
    rows = []
    for key, (x, scale) in variants.items():
        samples.extracted[key] = {K: x}
        samples.documents[key] = docs * [scale, 1.0]
        rows.append({"model": "tiny", "method": key[0], "level": key[1], "k": K,
                     "perplexity": float(np.exp(4 * scale)), "extraction_rate": float(x.mean())})
    record = lambda chosen: {"forget": forget, "retain": retain, "units": 1000, "k": K,  # noqa: E731
                             "chosen": chosen, "per_layer": {"0.neuron": len(chosen) - 1, "1.head": 1}}
    info = {("localize-zeroout", 0.01): record([f"0.neuron.{i}" for i in range(9)] + ["1.head.0"]),
            ("localize-selective", 0.01): record([f"0.neuron.{i}" for i in range(9)] + ["1.head.1"]),
            ("localize-random", 0.01): record([f"0.neuron.{i}" for i in range(9)] + ["1.head.2"])}
    return samples, info, pl.DataFrame(rows)


def test_the_section_computes_removal_retain_fall_specificity_and_the_verdict():
    samples, info, results = _study()
    result = forgetting.analyse("tiny", samples, info, results, K)
    rows = {r["method"]: r for r in result.rows.iter_rows(named=True)}
    good, blunt = rows["localize-zeroout"], rows["localize-selective"]
    assert good["removal"] == 1.0 and good["retain_fall"] == 0.0 and good["specificity"] == 1.0
    assert abs(good["perplexity_change"] - (np.exp(0.04) - 1)) < 1e-9
    assert good["meets_target"] and not good["meets_with_ci"]  # 5 forget members: the CI reaches below 80%
    assert 0.3 < good["removal_low"] < 0.8
    assert blunt["removal"] == 1.0 and blunt["retain_fall"] == 1.0 and blunt["specificity"] == 0.0
    assert not blunt["meets_target"]  # retain gone and perplexity +35%
    assert result.verdict[0].startswith("Targeted pruning meets the target") and "localize-zeroout at 0.01" in \
        result.verdict[0]
    # global magnitude at the targeted variant's perplexity (interpolated) still extracts most of the forget set
    assert good["vs_magnitude_forget_diff"] < -0.9
    assert set(result.comparisons["id"].str.starts_with(forgetting.PREFIX)) == {True}
    assert result.comparisons["p_holm"].is_not_null().all()
    assert result.layers.filter(pl.col("kind") == "head")["units"].sum() == 3


def test_no_variant_meeting_the_target_is_said_with_the_closest():
    samples, info, results = _study()
    info.pop(("localize-zeroout", 0.01))
    result = forgetting.analyse("tiny", samples, info, results, K)
    assert result.verdict[0].startswith("No targeted variant meets the target (>= 80% of the forget set's")
    assert "the closest is localize-selective at 0.01" in result.verdict[0]


def test_the_charts_are_valid_vega_lite():
    samples, info, results = _study()
    result = forgetting.analyse("tiny", samples, info, results, K)
    for figure in (charts.dose_response(result.rows), charts.chosen_units_per_layer(result.layers)):
        spec = figure.to_dict(validate=True)
        assert spec["datasets"] and "facet" in spec
