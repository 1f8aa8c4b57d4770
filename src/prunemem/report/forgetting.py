"""The targeted-forgetting section: dose-response of the localize-* masks on the forget and retain sets,
their specificity, the same at matched perplexity for global magnitude and random units, and a verdict.

    python -c "from prunemem.report import forgetting"   # called by prunemem.report.html

Every localize-* mask records its forget and retain sample ids (``info.localize`` in its header,
``prunemem.prune.localize``); the outcomes are the same per-member evaluation files as every other
variant. Per variant (method, budget), against the dense model on the same members:

- forget removal = 1 - forget rate / dense forget rate, from the paired difference (exact McNemar,
  Newcombe CI) scaled by the dense rate; retain fall likewise on the retain set;
- perplexity change: paired bootstrap over documents;
- specificity = forget removal - retain fall: a bootstrap over members, the forget and retain
  members resampled independently, each paired across the variant and dense;
- at the variant's perplexity, global magnitude (the paper's method) and random units
  (``localize-random``) interpolated along their curves: paired bootstrap over the forget members.

These tests are their own Holm family per model (rows in reports/comparisons.csv with ids starting
``forgetting:``). The target (issue 23): removal >= 80%, retain fall <= 20%, perplexity <= +5%.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from prunemem.evaluate import stats
from prunemem.plan import DENSE
from prunemem.prune.registry import describe, order
from prunemem.report.compare import RESAMPLES, SEED, Comparisons, ModelSamples, interpolation_weights

TARGET = {"removal": 0.80, "retain_fall": 0.20, "perplexity": 0.05}
PREFIX = "forgetting: "


def forgetting_methods(methods) -> list[str]:
    return sorted({m for m in methods if describe(m).forgets}, key=order)


def load(plan, model: str) -> dict[tuple[str, float], dict]:
    """``info.localize`` of every localize-* mask of ``model``, by (method, level)."""
    from prunemem.prune.masks import header

    out = {}
    for method, level in plan.variants(model):
        if plan.method(method).forgets:
            out[(method, float(level))] = header(plan.mask_path(model, method, level))["info"]["localize"]
    return out


@dataclass
class Result:
    rows: pl.DataFrame  # one row per localize variant (the dose-response table)
    layers: pl.DataFrame  # chosen units per (method, level, block, kind)
    comparisons: pl.DataFrame  # the Holm-corrected tests
    verdict: list[str] = field(default_factory=list)


def _rel(diff: float, low: float, high: float, base: float) -> tuple[float, float, float]:
    """A paired rate difference as the share of the dense value removed (drop, low, high)."""
    if base <= 0:
        return float("nan"), float("nan"), float("nan")
    return -diff / base, -high / base, -low / base


def _specificity(v_f, d_f, v_r, d_r) -> tuple[float, float, float, float]:
    """(specificity, low, high, p): relative forget drop minus relative retain drop, bootstrap over members."""
    def drop(v, d, w):
        dense = w @ d
        return np.where(dense > 0, 1 - (w @ v) / np.where(dense > 0, dense, 1), 0.0)

    wf, wr = stats.resample_counts(v_f.size, RESAMPLES, SEED), stats.resample_counts(v_r.size, RESAMPLES, SEED + 1)
    observed = float((1 - v_f.mean() / d_f.mean() if d_f.mean() else 0) -
                     (1 - v_r.mean() / d_r.mean() if v_r.size and d_r.mean() else 0))
    reps = drop(v_f, d_f, wf) - (drop(v_r, d_r, wr) if v_r.size else 0.0)
    low, high, p = stats.bootstrap_summary(reps, observed)
    return observed, low, high, p


def analyse(model: str, samples: ModelSamples | None, info: dict, results: pl.DataFrame, k: int) -> Result | None:
    """The section's numbers for one model; None without localize-* variants or a dense row."""
    at_k = results.filter((pl.col("model") == model) & (pl.col("k") == k))
    dense_rows = at_k.filter(pl.col("method") == DENSE)
    if not info or samples is None or samples.ids is None or dense_rows.height == 0:
        return None
    c = Comparisons(model, samples, at_k, k)
    dense = (DENSE, 0.0)
    d_ppl = float(dense_rows["perplexity"][0])
    row_of = {sid: i for i, sid in enumerate(samples.ids)}
    methods = sorted({m for m, _ in info}, key=order)
    reference = next((m for m in at_k["method"].unique().to_list() if describe(m).reference), None)
    control = next((m for m in methods if describe(m).family == "control"), None)
    rows, layers, pending = [], [], []
    for (method, level), rec in sorted(info.items(), key=lambda kv: (order(kv[0][0]), kv[0][1])):
        if (method, level) not in samples.extracted:
            continue
        f_idx = np.array([row_of[s] for s in rec["forget"] if s in row_of], dtype=int)
        r_idx = np.array([row_of[s] for s in rec["retain"] if s in row_of], dtype=int)
        v, d = samples.extracted[(method, level)][k], samples.extracted[dense][k]
        label = f"{method}@{level:g}"
        tf = c._add(f"{PREFIX}forget {label} vs dense", label, DENSE, f"forget-set extraction k={k}",
                    "exact McNemar; Newcombe paired CI", f_idx.size,
                    *stats.paired_rate_difference(v[f_idx], d[f_idx]),
                    stats.mcnemar_exact(int((v[f_idx] & ~d[f_idx]).sum()), int((~v[f_idx] & d[f_idx]).sum())), "rate")
        tr = None
        if r_idx.size:
            tr = c._add(f"{PREFIX}retain {label} vs dense", label, DENSE, f"retain-set extraction k={k}",
                        "exact McNemar; Newcombe paired CI", r_idx.size,
                        *stats.paired_rate_difference(v[r_idx], d[r_idx]),
                        stats.mcnemar_exact(int((v[r_idx] & ~d[r_idx]).sum()), int((~v[r_idx] & d[r_idx]).sum())),
                        "rate")
        tp = c.perplexity((method, level), dense, test_id=f"{PREFIX}perplexity {label} vs dense")
        spec = _specificity(v[f_idx].astype(float), d[f_idx].astype(float), v[r_idx].astype(float),
                            d[r_idx].astype(float))
        ts = c._add(f"{PREFIX}specificity {label}", label, DENSE, "forget removal - retain fall",
                    "bootstrap over members (forget and retain resampled apart)", f_idx.size + r_idx.size,
                    spec[0], spec[1], spec[2], spec[3], "rate")
        ppl = float(at_k.filter((pl.col("method") == method) & (pl.col("level") == level))["perplexity"][0])
        versus = {}
        for other in (reference, control):
            if other is None or other == method:
                continue
            weights = interpolation_weights(c.curve(other), ppl)
            if weights is None:
                versus[other] = None
                continue
            mixed = c.mixed(weights)
            diff, low, high, p = stats.paired_rate_bootstrap(v[f_idx].astype(float), mixed[f_idx], RESAMPLES, SEED)
            versus[other] = (c._add(f"{PREFIX}forget {label} vs {other} at matched perplexity", label,
                                    f"{other} (interpolated)", f"forget-set extraction k={k} at perplexity {ppl:.3f}",
                                    "paired bootstrap over members", f_idx.size, diff, low, high, p, "rate"),
                             float(mixed[r_idx].mean()) if r_idx.size else float("nan"))
        base_f = float(d[f_idx].mean()) if f_idx.size else 0.0
        base_r = float(d[r_idx].mean()) if r_idx.size else 0.0
        pending.append((method, level, rec, tf, tr, tp, ts, versus, base_f, base_r, f_idx.size, r_idx.size, ppl))
        for key, n in sorted(rec["per_layer"].items()):
            block, kind = key.split(".")
            layers.append({"model": model, "method": method, "level": level, "block": int(block), "kind": kind,
                           "units": n})
    frame = c.finish()
    done = {t["id"]: t for t in frame.to_dicts()}
    for method, level, rec, tf, tr, tp, ts, versus, base_f, base_r, n_f, n_r, ppl in pending:
        tf, ts = done[tf["id"]], done[ts["id"]]
        tr = done[tr["id"]] if tr is not None else None
        tp = done[tp["id"]] if tp is not None else None
        removal = _rel(tf["effect"], tf["ci_low"], tf["ci_high"], base_f)
        fall = _rel(tr["effect"], tr["ci_low"], tr["ci_high"], base_r) if tr else (0.0, 0.0, 0.0)
        change = (tp["effect"], tp["ci_low"], tp["ci_high"]) if tp else (ppl / d_ppl - 1,) * 3
        row = {"model": model, "method": method, "level": level, "units": len(rec["chosen"]),
               "unit_share": len(rec["chosen"]) / rec["units"], "forget_n": n_f, "retain_n": n_r,
               "forget_rate": base_f * (1 - removal[0]) if base_f else float("nan"),
               "removal": removal[0], "removal_low": removal[1], "removal_high": removal[2],
               "retain_fall": fall[0], "retain_fall_low": fall[1], "retain_fall_high": fall[2],
               "perplexity": ppl, "perplexity_change": change[0], "perplexity_low": change[1],
               "perplexity_high": change[2], "specificity": ts["effect"], "specificity_low": ts["ci_low"],
               "specificity_high": ts["ci_high"], "specificity_p_holm": ts["p_holm"]}
        for name, kind in ((reference, "magnitude"), (control, "random")):
            got = versus.get(name)
            test = done[got[0]["id"]] if got else None
            row[f"vs_{kind}_forget_diff"] = test["effect"] if test else None
            row[f"vs_{kind}_low"] = test["ci_low"] if test else None
            row[f"vs_{kind}_high"] = test["ci_high"] if test else None
            row[f"vs_{kind}_p_holm"] = test["p_holm"] if test else None
        row["meets_target"] = bool(removal[0] >= TARGET["removal"] and fall[0] <= TARGET["retain_fall"]
                                   and change[0] <= TARGET["perplexity"])
        row["meets_with_ci"] = bool(removal[1] >= TARGET["removal"] and fall[2] <= TARGET["retain_fall"]
                                    and change[2] <= TARGET["perplexity"])
        rows.append(row)
    table = pl.DataFrame(rows, infer_schema_length=None)
    return Result(table, pl.DataFrame(layers, infer_schema_length=None), frame, verdict(table, reference))


def _pct(x) -> str:
    return "n/a" if x is None or x != x else f"{100 * x + 0.0:.1f}%"  # + 0.0: no "-0.0%"


def verdict(table: pl.DataFrame, reference: str | None) -> list[str]:
    """Sentences computed from the table: which variant meets the target (and whether its CIs do), else the closest."""
    if table.height == 0:
        return []
    t = TARGET
    goal = (f"the target (>= {100 * t['removal']:.0f}% of the forget set's extraction removed, the retain set's "
            f"extraction down <= {100 * t['retain_fall']:.0f}% of its dense value, perplexity <= "
            f"+{100 * t['perplexity']:.0f}%)")
    real = table.filter(~pl.col("method").map_elements(lambda m: describe(m).family == "control",
                                                       return_dtype=pl.Boolean))
    met = real.filter(pl.col("meets_target")).sort("perplexity_change")
    out = []

    def describe_row(r) -> str:
        return (f"{r['method']} at {r['level']:g} ({r['units']} units, {_pct(r['unit_share'])}): removal "
                f"{_pct(r['removal'])} (95% CI {_pct(r['removal_low'])}–{_pct(r['removal_high'])}), retain fall "
                f"{_pct(r['retain_fall'])} ({_pct(r['retain_fall_low'])}–{_pct(r['retain_fall_high'])}), "
                f"perplexity {100 * r['perplexity_change']:+.1f}% ({100 * r['perplexity_low']:+.1f}% to "
                f"{100 * r['perplexity_high']:+.1f}%), specificity {100 * r['specificity']:+.1f} points "
                f"({100 * r['specificity_low']:+.1f} to {100 * r['specificity_high']:+.1f})")

    if met.height:
        r = met.row(0, named=True)
        ci = ("and its 95% CIs lie inside it too" if r["meets_with_ci"] else
              "on point estimates; its 95% CIs do not exclude missing it (small sets)")
        out.append(f"Targeted pruning meets {goal}: {describe_row(r)}, {ci}. "
                   f"{met.height} of {real.height} targeted variants meet it.")
    elif real.height:
        best = real.with_columns(gap=(pl.col("removal") - t["removal"]).clip(upper_bound=0).abs()
                                 + (pl.col("retain_fall") - t["retain_fall"]).clip(lower_bound=0)
                                 + (pl.col("perplexity_change") - t["perplexity"]).clip(lower_bound=0)).sort("gap")
        r = best.row(0, named=True)
        out.append(f"No targeted variant meets {goal}; the closest is {describe_row(r)}.")
    if reference and real.height and "vs_magnitude_forget_diff" in real.columns:
        tested = real.filter(pl.col("vs_magnitude_p_holm").is_not_null())
        better = tested.filter((pl.col("vs_magnitude_p_holm") < 0.05) & (pl.col("vs_magnitude_forget_diff") < 0))
        worse = tested.filter((pl.col("vs_magnitude_p_holm") < 0.05) & (pl.col("vs_magnitude_forget_diff") > 0))
        out.append(f"Against {reference} magnitude pruning at the same perplexity (interpolated), "
                   f"{better.height} of {tested.height} targeted variants extract less of the forget set and "
                   f"{worse.height} more (paired bootstrap, Holm p < 0.05); "
                   f"{real.height - tested.height} lie outside the perplexities its curve spans.")
    return out
