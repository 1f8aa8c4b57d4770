"""Assemble ``reports/results.csv`` and the offline ``reports/report.html``."""

from __future__ import annotations

import html
import logging

import polars as pl

from prunemem.plan import DENSE, Plan
from prunemem.provenance import atomic_path, environment
from prunemem.report import charts, redaction, tables

log = logging.getLogger(__name__)

_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,td:nth-child(2){text-align:left}code{font-size:12px}.note{color:#555;font-size:13px}"""


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def headlines(results: pl.DataFrame, dup: pl.DataFrame, k: int) -> list[str]:
    """Findings computed from the data: baseline, the strongest reduction, its perplexity cost."""
    lines = []
    at_k = results.filter(pl.col("k") == k)
    for model in at_k["model"].unique(maintain_order=True):
        rows = at_k.filter(pl.col("model") == model)
        dense = rows.filter(pl.col("method") == DENSE).row(0, named=True)
        lines.append(f"{model}: the dense model extracts {_pct(dense['extraction_rate'])} of members at k={k} "
                     f"(95% CI {_pct(dense['ci_low'])}–{_pct(dense['ci_high'])}), perplexity {dense['perplexity']:.2f}.")
        top = dup.filter(pl.col("variant") == f"{DENSE} 0").sort("copies").tail(1)
        if top.height:
            t = top.row(0, named=True)
            lines.append(f"{model}: canaries planted {t['copies']} times are extracted at {_pct(t['extraction_rate'])} "
                         f"({t['hits']}/{t['n']}) by the dense model.")
        pruned = rows.filter(pl.col("method") != DENSE)
        if pruned.height:
            best = pruned.sort(["extraction_rate", "perplexity"]).row(0, named=True)
            lines.append(f"{model}: the lowest extraction is {_pct(best['extraction_rate'])} with {best['method']} at "
                         f"level {best['level']:g} (achieved sparsity {_pct(best['achieved_sparsity'])}), perplexity "
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
    results = tables.results(plan)
    out = plan.reports_dir
    k = plan.ks[-1]
    model = plan.models[0]
    dup_variants = [(DENSE, "0")] + [("global", lv) for lv in plan.levels if "global" in plan.methods]
    dup = tables.by_duplication(plan, model, dup_variants, k)

    sections = ["<h1>prunemem report</h1>",
                "<p class=note>Does pruning make a language model forget what it memorized, and what does that cost? "
                "A sample is <em>extracted</em> when greedy decoding from its k-token prefix reproduces its "
                f"{plan.params['samples']['suffix_tokens']}-token suffix exactly. Rates are over members; intervals "
                "are Wilson 95%.</p>",
                "<h2>Headline findings</h2><ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in headlines(results, dup, k))
                + "</ul>",
                "<h2>Extraction and perplexity against sparsity</h2>",
                "<p class=note>Achieved sparsity is the share of all prunable weights removed; methods that prune a "
                "subset (attention, mlp, first25, last25) reach less of it at the same level. Each curve starts at the "
                "dense model.</p>", charts.to_svg(charts.extraction_vs_sparsity(results)),
                f"<h2>Memorization against perplexity: pruning, quantization, low-rank (k={k})</h2>",
                "<p class=note>Down is less memorization, left is better quality. Quantization removes no "
                "parameters (level 0); its budget is the share of 16-bit weight storage it keeps, in the "
                "<code>compression</code> column, as low-rank's is the share of parameters its factors keep.</p>",
                charts.to_svg(charts.memorization_vs_perplexity(results, k)),
                f"<h2>Extraction against duplication ({model}, k={k})</h2>",
                "<p class=note>Canaries planted 0 times were never trained on: their rate is what the model guesses "
                "without memorizing.</p>",
                charts.to_svg(charts.extraction_vs_duplication(dup, k))]
    layers = tables.layer_sparsity(plan)
    if layers.height:
        sections += ["<h2>Achieved sparsity per block</h2>",
                     "<p class=note>Share of each block's prunable weights removed by each mask: uniform for "
                     "layerwise and N:M, uneven for global, OWL and the subset strategies, whole blocks for SLEB.</p>",
                     charts.to_svg(charts.layer_sparsity_heatmap(layers))]
    shown = ["model", "method", "level", "n_samples", "n_extracted", "extraction_rate", "ci_low", "ci_high",
             "token_match_rate", "perplexity", "achieved_sparsity", "compression"]
    examples = redaction.extracted_examples(plan)
    if examples.height:
        sections += [f"<h2>Extracted members (dense, k={k})</h2>",
                     ("<p class=note>Suffixes are shown as a hash and their first tokens unless params set "
                      "<code>report.show_text: true</code>.</p>"), _table(examples)]
    for kk in plan.ks:
        sections += [f"<h2>Results at k={kk}</h2>", _table(results.filter(pl.col("k") == kk).select(shown))]
    env = environment()
    sections.append(f"<p class=note>Built by prunemem {env['prunemem']} (commit {env['git_commit'] or 'unknown'}); "
                    "hashes of every input are in <code>results.csv</code>.</p>")
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>prunemem report</title><style>{_CSS}</style>"
            f"</head><body>{''.join(sections)}</body></html>\n")
    # Written only once every input has been read: a bad input leaves the previous report whole.
    with atomic_path(out / "results.csv") as tmp:
        results.write_csv(tmp)
    with atomic_path(out / "layer_sparsity.csv") as tmp:
        layers.write_csv(tmp)
    with atomic_path(out / "report.html") as tmp:
        tmp.write_text(page, encoding="utf-8")
    return str(out / "results.csv"), str(out / "report.html")
