"""Paired comparisons between variants, the findings sentences built on them, and the paper's claims tested.

Every variant of a model is scored on the same members, non-members and perplexity documents, so
every comparison here is paired (``prunemem.evaluate.stats``): exact McNemar with Newcombe's
interval on per-member extraction, a paired bootstrap over documents on perplexity, a stratified
paired bootstrap on membership AUCs, and a paired bootstrap over members between rates
interpolated at a matched perplexity. All p-values of one model form one Holm family
(``reports/comparisons.csv``); a verdict word is used only with its effect, CI and Holm p, and
"no detectable difference" is a verdict too.

Methods are compared at matched achieved sparsity or matched perplexity, never at a nominal level,
except where a claim of the paper is itself about equal levels (said so in its row).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from prunemem.evaluate import stats
from prunemem.evaluate.mia import SCORES
from prunemem.plan import DENSE
from prunemem.prune.registry import describe, order

ALPHA = 0.05
RESAMPLES = 1000
SEED = 0
BUDGETS = (0.01, 0.05, 0.10, 0.25)  # perplexity increases over dense at which methods are matched
PRIMARY_BUDGET = 0.05
MIN_DOCUMENTS = 20  # below this a bootstrap over documents is too coarse to lean on (flagged in the note)
GROUPS = ("paper strategies", "state of the art", "structured / search", "targeted forgetting",
          "quantization and low-rank", "controls")


@dataclass(frozen=True)
class Traits:
    group: str  # one of GROUPS, or "dense": the report's section and chart panel
    structure: str  # none, unstructured, subset, N:M, blocks, quantization, low-rank (the registry's)
    control: bool = False


def traits(method: str) -> Traits:
    """The report's view of a method, read from the method registry (``prunemem.prune.registry``).

    The group refines the registry's family for the page: the paper's own strategies, the
    state-of-the-art pruners, those that remove whole units, quantization and low-rank, controls.
    """
    m = describe(method)
    if m.family == DENSE:
        return Traits(DENSE, m.structure)
    if m.family == "control":
        return Traits("controls", m.structure, control=True)
    if m.kind == "transform":
        return Traits("quantization and low-rank", m.structure)
    if m.removes_units or m.width:
        return Traits("structured / search", m.structure)
    if m.forgets:
        return Traits("targeted forgetting", m.structure)
    return Traits("paper strategies" if m.paper else "state of the art", m.structure)


def group(method: str) -> str:
    return traits(method).group


def paper_strategies(methods) -> list[str]:
    """The paper's own strategies among ``methods``, in registry order."""
    return sorted((m for m in methods if describe(m).paper), key=order)


@dataclass
class ModelSamples:
    """Per-sample outcomes of every variant of one model, row-aligned on the same samples."""

    kinds: np.ndarray  # member kind (canary / train), aligned with ``extracted`` rows
    copies: np.ndarray
    extracted: dict[tuple[str, float], dict[int, np.ndarray]]  # (method, level) -> k -> bool per member
    member: np.ndarray | None = None  # MIA rows: True for members
    mia: dict[tuple[str, float], dict[str, np.ndarray]] = field(default_factory=dict)
    documents: dict[tuple[str, float], np.ndarray] = field(default_factory=dict)  # (docs, 2) [NLL, tokens]
    ids: np.ndarray | None = None  # the members' sample ids, aligned with ``extracted`` rows


def load_samples(plan, model: str) -> ModelSamples:
    """Read every variant's memorization, membership and perplexity-window files for ``model``."""
    from prunemem.provenance import read_parquet

    out = None
    for method, level in plan.variants(model):
        d = plan.metrics_dir(model, method, level)
        mem = read_parquet(d / "memorization.parquet", "per-sample results").filter(pl.col("member")).sort(
            "sample_id", "k")
        key = (method, float(level))
        first_k = mem.filter(pl.col("k") == mem["k"].min())
        if out is None:
            out = ModelSamples(kinds=first_k["kind"].to_numpy(), copies=first_k["copies"].to_numpy(), extracted={},
                               ids=first_k["sample_id"].to_numpy())
        out.extracted[key] = {int(k): g.sort("sample_id")["extracted"].to_numpy().astype(bool)
                              for (k,), g in mem.group_by("k")}
        mia = read_parquet(d / "mia.parquet", "membership scores").sort("sample_id")
        out.member = mia["member"].to_numpy().astype(bool)
        out.mia[key] = {s: mia[s].to_numpy().astype(float) for s in SCORES}
        windows = d / "perplexity_windows.parquet"
        if windows.is_file():  # absent in evaluations made before it was written: perplexity then goes untested
            docs = read_parquet(windows, "perplexity windows").group_by("document").agg(
                pl.col("nll").sum(), pl.col("tokens").sum()).sort("document")
            out.documents[key] = np.c_[docs["nll"].to_numpy(), docs["tokens"].to_numpy().astype(float)]
    return out


def verdict(effect: float, p_holm: float, lower: str, higher: str) -> str:
    """The verdict word a test allows: a direction only when the Holm-corrected p is below ALPHA."""
    if p_holm < ALPHA:
        return lower if effect < 0 else higher
    return "no detectable difference"


def _label(method: str, level: float) -> str:
    return method if method == DENSE else f"{method}@{level:g}"


class Comparisons:
    """Collects paired tests for one model, then Holm-corrects them as one family."""

    def __init__(self, model: str, samples: ModelSamples, rows: pl.DataFrame, k: int):
        self.model, self.s, self.k = model, samples, k
        self.rows = rows  # results.csv rows of this model at k
        self.tests: list[dict] = []
        self._curves: dict[str, list] = {}

    def _add(self, test_id: str, a: str, b: str, metric: str, test: str, n: int, effect: float, low: float,
             high: float, p: float, unit: str, note: str = "") -> dict:
        for seen in self.tests:  # a comparison two findings rest on is one test, counted once by Holm
            if seen["id"] == test_id:
                return seen
        row = {"model": self.model, "id": test_id, "a": a, "b": b, "metric": metric, "test": test, "n": n,
               "effect": effect, "ci_low": low, "ci_high": high, "unit": unit, "p": p, "p_holm": float("nan"),
               "verdict": "", "note": note}
        self.tests.append(row)
        return row

    # -- the tests -------------------------------------------------------------------------
    def extraction(self, a: tuple[str, float], b: tuple[str, float], k: int | None = None, test_id: str = "") -> dict:
        """Rate(A) - rate(B) at k: exact McNemar p, Newcombe paired 95% CI."""
        k = k or self.k
        x, y = self.s.extracted[a][k], self.s.extracted[b][k]
        diff, low, high = stats.paired_rate_difference(x, y)
        p = stats.mcnemar_exact(int((x & ~y).sum()), int((~x & y).sum()))
        note = "nothing extracted by either" if not (x.any() or y.any()) else ""
        return self._add(test_id or f"extraction k={k}: {_label(*a)} vs {_label(*b)}", _label(*a), _label(*b),
                         f"extraction k={k}", "exact McNemar; Newcombe paired CI", x.size, diff, low, high, p,
                         "rate", note)

    def perplexity(self, a: tuple[str, float], b: tuple[str, float], test_id: str = "") -> dict | None:
        """Relative perplexity change of A over B, paired bootstrap over documents (None when not recorded)."""
        if a not in self.s.documents or b not in self.s.documents:
            return None
        da, db = self.s.documents[a], self.s.documents[b]
        change, low, high, p = stats.paired_perplexity_change(da, db, RESAMPLES, SEED)
        few = f"only {da.shape[0]} documents: the bootstrap is coarse" if da.shape[0] < MIN_DOCUMENTS else ""
        return self._add(test_id or f"perplexity: {_label(*a)} vs {_label(*b)}", _label(*a), _label(*b),
                         "perplexity", "paired bootstrap over documents", da.shape[0], change, low, high, p,
                         "relative", few)

    def auc(self, a: tuple[str, float], b: tuple[str, float], score: str, test_id: str = "") -> dict:
        diff, low, high, p = stats.paired_auc_difference(self.s.mia[a][score], self.s.mia[b][score], self.s.member,
                                                         RESAMPLES, SEED)
        return self._add(test_id or f"MIA {score}: {_label(*a)} vs {_label(*b)}", _label(*a), _label(*b),
                         f"mia_{score}_auc", "stratified paired bootstrap", int(self.s.member.size), diff, low,
                         high, p, "AUC")

    def matched(self, a: str, b: str, target: float, budget: float, test_id: str = "") -> dict | None:
        """Extraction of methods A and B interpolated to the same perplexity ``target``; paired bootstrap."""
        wa, wb = self.at_perplexity(a, target), self.at_perplexity(b, target)
        if wa is None or wb is None:
            return None
        x, y = self.mixed(wa), self.mixed(wb)
        diff, low, high, p = stats.paired_rate_bootstrap(x, y, RESAMPLES, SEED)
        note = "nothing extracted by either" if not (x.any() or y.any()) else ""
        return self._add(test_id or f"matched +{100 * budget:g}% ppl: {a} vs {b}", f"{a} (interpolated)",
                         f"{b} (interpolated)", f"extraction k={self.k} at +{100 * budget:g}% perplexity",
                         "paired bootstrap over members", x.size, diff, low, high, p, "rate", note)

    # -- matched perplexity ------------------------------------------------------------------
    def curve(self, method: str) -> list[tuple[tuple[str, float], float]]:
        """(variant, perplexity) along a method in level order, starting at the dense model."""
        if method not in self._curves:
            self._curves[method] = self._curve(method)
        return self._curves[method]

    def _curve(self, method: str) -> list[tuple[tuple[str, float], float]]:
        dense = self.rows.filter(pl.col("method") == DENSE)
        own = self.rows.filter(pl.col("method") == method).sort("level")
        start = [((DENSE, 0.0), float(dense["perplexity"][0]))] if dense.height and method != DENSE else []
        return start + [((method, lv), p) for lv, p in zip(own["level"].to_list(), own["perplexity"].to_list())]

    def at_perplexity(self, method: str, target: float) -> list[tuple[tuple[str, float], float]] | None:
        """Weights over a method's variants (dense first) that reach perplexity ``target``; None if none does."""
        return interpolation_weights(self.curve(method), target)

    def mixed(self, weights) -> np.ndarray:
        return sum(w * self.s.extracted[v][self.k].astype(float) for v, w in weights)

    def interpolated_rate(self, method: str, target: float) -> tuple[float, float, float] | None:
        """(rate, low, high) at ``target`` perplexity: the two levels' rates and Wilson bounds interpolated
        (the bounds' mix is conservative for neighbouring levels, whose outcomes are positively correlated)."""
        weights = self.at_perplexity(method, target)
        if weights is None:
            return None
        rate = low = high = 0.0
        for v, w in weights:
            x = self.s.extracted[v][self.k]
            lo, hi = stats.wilson(int(x.sum()), x.size)
            rate, low, high = rate + w * x.mean(), low + w * lo, high + w * hi
        return rate, low, high

    def finish(self) -> pl.DataFrame:
        adjusted = stats.holm([t["p"] for t in self.tests]) if self.tests else []
        for t, p in zip(self.tests, adjusted):
            t["p_holm"] = p
            t["verdict"] = verdict(t["effect"], p, "lower", "higher")
        return pl.DataFrame([{k: t[k] for k in COMPARISON_SCHEMA} for t in self.tests], schema=COMPARISON_SCHEMA)


COMPARISON_SCHEMA = {"model": pl.String, "id": pl.String, "a": pl.String, "b": pl.String, "metric": pl.String,
                     "test": pl.String, "n": pl.Int64, "effect": pl.Float64, "ci_low": pl.Float64,
                     "ci_high": pl.Float64, "unit": pl.String, "p": pl.Float64, "p_holm": pl.Float64,
                     "verdict": pl.String, "note": pl.String}
CLAIM_SCHEMA = {"model": pl.String, "claim": pl.String, "status": pl.String, "test": pl.String,
                "effect": pl.String, "ci": pl.String, "p_holm": pl.String, "evidence": pl.String,
                "paper": pl.String}


def interpolation_weights(points: list[tuple[object, float]], target: float) -> list[tuple[object, float]] | None:
    """Linear interpolation in perplexity along a method's curve: ``points`` are (key, perplexity) in
    level order, dense first. Returns [(key, weight)] of the first segment that brackets ``target``,
    or None when no segment does (the method never costs that much, or always costs more)."""
    for (k0, p0), (k1, p1) in zip(points, points[1:]):
        if min(p0, p1) <= target <= max(p0, p1):
            w = 0.0 if p1 == p0 else (target - p0) / (p1 - p0)
            return [(k0, 1 - w), (k1, w)]
    return None


def matched_perplexity(results: pl.DataFrame, k: int, budgets=BUDGETS) -> pl.DataFrame:
    """Per model, method and perplexity budget over dense: extraction at k interpolated between the two
    levels whose perplexities bracket dense x (1 + budget), with the levels' Wilson bounds interpolated
    alike (a conservative band, as neighbouring levels' outcomes are positively correlated).
    Null where the method's levels never reach the budget. Needs only results.csv."""
    at_k = results.filter(pl.col("k") == k)
    rows = []
    for model in at_k["model"].unique(maintain_order=True):
        mine = at_k.filter(pl.col("model") == model)
        dense = mine.filter(pl.col("method") == DENSE)
        if dense.height == 0:
            continue
        d = dense.row(0, named=True)
        for method in mine["method"].unique(maintain_order=True):
            if method == DENSE:
                continue
            own = mine.filter(pl.col("method") == method).sort("level").to_dicts()
            points = [(d, d["perplexity"])] + [(r, r["perplexity"]) for r in own]
            row = {"model": model, "family": group(method), "method": method}
            for budget in budgets:
                w = interpolation_weights(points, d["perplexity"] * (1 + budget))
                for stat in ("extraction_rate", "ci_low", "ci_high"):
                    row[f"{stat} +{100 * budget:g}%"] = (sum(wt * r[stat] for r, wt in w) if w else None)
                row[f"levels +{100 * budget:g}%"] = ("–".join(f"{r['level']:g}" if r["method"] != DENSE else "dense"
                                                             for r, wt in w) if w else None)
            rows.append(row)
    return pl.DataFrame(rows, infer_schema_length=None)


_UNITS = {"rate": (100, "", " points"), "relative": (100, "%", "")}  # scale, after each number, after all
_PLAIN = (1, "", "")  # AUC units


def _number(x: float, unit: str) -> str:
    scale, each, _ = _UNITS.get(unit, _PLAIN)
    return f"{scale * x:+.1f}{each}" if unit in _UNITS else f"{x:+.3f}"


def fmt_effect(t: dict) -> str:
    """An effect with its unit: points for rates, % for relative changes, AUC units."""
    return _number(t["effect"], t["unit"]) + _UNITS.get(t["unit"], _PLAIN)[2]


def fmt_ci(t: dict) -> str:
    return f"{_number(t['ci_low'], t['unit'])} to {_number(t['ci_high'], t['unit'])}{_UNITS.get(t['unit'], _PLAIN)[2]}"


def fmt_p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def holm_p(p: float) -> str:
    """'Holm p = 0.012' or 'Holm p < 0.001'."""
    return "Holm p < 0.001" if p < 0.001 else f"Holm p = {p:.3f}"


def cite(t: dict) -> str:
    """'Δ -2.0 points, 95% CI ..., exact McNemar, Holm p = 0.01' for a finished test row."""
    return f"Δ {fmt_effect(t)}, 95% CI {fmt_ci(t)}; {t['test'].split(';')[0]}, {holm_p(t['p_holm'])}"


def percent(x: float) -> str:
    return f"{100 * x:.1f}%"


def _sentence_verdict(t: dict, lower: str, higher: str) -> str:
    if t["note"] == "nothing extracted by either":
        return "cannot be told apart (nothing extracted by either)"
    return verdict(t["effect"], t["p_holm"], lower, higher)


@dataclass
class Analysis:
    comparisons: pl.DataFrame  # every paired test, Holm-corrected (reports/comparisons.csv)
    findings: list[str]
    claims: list[dict]  # CLAIM_SCHEMA rows (reports/claims.csv)
    search: list[str]  # evop-mem against SLEB and EvoP, tested


def analyse(model: str, samples: ModelSamples | None, results: pl.DataFrame, k: int, ks: list[int],
            paper: pl.DataFrame, paper_name: str, prefix: str = "") -> Analysis:
    """All paired tests of one model (one Holm family), the findings in words, and the paper's claims.

    ``results`` holds results.csv rows of every model; ``samples`` the per-sample outcomes of
    ``model`` (None: only the summary numbers are known, so no sentence states a verdict).
    """
    rows_all = results.filter(pl.col("model") == model)
    at_k = rows_all.filter(pl.col("k") == k)
    has_dense = at_k.filter(pl.col("method") == DENSE).height > 0
    if samples is None or not has_dense:
        why = ("no dense row: every comparison against the unpruned model (Δ vs dense, matched perplexity, "
               "the paper's claims) is missing; evaluate the dense variant (prunemem evaluate --method dense --level 0)"
               if not has_dense else "no per-sample files: paired tests are missing")
        claims = [{"model": model, "claim": c, "status": "inconclusive", "test": "not run", "effect": "", "ci": "",
                   "p_holm": "", "evidence": why, "paper": _paper_value(paper, c)} for c in CLAIMS]
        return Analysis(pl.DataFrame(schema=COMPARISON_SCHEMA), [f"{prefix}{why}."], claims, [])
    c = Comparisons(model, samples, at_k, k)
    dense = (DENSE, 0.0)
    dense_row = at_k.filter(pl.col("method") == DENSE).row(0, named=True)
    variants = [(r["method"], r["level"]) for r in at_k.iter_rows(named=True) if r["method"] != DENSE]
    vs_dense = {v: c.extraction(v, dense) for v in variants}
    ppl_vs_dense = {v: c.perplexity(v, dense) for v in variants}
    methods = list(dict.fromkeys(m for m, _ in variants))
    d_ppl = dense_row["perplexity"]

    # matched perplexity: every method against dense, at every budget it reaches
    matched_rows: dict[float, dict[str, tuple]] = {}
    for budget in BUDGETS:
        target = d_ppl * (1 + budget)
        for m in methods:
            r = c.interpolated_rate(m, target)
            if r is not None:
                matched_rows.setdefault(budget, {})[m] = r
    budget = PRIMARY_BUDGET if len([m for m in matched_rows.get(PRIMARY_BUDGET, {}) if not traits(m).control]) \
        else next((b for b in BUDGETS if any(not traits(m).control for m in matched_rows.get(b, {}))), None)
    best_test = control_test = None
    if budget is not None:
        target = d_ppl * (1 + budget)
        reach = matched_rows[budget]
        real = sorted((m for m in reach if not traits(m).control), key=lambda m: reach[m][0])
        controls = sorted((m for m in reach if traits(m).control), key=lambda m: reach[m][0])
        if real:
            best = real[0]
            weights = c.at_perplexity(best, target)
            x = c.mixed(weights)
            diff, low, high, p = stats.paired_rate_bootstrap(x, samples.extracted[dense][k].astype(float),
                                                             RESAMPLES, SEED)
            best_test = c._add(f"matched +{100 * budget:g}% ppl: {best} vs dense", f"{best} (interpolated)", DENSE,
                               f"extraction k={k} at +{100 * budget:g}% perplexity", "paired bootstrap over members",
                               x.size, diff, low, high, p, "rate",
                               "nothing extracted by either" if not (x.any() or samples.extracted[dense][k].any())
                               else "")
            best_test["_method"] = best
            if controls and reach[controls[0]][0] < reach[best][0]:
                control_test = c.matched(controls[0], best, target, budget)
                if control_test is not None:
                    control_test["_methods"] = (controls[0], best, [reach[m][0] for m in controls])

    # matched achieved sparsity: unstructured methods that remove the same share of weights
    same_sparsity = None
    unstructured = at_k.filter(pl.col("method").map_elements(lambda m: traits(m).structure == "unstructured"
                                                             and not traits(m).control, return_dtype=pl.Boolean))
    for level in sorted(unstructured["level"].unique().to_list(), reverse=True):
        group = unstructured.filter(pl.col("level") == level)
        group = group.filter((pl.col("achieved_sparsity") - group["achieved_sparsity"].median()).abs() < 0.005)
        if group.height >= 2:
            lo_r, hi_r = group.sort("extraction_rate", "perplexity").row(0, named=True), \
                group.sort("extraction_rate", "perplexity").row(-1, named=True)
            if lo_r["method"] != hi_r["method"]:
                same_sparsity = (c.extraction((lo_r["method"], level), (hi_r["method"], level)),
                                 c.perplexity((lo_r["method"], level), (hi_r["method"], level)), lo_r)
                break

    # membership signal where extraction vanishes
    best_score = max(SCORES, key=lambda s: dense_row[f"mia_{s}_auc"])
    silent = [v for v in variants if not traits(v[0]).control and not samples.extracted[v][k].any()
              and v in samples.mia]
    mia_test = None
    if silent and samples.extracted[dense][k].any():
        quiet = min(silent, key=lambda v: at_k.filter((pl.col("method") == v[0]) & (pl.col("level") == v[1]))
                    ["perplexity"][0])
        mia_test = c.auc(quiet, dense, best_score)
        mia_test["_variant"] = quiet

    structured = []
    # the memorization-aware search against the other unit-removing methods (SLEB, plain EvoP)
    names = sorted({m for m, _ in variants}, key=order)
    aware = [m for m in names if describe(m).search_split]
    others = [m for m in names if describe(m).removes_units and not describe(m).search_split
              and describe(m).twin_of is None]
    for name in aware:
        mine = {lv for m, lv in variants if m == name}
        for other in others:
            for lv in sorted(mine & {l for m, l in variants if m == other}):
                structured.append((c.extraction((name, lv), (other, lv)), c.perplexity((name, lv), (other, lv))))
    matched_params = _matched_parameter_tests(c, at_k, variants)
    claim_tests = _claims(c, at_k, rows_all, ks, paper, paper_name)
    frame = c.finish()
    def pair_line(lead: str, t: dict, tp: dict | None) -> str:
        ppl = (f"; perplexity {fmt_effect(tp)} (95% CI {fmt_ci(tp)}, {holm_p(tp['p_holm'])}: "
               f"{_sentence_verdict(tp, 'lower', 'higher')})" if tp is not None else "")
        return (f"{prefix}{lead}{t['a']} vs {t['b']}: extraction at k={k} {cite(t)}: "
                f"{_sentence_verdict(t, 'lower', 'higher')}{ppl}.")

    search_lines = [pair_line("", t, tp) for t, tp in structured]
    search_lines += [pair_line(f"At matched parameter count ({percent(removed)} of the prunable weights removed), ", t, tp)
                     for removed, pairs in matched_params for t, tp in pairs]

    # -- findings, in words, after Holm ----------------------------------------------------
    lines = []
    if control_test is not None:
        ctrl, best, spread = control_test["_methods"]
        seeds = (f" (across {len(spread)} seeds: {', '.join(percent(v) for v in spread)})"
                 if len(spread) > 1 else "")
        lines.append(
            f"Sanity flag: the random control extracts less than every pruning method at +{100 * budget:g}% "
            f"perplexity: {ctrl} vs {best}, the best method ({cite(control_test)}; "
            f"{_sentence_verdict(control_test, 'lower', 'higher')}){seeds}. Likely cause: this model's memorization "
            "is fragile, so any perturbation of the weights erases it before perplexity moves; extraction here "
            "measures that fragility, not what a pruning criterion removes.")
    x_dense = samples.extracted[dense][k]
    n, hits = x_dense.size, int(x_dense.sum())
    lo, hi = stats.wilson(hits, n)
    where = ""
    if hits:
        canary = samples.kinds == "canary"
        if (samples.kinds[x_dense] == "canary").all():
            min_copies = int(samples.copies[x_dense].min())
            where = (f" Every extracted member is a canary planted at least {min_copies} "
                     f"time{'s' if min_copies != 1 else ''}; ordinary training "
                     f"members: 0 of {int((~canary).sum())} extracted.")
        else:
            where = (f" {int((x_dense & canary).sum())} are canaries and {int((x_dense & ~canary).sum())} ordinary "
                     f"training members (of {int((~canary).sum())}).")
    lines.append(f"The dense model extracts {percent(hits / n)} of {n} members at k={k} (95% Wilson CI "
                 f"{percent(lo)}–{percent(hi)}), perplexity {d_ppl:.2f}.{where}")
    untestable = [kk for kk in ks if kk in samples.extracted[dense] and not samples.extracted[dense][kk].any()]
    if untestable:
        lines.append(f"Nothing is extracted by the dense model at k = {', '.join(map(str, untestable))}: shorter "
                     "prefixes cannot be tested on this model, and the claims about those k are inconclusive.")
    if best_test is not None:
        b = best_test["_method"]
        rate = matched_rows[budget][b]
        lines.append(f"At matched perplexity (+{100 * budget:g}% over dense, interpolated between levels) "
                     f"{b} extracts the least of the methods: {percent(rate[0])} (95% CI {percent(rate[1])}–"
                     f"{percent(rate[2])}) vs {percent(hits / n)} dense ({cite(best_test)}; "
                     f"{_sentence_verdict(best_test, 'lower than dense', 'higher than dense')}).")
    if same_sparsity is not None:
        t, tp, r = same_sparsity
        ppl_part = (f"; perplexity {fmt_effect(tp)} (95% CI {fmt_ci(tp)}, {holm_p(tp['p_holm'])})"
                    if tp is not None else "")
        lines.append(f"At the same achieved sparsity ({percent(r['achieved_sparsity'])}), {t['a']} vs {t['b']}: "
                     f"{cite(t)}; {_sentence_verdict(t, 'lower', 'higher')}{ppl_part}.")
    if mia_test is not None:
        v = mia_test["_variant"]
        row = at_k.filter((pl.col("method") == v[0]) & (pl.col("level") == v[1])).row(0, named=True)
        lines.append(f"Membership signal survives where extraction vanishes: {_label(*v)} extracts nothing at k={k}, "
                     f"yet its {best_score} AUC is {row[f'mia_{best_score}_auc']:.2f} vs "
                     f"{dense_row[f'mia_{best_score}_auc']:.2f} dense ({cite(mia_test)}; "
                     f"{_sentence_verdict(mia_test, 'lower', 'higher')}).")
    claims = [finish() for finish in claim_tests]
    counts = {s: sum(cl["status"] == s for cl in claims) for s in ("confirmed", "refuted", "inconclusive")}
    lines.append(f"Of the paper's {len(claims)} claims tested here, {counts['confirmed']} are confirmed, "
                 f"{counts['refuted']} refuted and {counts['inconclusive']} inconclusive on this model "
                 "(reports/claims.csv).")
    for cl in claims:
        cl["model"] = model
    return Analysis(frame, [prefix + s for s in lines], claims, search_lines)


# the paper's own claims name its strategies, so the tests of them do too (the one place the report
# spells a method: these are the claims' subjects, not traits)
CLAIMS = ("global pruning extracts less than layerwise",
          "attention-only removes the most memorization, at the highest perplexity",
          "last-25% is a better trade-off than attention-only",
          "memorization falls with sparsity at every k",
          "larger k extracts more")
# which bundled rows of the paper's values stand beside each claim (method filter; every metric shown)
_EXT, _BOTH = ("extraction_rate",), ("extraction_rate", "perplexity")
_PAPER_ROWS = {CLAIMS[0]: (("global", "layerwise"), _EXT), CLAIMS[1]: (("attention", "dense", "global", "last25"), _BOTH),
               CLAIMS[2]: (("attention", "last25"), _BOTH), CLAIMS[3]: (("dense", "global"), _EXT),
               CLAIMS[4]: ((), _EXT)}


def _paper_value(paper: pl.DataFrame, claim: str) -> str:
    """The paper's own numbers for a claim, from the bundled values (``tables.paper_values``)."""
    methods, metrics = _PAPER_ROWS[claim]
    chosen = paper.filter(pl.col("method").is_in(list(methods)) & pl.col("metric").is_in(list(metrics)))
    if chosen.height == 0:
        return "stated in the paper; no value bundled"
    parts = []
    for r in chosen.iter_rows(named=True):
        value = f"{100 * float(r['value']):.2f}%" if r["metric"] == "extraction_rate" else f"ppl {float(r['value']):.2f}"
        parts.append(f"{r['model']} {r['method']} {value}")
    return "; ".join(dict.fromkeys(parts))


def _matched_parameter_tests(c: Comparisons, at_k: pl.DataFrame, variants) -> list[tuple[float, list]]:
    """Structured variants (width, blocks, sublayers) that remove the same share of prunable weights.

    Levels mean different things across these methods (a share of MLP neurons, of blocks, of
    sublayers), so they are grouped by the achieved share (within half a point). In each group
    the trial-searched method (AdaPruner) is the reference, else the lowest-perplexity variant;
    every other method in the group is tested against it (exact McNemar on extraction, paired
    bootstrap on perplexity). Returns ``[(removed share, [(extraction test, perplexity test)])]``.
    """
    removed = {(r["method"], r["level"]): r["achieved_sparsity"] for r in at_k.iter_rows(named=True)
               if (r["method"], r["level"]) in variants and not traits(r["method"]).control
               and (describe(r["method"]).width or describe(r["method"]).removes_units)}
    ppl = {(r["method"], r["level"]): r["perplexity"] for r in at_k.iter_rows(named=True)}
    out, seen = [], set()
    for v in sorted(removed, key=lambda v: (removed[v], order(v[0]), v[1])):
        if v in seen:
            continue
        group = [w for w in sorted(removed, key=lambda w: (order(w[0]), w[1]))
                 if w not in seen and abs(removed[w] - removed[v]) < 0.005]
        seen.update(group)
        by_method = {}
        for w in group:  # one variant per method: the lowest level reaching this share
            by_method.setdefault(w[0], w)
        if len(by_method) < 2:
            continue
        searched = [w for m, w in by_method.items() if describe(m).trial_search]
        ref = searched[0] if searched else min(by_method.values(), key=lambda w: (ppl[w], order(w[0])))
        pairs = [(c.extraction(ref, w), c.perplexity(ref, w)) for w in by_method.values() if w != ref]
        out.append((float(np.mean([removed[w] for w in by_method.values()])), pairs))
    return out


def _claims(c: Comparisons, at_k: pl.DataFrame, rows_all: pl.DataFrame, ks: list[int], paper: pl.DataFrame,
            paper_name: str) -> list:
    """Run each claim's tests now; return closures that state the claim's status once Holm has run."""
    k, dense = c.k, (DENSE, 0.0)
    levels = {m: sorted(at_k.filter(pl.col("method") == m)["level"].to_list()) for m in at_k["method"].unique()}
    achieved = {(r["method"], r["level"]): r["achieved_sparsity"] for r in at_k.iter_rows(named=True)}
    out = []

    def row(claim, status, test, t=None, evidence="", effect=None, ci=None):
        return {"model": c.model, "claim": claim, "status": status, "test": test,
                "effect": effect if effect is not None else (fmt_effect(t) if t else ""),
                "ci": ci if ci is not None else (fmt_ci(t) if t else ""),
                "p_holm": fmt_p(t["p_holm"]) if t else "", "evidence": evidence,
                "paper": _paper_value(paper, claim)}

    def status_of(tests_lower_is_confirmed: list[dict], want: str) -> str:
        verdicts = [_sentence_verdict(t, "lower", "higher") for t in tests_lower_is_confirmed]
        if verdicts and all(v == want for v in verdicts):
            return "confirmed"
        if any(v in ("lower", "higher") and v != want for v in verdicts):
            return "refuted"
        return "inconclusive"

    # 1. global < layerwise, at equal achieved sparsity (both prune every matrix to the level)
    common = sorted(set(levels.get("global", [])) & set(levels.get("layerwise", [])))
    if common:
        lv = common[-1]
        t = c.extraction(("global", lv), ("layerwise", lv))
        out.append(lambda t=t, lv=lv: row(
            CLAIMS[0], status_of([t], "lower"), f"exact McNemar, global vs layerwise at level {lv:g} (both "
            f"{percent(achieved[('global', lv)])} achieved sparsity), k={k}", t,
            f"{t['a']} vs {t['b']}: {_sentence_verdict(t, 'lower', 'higher')}"))
    else:
        out.append(lambda: row(CLAIMS[0], "inconclusive", "not run: global and layerwise need a common level",
                               evidence="run both methods (prune.methods)"))

    # 2. attention-only: lowest extraction and highest perplexity among the paper's strategies
    others = [m for m in paper_strategies(levels) if m != "attention"]
    shared = sorted(set(levels.get("attention", [])).intersection(*[set(levels[m]) for m in others])) if others else []
    if "attention" in levels and shared:
        lv = shared[-1]
        ext = [c.extraction(("attention", lv), (m, lv)) for m in others]
        ppl = [c.perplexity(("attention", lv), (m, lv)) for m in others]

        def claim2(ext=ext, ppl=ppl, lv=lv):
            ext_status = status_of(ext, "lower")
            ppl_tests = [t for t in ppl if t is not None]
            ppl_status = status_of(ppl_tests, "higher") if ppl_tests else "inconclusive"
            status = ("confirmed" if ext_status == ppl_status == "confirmed" else
                      "refuted" if "refuted" in (ext_status, ppl_status) else "inconclusive")
            runner = min(ext, key=lambda t: abs(t["effect"]))
            sparsity = ", ".join(f"{m} {percent(achieved[(m, lv)])}" for m in ["attention", *others])
            return row(CLAIMS[1], status, f"exact McNemar (extraction, k={k}) and paired bootstrap over documents "
                       f"(perplexity), attention vs {', '.join(others)} at level {lv:g}: the paper's framing, equal "
                       f"level, so achieved sparsity differs ({sparsity})", runner,
                       f"extraction: {ext_status}; perplexity: {ppl_status}"
                       + ("" if ppl_tests else " (no per-document perplexity recorded)"))
        out.append(claim2)
    else:
        out.append(lambda: row(CLAIMS[1], "inconclusive", "not run: attention and another paper strategy at a "
                               "common level are needed"))

    # 3. last25 vs attention at matched perplexity: the highest perplexity both reach
    if "last25" in levels and "attention" in levels:
        d_ppl = c.curve("attention")[0][1]
        target = min(max(p for _, p in c.curve("last25")), max(p for _, p in c.curve("attention")))
        t = c.matched("last25", "attention", target, target / d_ppl - 1) if target > d_ppl else None
        if t is not None:
            out.append(lambda t=t, target=target: row(
                CLAIMS[2], status_of([t], "lower"), f"paired bootstrap over members, extraction at k={k} interpolated "
                f"to the same perplexity {target:.2f} (+{100 * (target / d_ppl - 1):.1f}% over dense)", t,
                f"last25 vs attention at matched perplexity: {_sentence_verdict(t, 'lower', 'higher')}"))
        else:
            out.append(lambda: row(CLAIMS[2], "inconclusive", "not run: the two curves share no perplexity above dense"))
    else:
        out.append(lambda: row(CLAIMS[2], "inconclusive", "not run: needs last25 and attention"))

    # 4. memorization falls with sparsity at every k: each paper strategy's highest level vs dense
    strategies = paper_strategies(levels)
    testable = [kk for kk in ks if c.s.extracted[dense].get(kk) is not None and c.s.extracted[dense][kk].any()]
    tests4 = [c.extraction((m, levels[m][-1]), dense, kk) for m in strategies for kk in testable]
    if tests4:
        def claim4(tests4=tests4):
            weakest = max(tests4, key=lambda t: t["effect"])
            skipped = sorted(set(ks) - set(testable))
            return row(CLAIMS[3], status_of(tests4, "lower"), f"exact McNemar, each paper strategy's highest level "
                       f"vs dense at k = {', '.join(map(str, testable))} ({len(tests4)} tests); the row shows the "
                       "weakest reduction", weakest,
                       f"{sum(_sentence_verdict(t, 'lower', 'higher') == 'lower' for t in tests4)} of {len(tests4)} "
                       "lower than dense" + (f"; k = {', '.join(map(str, skipped))} untestable (dense extracts "
                                             "nothing)" if skipped else ""))
        out.append(claim4)
    else:
        out.append(lambda: row(CLAIMS[3], "inconclusive", "not run: no paper strategy, or dense extracts nothing"))

    # 5. larger k extracts more: the dense model at its largest vs smallest k, on the same members
    if len(ks) > 1:
        x_hi, x_lo = c.s.extracted[dense][max(ks)], c.s.extracted[dense][min(ks)]
        diff, low, high = stats.paired_rate_difference(x_hi, x_lo)
        p = stats.mcnemar_exact(int((x_hi & ~x_lo).sum()), int((~x_hi & x_lo).sum()))
        t = c._add(f"dense: k={max(ks)} vs k={min(ks)}", f"dense k={max(ks)}", f"dense k={min(ks)}", "extraction",
                   "exact McNemar; Newcombe paired CI", x_hi.size, diff, low, high, p, "rate",
                   "nothing extracted by either" if not (x_hi.any() or x_lo.any()) else "")
        out.append(lambda t=t: row(CLAIMS[4], status_of([t], "higher"), f"exact McNemar, dense model at k={max(ks)} "
                                   f"vs k={min(ks)} on the same members", t,
                                   f"k={max(ks)} vs k={min(ks)}: {_sentence_verdict(t, 'lower', 'higher')}"))
    else:
        out.append(lambda: row(CLAIMS[4], "inconclusive", "not run: one k only"))
    return out
