"""Assemble ``reports/results.csv`` and the offline ``reports/report.html``."""

from __future__ import annotations

import html
import logging

import polars as pl

from prunemem.evaluate.mia import SCORES
from prunemem.plan import DENSE, REPORT_FILES, Plan
from prunemem.provenance import atomic_path, environment, record, sha256_file, write_json
from prunemem.report import charts, redaction, tables
from prunemem.report.tables import percent

log = logging.getLogger(__name__)

_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,td:nth-child(2){text-align:left}code{font-size:12px}.note{color:#555;font-size:13px}"""


def headlines(results: pl.DataFrame, dup: pl.DataFrame, k: int) -> list[str]:
    """Findings computed from the data: baseline, the strongest reduction, its perplexity cost."""
    lines = []
    at_k = results.filter(pl.col("k") == k)
    for model in at_k["model"].unique(maintain_order=True):
        rows = at_k.filter(pl.col("model") == model)
        dense = rows.filter(pl.col("method") == DENSE).row(0, named=True)
        lines.append(f"{model}: the dense model extracts {percent(dense['extraction_rate'])} of members at k={k} "
                     f"(95% CI {percent(dense['ci_low'])}–{percent(dense['ci_high'])}), perplexity {dense['perplexity']:.2f}.")
        best_score = max(SCORES, key=lambda score: dense[f"mia_{score}_auc"])
        lines.append(f"{model}: the strongest membership signal on the dense model is {best_score} with AUC "
                     f"{dense[f'mia_{best_score}_auc']:.2f} (95% CI {dense[f'mia_{best_score}_auc_low']:.2f}–"
                     f"{dense[f'mia_{best_score}_auc_high']:.2f}), TPR {percent(dense[f'mia_{best_score}_tpr_1pct'])} "
                     "at 1% FPR.")
        top = dup.filter((pl.col("model") == model) & (pl.col("variant") == f"{DENSE} 0")).sort("copies").tail(1)
        if top.height:
            t = top.row(0, named=True)
            lines.append(f"{model}: canaries planted {t['copies']} times are extracted at {percent(t['extraction_rate'])} "
                         f"({t['hits']}/{t['n']}) by the dense model.")
        pruned = rows.filter(pl.col("method") != DENSE)
        if pruned.height:
            best = pruned.sort(["extraction_rate", "perplexity"]).row(0, named=True)
            lines.append(f"{model}: the lowest extraction is {percent(best['extraction_rate'])} with {best['method']} at "
                         f"level {best['level']:g} (achieved sparsity {percent(best['achieved_sparsity'])}), perplexity "
                         f"{dense['perplexity']:.2f} → {best['perplexity']:.2f}.")
            for method in pruned["method"].unique(maintain_order=True):
                m = pruned.filter(pl.col("method") == method).sort("level").tail(1).row(0, named=True)
                change = m["extraction_rate"] - dense["extraction_rate"]
                lines.append(f"{model}: {method} at level {m['level']:g} changes extraction by {100 * change:+.1f} points "
                             f"and perplexity by {100 * (m['perplexity'] / dense['perplexity'] - 1):+.1f}%.")
    return lines


def _table(frame: pl.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    body = []
    for row in frame.iter_rows():
        cells = "".join(f"<td>{html.escape(f'{v:.4g}' if isinstance(v, float) else str(v))}</td>" for v in row)
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def build(plan: Plan) -> tuple[str, str]:
    """Write results.csv, layer_sparsity.csv, metrics.json, report.html and the report's provenance.

    Every input is read and the page rendered before anything is written, so a bad input leaves
    the previous report whole.
    """
    results = tables.results(plan)
    layers = tables.layer_sparsity(plan)
    history = tables.search_history(plan)
    k = plan.ks[-1]
    reference = [m for m in plan.methods if plan.method(m).reference]  # the paper's method (global magnitude)
    dup = pl.concat([tables.by_duplication(plan, model, [(DENSE, "0")] + [
        (m, lv) for m in reference for lv in plan.model_levels(model)], k) for model in plan.models])
    env = environment()
    context = {"suffix": plan.params["samples"]["suffix_tokens"], "k": k, "ks": plan.ks,
               "checkpoint_ids": tables.checkpoint_ids(plan), "examples": redaction.extracted_examples(plan),
               "paper_names": {m: tables.paper_model_name(plan, m) for m in plan.models},
               "built_by": f"prunemem {env['prunemem']} (commit {env['git_commit'] or 'unknown'})", "history": history}
    page = render(results, layers, dup, context)
    summaries = {f"{m}/{me}/{lv}": sha256_file(plan.metrics_dir(m, me, lv) / "summary.json")
                 for m in plan.models for me, lv in plan.variants(m)}

    out = plan.reports_dir
    with atomic_path(out / "results.csv") as tmp:
        results.write_csv(tmp)
    with atomic_path(out / "layer_sparsity.csv") as tmp:
        layers.write_csv(tmp)
    with atomic_path(out / "search_history.csv") as tmp:
        history.write_csv(tmp)
    write_json(out / "metrics.json", tables.headline_metrics(results))
    with atomic_path(out / "report.html") as tmp:
        tmp.write_text(page, encoding="utf-8")
    prov = record("report", summaries, plan.stage_params("report"))
    prov["files"] = {name: sha256_file(out / name) for name in REPORT_FILES if name != "provenance.json"}
    write_json(out / "provenance.json", prov)
    return str(out / "results.csv"), str(out / "report.html")


def render(results: pl.DataFrame, layers: pl.DataFrame, dup: pl.DataFrame, context: dict) -> str:
    """The report page from the tidy tables alone (so a synthetic grid can be rendered and timed)."""
    k, suffix = context["k"], context["suffix"]
    sections = ["<h1>prunemem report</h1>",
                "<p class=note>Does pruning make a language model forget what it memorized, and what does that cost? "
                "A sample is <em>extracted</em> when greedy decoding from its k-token prefix reproduces its "
                f"{suffix}-token suffix exactly. Rates are over members; intervals are Wilson 95%.</p>",
                "<h2>Headline findings</h2><ul>"
                + "".join(f"<li>{html.escape(s)}</li>" for s in headlines(results, dup, k)) + "</ul>",
                "<h2>Extraction and perplexity against sparsity</h2>",
                "<p class=note>Achieved sparsity is the share of all prunable weights removed; methods that prune a "
                "subset (attention, mlp, first25, last25) reach less of it at the same level. Each curve starts at the "
                "dense model; bands are Wilson 95% intervals.</p>", charts.to_svg(charts.extraction_vs_sparsity(results)),
                f"<h2>Memorization against perplexity: pruning, quantization, low-rank (k={k})</h2>",
                "<p class=note>Down is less memorization, left is better quality; the black line is the Pareto "
                "frontier (no variant is better on both). Quantization removes no parameters (level 0); its budget "
                "is the share of 16-bit weight storage it keeps, in the <code>compression</code> column, as "
                "low-rank's is the share of parameters its factors keep.</p>",
                charts.to_svg(charts.memorization_vs_perplexity(results, k, tables.pareto_front(results))),
                f"<h2>Matched perplexity (k={k})</h2>",
                "<p class=note>For each perplexity budget over the dense model: the lowest extraction rate each "
                "method reaches at any of its levels (level in brackets); the best per model and budget is "
                "marked ★.</p>", _matched_table(tables.matched_perplexity(results, k)),
                "<h2>Membership inference against sparsity</h2>",
                "<p class=note>AUC of telling members from non-members by loss, zlib ratio, Min-K% and Min-K%++ "
                "(0.5 = chance, dashed), with stratified bootstrap 95% intervals; scores use the whole "
                f"{max(context['ks']) + suffix}-token window.</p>",
                charts.to_svg(charts.mia_vs_sparsity(results))]
    comparison = tables.calibration_comparison(results, k)
    if comparison.height:
        sections += [f"<h2>Calibration sampling: random against cluster-based (CCDS, k={k})</h2>",
                     "<p class=note>The same method on the same number of calibration sequences, drawn from the same "
                     "held-out pool either at random or evenly from k-means clusters of the dense model's mean hidden "
                     "states (EvoP's CCDS). Negative Δ: the cluster-sampled set forgets more or costs less.</p>",
                     _table(comparison)]
    structured = tables.structured_comparison(results, k)
    if structured.height:
        verdicts = tables.search_verdicts(results, k)
        sections += [f"<h2>Structured removal: SLEB, EvoP and memorization-aware EvoP (k={k})</h2>",
                     "<p class=note>SLEB removes blocks greedily by calibration loss; EvoP searches removal patterns "
                     "by calibration perplexity; evop-mem adds λ × the extraction rate on a search split of members "
                     "that evaluation never sees, so these rates are not tuned on themselves.</p>",
                     ("<ul>" + "".join(f"<li>{html.escape(v)}</li>" for v in verdicts) + "</ul>") if verdicts else "",
                     _table(structured)]
    history = context.get("history")
    if history is not None and history.height:
        sections += ["<h2>EvoP search history</h2>",
                     "<p class=note>Fitness of the best pattern found so far (solid) and the population mean (dashed) "
                     "per generation; the full history, with the best pattern, is "
                     "<code>reports/search_history.csv</code>.</p>", charts.to_svg(charts.search_history(history))]
    if dup.height:
        sections += [f"<h2>Extraction against duplication (k={k})</h2>",
                     "<p class=note>Canaries planted 0 times were never trained on: their rate is what the model "
                     "guesses without memorizing.</p>", charts.to_svg(charts.extraction_vs_duplication(dup, k))]
    if layers.height:
        sections += ["<h2>Achieved sparsity per block</h2>",
                     "<p class=note>Share of each block's prunable weights removed by each mask: uniform for "
                     "layerwise and N:M, uneven for global, OWL and the subset strategies, whole blocks for SLEB.</p>",
                     charts.to_svg(charts.layer_sparsity_heatmap(layers))]
    sections += ["<h2>The paper's published values</h2>",
                 f"<p class=note>Source: {html.escape(tables.PAPER_SOURCE)}. Shown beside ours only where the model "
                 "and method match; the paper gives no pruning level and, mostly, no k.</p>",
                 _table(tables.paper_comparison(results, tables.paper_values(), context["paper_names"]))]
    shown = ["model", "method", "level", "n_samples", "n_extracted", "extraction_rate", "ci_low", "ci_high",
             "token_match_rate", "n_rechecked", "n_flipped", "perplexity", "achieved_sparsity", "compression",
             "mia_minkpp_auc"]
    if context["examples"].height:
        sections += [f"<h2>Extracted members (dense, k={k})</h2>",
                     ("<p class=note>Suffixes are shown as a hash and their first tokens unless params set "
                      "<code>report.show_text: true</code>.</p>"), _table(context["examples"])]
    for kk in context["ks"]:
        sections += [f"<h2>Results at k={kk}</h2>", _table(results.filter(pl.col("k") == kk).select(shown))]
    sections += ["<h2>Appendix: provenance</h2>",
                 "<p class=note>Where every row of <code>results.csv</code> came from (hashes shortened here, full "
                 "there); <code>prunemem audit</code> re-checks all of them.</p>",
                 _table(tables.provenance_appendix(results, context["checkpoint_ids"])),
                 f"<p class=note>Built by {html.escape(context['built_by'])}.</p>"]
    return (f"<!doctype html><html><head><meta charset=utf-8><title>prunemem report</title><style>{_CSS}</style>"
            f"</head><body>{''.join(sections)}</body></html>\n")


def _matched_table(frame: pl.DataFrame) -> str:
    """The matched-perplexity table with each column's best (lowest rate) per model starred."""
    def rate(cell: str) -> float:
        return float(cell.split("%")[0]) if cell != "-" else float("inf")

    rows = frame.to_dicts()
    for column in (c for c in frame.columns if c.startswith("<=")):
        best: dict[str, float] = {}
        for row in rows:
            best[row["model"]] = min(best.get(row["model"], float("inf")), rate(row[column]))
        for row in rows:
            if row[column] != "-" and rate(row[column]) == best[row["model"]]:
                row[column] += " ★"
    return _table(pl.DataFrame(rows))
