"""Assemble ``reports/results.csv``, the paired tests, the claims and the offline ``reports/report.html``.

    prunemem report      # -> reports/report.html, results.csv, comparisons.csv, claims.csv, figures/

The page loads nothing from the network: vega-embed, Vega-Lite and Vega are inlined once (from
vl-convert's bundle) and every chart's spec and data sit in the page.
"""

from __future__ import annotations

import html
import json
import logging
import shutil

import polars as pl

from prunemem.errors import PrunememError
from prunemem.evaluate.mia import SCORES
from prunemem.plan import DENSE, DOWNSTREAM_SUMMARY, FIGURES, REPORT_DIRECTORIES, REPORT_FILES, Plan
from prunemem.provenance import atomic_path, environment, read_json, record, sha256_file, write_json
from prunemem.prune.registry import describe, order
from prunemem.report import charts, compare, forgetting, redaction, tables
from prunemem.report.compare import fmt_ci, fmt_effect, fmt_p

log = logging.getLogger(__name__)

# the stage that writes each results.csv column the report reads (for the one-line error on a bad file)
NEEDED = {**{c: "evaluate" for c in ("model", "method", "level", "k", "n_samples", "n_extracted", "extraction_rate",
                                     "ci_low", "ci_high", "token_match_rate", "n_rechecked", "n_flipped",
                                     "perplexity", "achieved_sparsity", "compression", "metrics_sha256",
                                     "samples_sha256", "params_digest", "code_version",
                                     *tables.MIA_COLUMNS)},
          "mask_sha256": "mask (or compress)", "checkpoint_sha256": "checkpoint"}

GLOSSARY = {
    "model": "the model the variant was made from (params models:)",
    "method": "pruning, quantization or low-rank method; dense = unpruned",
    "level": "the method's own knob: fraction of its target set removed (pruning), kept rank fraction (low-rank)",
    "k": "prefix length in tokens fed before greedy decoding",
    "n_samples": "members evaluated (canaries and ordinary training windows)",
    "n_extracted": "members whose whole suffix greedy decoding reproduces exactly",
    "extraction (%)": "n_extracted / n_samples, with its Wilson 95% interval",
    "token match (%)": "token_match_rate: mean share of suffix tokens reproduced, extracted or not",
    "re-checked": "n_rechecked: near-tie verdicts (decision margin under evaluate.near_tie_margin) re-decided by "
                  "fp32 greedy generate()",
    "flipped": "n_flipped: re-checked verdicts that changed",
    "perplexity": "token-weighted held-out perplexity on the perplexity set",
    "achieved sparsity (%)": "share of all prunable weights that are zero (removed blocks count as zero)",
    "compression": "share of parameters (or bits) kept",
    "MIA AUC": "area under the ROC curve of telling members from non-members by the named score, bootstrap 95% CI",
}

_CSS = """body{font-family:system-ui,sans-serif;margin:0 auto;padding:1em 1.5em;max-width:1180px;color:#222;
line-height:1.45}h1{margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12.5px;margin:.8em 0}td,th{border:1px solid #ccc;padding:2px 6px;
text-align:right;vertical-align:top}td{white-space:nowrap}td.l{white-space:normal}th{background:#f3f3f3}th.sort{cursor:pointer}td.l,th.l{text-align:left}
tr.fam td{background:#fafafa;font-weight:600;text-align:left}code{font-size:12px}.note{color:#555;font-size:13px}
.wrap{max-width:100%;overflow-x:auto}.box{border:1px solid #bbb;background:#f8f9fb;padding:.6em 1em;border-radius:4px}
.box dt{font-weight:600;float:left;clear:left;width:12em}.box dd{margin-left:12.5em}nav ol{columns:2}
details{margin:.6em 0}summary{cursor:pointer;font-weight:600}.chart{margin:.6em 0;max-width:100%;overflow-x:auto;min-height:120px}
.flag{background:#fff4e0}li{margin:.25em 0}input[type=search]{width:24em}"""

_JS = """
// charts render when they come near the viewport: a paper-sized grid has dozens, and drawing
// all of them up front would hold the page for seconds
function draw(s) {
  if (s.dataset.drawn) return; s.dataset.drawn = '1';
  vegaEmbed(document.getElementById(s.dataset.chart), JSON.parse(s.textContent),
            {renderer: 'svg', actions: {export: true, source: false, compiled: false, editor: false}})
    .catch(function (e) { console.error(e); });
}
var specs = document.querySelectorAll('script[type="application/json"][data-chart]');
var seen = new IntersectionObserver(function (entries) {
  entries.forEach(function (e) { if (e.isIntersecting) { seen.unobserve(e.target); draw(e.target.spec); } });
}, {rootMargin: '800px'});
specs.forEach(function (s) { var el = document.getElementById(s.dataset.chart); el.spec = s; seen.observe(el); });
window.drawAllCharts = function () { specs.forEach(draw); };  // for printing and tests
document.querySelectorAll('table.sortable th').forEach(function (th, i) {
  th.classList.add('sort'); th.title = 'click to sort';
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0], rows = Array.from(body.rows);
    var up = th.dataset.dir !== 'up'; th.dataset.dir = up ? 'up' : 'down';
    var key = function (r) { var c = r.cells[i]; var v = c.dataset.v; return v === undefined ? c.textContent : +v; };
    rows.sort(function (a, b) { var x = key(a), y = key(b); return (x > y ? 1 : x < y ? -1 : 0) * (up ? 1 : -1); });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
var q = document.getElementById('hash-search');
if (q) q.addEventListener('input', function () {
  var t = q.value.trim().toLowerCase();
  document.querySelectorAll('#provenance tbody tr').forEach(function (r) {
    r.style.display = !t || r.textContent.toLowerCase().indexOf(t) >= 0 ? '' : 'none'; });
});
"""


def check_columns(results: pl.DataFrame, source: str = "results.csv") -> None:
    """One line naming the first missing column the report needs, and the stage that writes it."""
    for column, stage in NEEDED.items():
        if column not in results.columns:
            raise PrunememError(f"{source}: column '{column}' is missing; it is written by the {stage} stage "
                                f"(re-run `prunemem {stage.split()[0]}` for every variant, then `prunemem report`)")


def _fixed(frame: pl.DataFrame, percent: tuple[str, ...] = ()) -> pl.DataFrame:
    """Fixed precision for a table: the named rate columns as percentages, every float to 2 decimals."""
    return frame.with_columns(*(pl.col(c).mul(100) for c in percent)).with_columns(
        pl.col(pl.Float64).exclude("level").map_elements(lambda v: f"{v:.2f}", return_dtype=pl.String))


def _cell(v, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _table(frame: pl.DataFrame, cls: str = "", left: int = 2, table_id: str = "") -> str:
    head = "".join(f"<th{' class=l' if i < left else ''}>{html.escape(c)}</th>" for i, c in enumerate(frame.columns))
    body = []
    for row in frame.iter_rows():
        cells = "".join(f"<td{' class=l' if i < left or isinstance(v, str) and not v[:1].isdigit() else ''}>"
                        f"{html.escape(_cell(v))}</td>" for i, v in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    ident = f" id={table_id}" if table_id else ""
    return (f"<div class=wrap><table{ident}{f' class={cls}' if cls else ''}><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>")


class Page:
    """Sections with anchors, the table of contents, and charts as inline Vega-Lite specs."""

    def __init__(self):
        self.parts: list[str] = []
        self.toc: list[tuple[str, str]] = []
        self.figures: dict[str, dict] = {}

    def section(self, anchor: str, title: str, *body: str) -> None:
        self.toc.append((anchor, title))
        self.parts.append(f"<h2 id={anchor}>{html.escape(title)}</h2>" + "".join(body))

    def chart(self, name: str, chart) -> str:
        spec = chart.to_dict(validate=False)  # schema validation costs seconds per chart; tests validate
        self.figures[name] = spec
        payload = json.dumps(spec, separators=(",", ":"), sort_keys=True).replace("</", "<\\/")
        return (f"<div class=chart id=chart-{name}></div><script type=application/json data-chart=chart-{name}>"
                f"{payload}</script><p class=note>Figure <code>{name}</code>: also <a href=\"{FIGURES}/{name}.svg\">"
                f"{FIGURES}/{name}.svg</a>; the … menu downloads SVG/PNG; click a legend entry to isolate it.</p>")


def _summary_table(results: pl.DataFrame, k: int, model: str, ppl_ci: dict) -> str:
    """One row per variant grouped by family: sparsity, extraction at k with CI, perplexity, Δ vs dense, MIA AUC."""
    rows = results.filter((pl.col("model") == model) & (pl.col("k") == k))
    dense = rows.filter(pl.col("method") == DENSE)
    d = dense.row(0, named=True) if dense.height else None
    score = max(SCORES, key=lambda s: d[f"mia_{s}_auc"]) if d else "minkpp"
    head = ["variant", "family", "achieved sparsity (%)", f"extraction k={k} (%)", "95% CI (%)", "perplexity",
            "perplexity 95% CI", "Δ extraction vs dense (points)", "Δ perplexity vs dense (%)", f"{score} AUC",
            "AUC 95% CI"]
    out = ["<div class=wrap><table class=sortable><thead><tr>"
           + "".join(f"<th{' class=l' if i < 2 else ''}>{html.escape(h)}</th>" for i, h in enumerate(head))
           + "</tr></thead><tbody>"]
    order = [DENSE, *compare.GROUPS]
    for fam in order:
        mine = rows.filter(pl.col("method").map_elements(compare.group, return_dtype=pl.String) == fam)
        for r in mine.sort("method", "level").iter_rows(named=True):
            label = DENSE if r["method"] == DENSE else f"{r['method']}@{r['level']:g}"
            lo, hi = ppl_ci.get((r["method"], r["level"]), (None, None))
            cells = [(label, None), (fam, None),
                     (f"{100 * r['achieved_sparsity']:.1f}", r["achieved_sparsity"]),
                     (f"{100 * r['extraction_rate']:.2f}", r["extraction_rate"]),
                     (f"{100 * r['ci_low']:.2f}–{100 * r['ci_high']:.2f}", r["ci_low"]),
                     (f"{r['perplexity']:.2f}", r["perplexity"]),
                     (f"{lo:.2f}–{hi:.2f}" if lo is not None else "–", lo if lo is not None else 0),
                     (f"{100 * (r['extraction_rate'] - d['extraction_rate']):+.2f}" if d else "–",
                      r["extraction_rate"] - d["extraction_rate"] if d else 0),
                     (f"{100 * (r['perplexity'] / d['perplexity'] - 1):+.2f}" if d else "–",
                      r["perplexity"] / d["perplexity"] - 1 if d else 0),
                     (f"{r[f'mia_{score}_auc']:.3f}", r[f"mia_{score}_auc"]),
                     (f"{r[f'mia_{score}_auc_low']:.3f}–{r[f'mia_{score}_auc_high']:.3f}", r[f"mia_{score}_auc_low"])]
            out.append("<tr>" + "".join(
                f"<td{' class=l' if i < 2 else ''}{'' if v is None else f' data-v={v:.6g}'}>{html.escape(t)}</td>"
                for i, (t, v) in enumerate(cells)) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _matched_html(frame: pl.DataFrame, model: str) -> str:
    mine = frame.filter(pl.col("model") == model) if frame.height else frame
    if mine.height == 0:
        return "<p class=note>No dense row, so no perplexity budget can be set: matched comparisons are missing.</p>"
    budgets = [c.removeprefix("extraction_rate ") for c in mine.columns if c.startswith("extraction_rate +")]
    head = "".join(f"<th>at {html.escape(b)} ppl: extraction (%) [95% band] (levels)</th>" for b in budgets)
    body = []
    for r in mine.iter_rows(named=True):
        cells = []
        for b in budgets:
            v = r[f"extraction_rate {b}"]
            cells.append("<td>–</td>" if v is None else
                         f"<td data-v={v:.6g}>{100 * v:.2f} [{100 * r[f'ci_low {b}']:.2f}–{100 * r[f'ci_high {b}']:.2f}]"
                         f" ({html.escape(r[f'levels {b}'])})</td>")
        body.append(f"<tr><td class=l>{html.escape(r['method'])}</td><td class=l>{html.escape(r['family'])}</td>"
                    + "".join(cells) + "</tr>")
    return (f"<div class=wrap><table class=sortable><thead><tr><th class=l>method</th><th class=l>family</th>{head}"
            f"</tr></thead><tbody>{''.join(body)}</tbody></table></div>")


def _methods_box(info: dict, model: str, results: pl.DataFrame, context: dict) -> str:
    """What was run, on what, with which samples: the facts a methods section needs."""
    i = info.get(model, {})
    rows = results.filter(pl.col("model") == model)
    dense = rows.filter(pl.col("method") == DENSE)
    items = [("model", f"{context['checkpoint_ids'].get(model, '?')}" + (f" — {i['recipe']}" if i.get("recipe") else "")),
             ("members", i.get("members", f"{rows['n_samples'][0]} per variant")),
             ("non-members", i.get("nonmembers", "–")),
             ("prefix k / suffix", f"k = {', '.join(map(str, context['ks']))} tokens; suffix {context['suffix']} tokens; "
                                   "extracted = greedy decoding reproduces the whole suffix"),
             ("perplexity set", i.get("perplexity_set", "–")),
             ("quality baselines", i.get("baselines", "dense perplexity "
                                     + (f"{dense['perplexity'][0]:.2f}" if dense.height else "– (no dense row)")
                                     + "; no trivial-model reference recorded by this evaluation")),
             ("variants", f"{rows.select('method', 'level').unique().height} (methods × levels, dense included)"),
             ("software", i.get("software", context.get("built_by", ""))),
             ("hardware", i.get("hardware", "–")),
             ("wall time", i.get("wall_time", "not in the report, which must be byte-identical between runs; "
                                             "each stage's log under logs/ carries time stamps"))]
    return ("<dl class=box>" + "".join(f"<dt>{html.escape(a)}</dt><dd>{html.escape(str(b))}</dd>" for a, b in items)
            + "</dl>")


def methods_info(plan: Plan) -> dict:
    """Per model: recipe, sample sizes, perplexity set, reference perplexities, software, hardware."""
    out = {}
    for model in plan.models:
        info = {}
        spec = plan.params["models"][model]
        if spec.get("source") == "embedded":
            emb = plan.params.get("embedded", {})
            arch, train, can = emb.get("architecture", {}), emb.get("training", {}), emb.get("canaries", {})
            info["recipe"] = (f"embedded GPT-NeoX, {arch.get('num_layers')} layers × {arch.get('hidden_size')} hidden, "
                              f"{arch.get('num_heads')} heads, context {arch.get('seq_len')}; trained "
                              f"{train.get('steps')} steps × batch {train.get('batch_size')}; canaries of "
                              f"{can.get('tokens')} tokens planted {can.get('copies')} times, "
                              f"{can.get('per_copy_count')} per copy count")
        d = plan.metrics_dir(model, DENSE, "0")
        if (d / "mia.parquet").is_file():
            mia = pl.read_parquet(d / "mia.parquet")
            members = mia.filter(pl.col("member"))
            kinds = members.group_by("kind").len().sort("kind")
            info["members"] = f"{members.height}: " + ", ".join(f"{n} {kind}" for kind, n in kinds.iter_rows())
            non = mia.filter(~pl.col("member")).group_by("kind").len().sort("kind")
            info["nonmembers"] = f"{int(non['len'].sum())}: " + ", ".join(f"{n} {kind}" for kind, n in non.iter_rows())
        if (d / "summary.json").is_file():
            s = read_json(d / "summary.json", "evaluation summary")
            docs = pl.read_parquet(plan.samples_dir(model) / "perplexity.parquet").height \
                if (plan.samples_dir(model) / "perplexity.parquet").is_file() else "?"
            info["perplexity_set"] = (f"{docs} held-out documents, {s['perplexity_tokens']} scored tokens; "
                                      + perplexity_convention(plan.params["perplexity"]))
            ref = s.get("reference_perplexity")
            base = f"dense {s['perplexity']:.2f}"
            if ref:  # issue 19's trivial baselines on the same text: unigram, bigram, every block removed
                base += "; " + ", ".join(f"{name.replace('_', ' ')} {_reference(v)}" for name, v in ref.items())
            else:
                base += "; no trivial-model reference recorded by this evaluation"
            info["baselines"] = base
            env = s["provenance"]["environment"]
            info["software"] = (f"prunemem {env['prunemem']} ({(env.get('git_commit') or 'no git')[:12]}), python "
                                f"{env.get('python')}, " + ", ".join(f"{k} {v}" for k, v in sorted(
                                    env.get("packages", {}).items())))
            info["hardware"] = f"{s['device']} ({env.get('device', '')}), {s['dtype']}"
        out[model] = info
    return out


def perplexity_convention(cfg: dict) -> str:
    """How the perplexity was computed, in words (``prunemem.evaluate.perplexity``)."""
    window = cfg["window"]
    if cfg.get("mode", "stream") == "document":
        return (f"each document scored alone after a BOS token, in disjoint blocks of {window} tokens (lm-eval's "
                "loglikelihood_rolling convention); its end-of-text is not scored")
    return (f"one packed, EOS-separated stream, windows of {window} tokens every {cfg['stride']} (each token "
            f"scored once, with at least {window - cfg['stride']} tokens of context; lm-eval instead scores each "
            "document alone after a BOS token: perplexity.mode: document)")


KIND_LABELS = {("canary", True): "canaries planted &ge; 1 time", ("train", True): "ordinary training windows",
               ("canary", False): "canaries planted 0 times", ("heldout", False): "held-out windows"}


def _kinds_html(kinds: pl.DataFrame | None) -> list[str]:
    """Extraction per sample kind: canaries, ordinary training windows and non-members apart."""
    if kinds is None or not kinds.height:
        return []
    rows = []
    for r in kinds.iter_rows(named=True):
        label = KIND_LABELS.get((r["kind"], r["member"]), html.escape(r["kind"]))
        if r["kind"] == "train":
            label += f" (in the training rows {r['copies']}&times;)"
        rows.append(f"<tr><td>{html.escape(r['model'])}<td>{html.escape(r['variant'])}<td>{label}"
                    f"<td>{'member' if r['member'] else 'non-member'}<td class=num>{r['n_samples']}"
                    f"<td class=num>{r['n_extracted']}<td class=num>{100 * r['extraction_rate']:.1f}%"
                    f"<td class=num>[{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}]</tr>")
    return ["<p class=note>Extraction by sample kind (Wilson 95% intervals): members that are canaries and "
            "members that are ordinary training text are reported apart; non-members should stay near 0.</p>",
            "<table class=kinds><tr><th>model<th>variant<th>samples<th>membership<th>n<th>extracted<th>rate"
            "<th>95% CI</tr>" + "".join(rows) + "</table>"]


def _reference(value) -> str:
    """A reference perplexity as recorded: a number, or a record holding one under 'perplexity'."""
    if isinstance(value, dict):
        value = value.get("perplexity", value)
    return f"{value:.2f}" if isinstance(value, (int, float)) else str(value)


def _ppl_intervals(samples: compare.ModelSamples | None) -> dict:
    """Per variant: a bootstrap 95% interval of its perplexity over documents (for the summary table)."""
    import numpy as np

    from prunemem.evaluate.stats import resample_counts

    out = {}
    if samples is None:
        return out
    for key, docs in samples.documents.items():
        w = resample_counts(docs.shape[0], compare.RESAMPLES, compare.SEED)
        ppl = np.exp((w @ docs[:, 0]) / (w @ docs[:, 1]))
        out[key] = (float(np.quantile(ppl, 0.025)), float(np.quantile(ppl, 0.975)))
    return out


def _downstream_context(plan: Plan) -> dict | None:
    """What the downstream section shows, read from the downstream summaries and per-sample logs."""
    from prunemem.report import downstream

    if not plan.downstream:
        return None
    ds = plan.params["downstream"]
    names = [t["name"] for t in ds["tasks"]]
    heads = {m: downstream.headline(tables.downstream_summary(plan, m, DENSE, "0"), names) if (DENSE, "0") in
             plan.variants(m) else [] for m in plan.models}
    return {"tasks": names, "limit": ds.get("limit"), "headline": heads,
            "tests": {m: downstream.paired_tests(plan, m) for m in plan.models}}


def _downstream_html(p: Page, results: pl.DataFrame, context: dict, k: int) -> list[str]:
    """Each task's headline metric against sparsity, the memorization-accuracy frontier, and every
    variant tested against dense on the same documents (report/downstream.py)."""
    from prunemem.report.compare import ALPHA, fmt_p, verdict

    info = context["downstream"]
    body = [f"<p class=note>Tasks: {html.escape(', '.join(info['tasks']))}; at most {info['limit'] or 'all'} documents "
            "each, the same documents for every variant. Bars: ± 1.96 lm-eval stderr (one variant's own interval). "
            "Differences from dense are paired: Newcombe's 95% interval on the per-document outcomes and an exact "
            "McNemar test, Holm-corrected over every variant and task of the model; a direction is stated only "
            f"below p {ALPHA}. Every metric with its stderr is in <a href=\"results.csv\">results.csv</a>, every "
            "document's outcome in the per-sample logs beside each summary (data/downstream/).</p>"]
    multi = len(info["tests"]) > 1
    for model, tests in info["tests"].items():
        body.append(f"<h3>{html.escape(model)}</h3>" if multi else "")
        heads = info["headline"][model]
        for task, key, column in heads:
            chart = charts.downstream_vs_sparsity(results, model, column, f"{task} {key.split(',')[0]}")
            if chart is not None:
                body.append(p.chart(f"downstream-{model}-{task}", chart))
        if heads:
            task, key, column = heads[0]
            body.append(p.chart(f"downstream-front-{model}", charts.memorization_vs_downstream(
                results, model, k, column, f"{task} {key.split(',')[0]}")))
        if tests.height:
            shown = tests.select(
                pl.struct("method", "level").map_elements(lambda r: f"{r['method']} {r['level']:g}",
                                                          return_dtype=pl.String).alias("variant"),
                "task", pl.col("metric").str.split(",").list.first().alias("metric"), "n",
                pl.col("dense").map_elements(lambda v: f"{v:.3f}", return_dtype=pl.String).alias("dense"),
                pl.col("variant").map_elements(lambda v: f"{v:.3f}", return_dtype=pl.String).alias("score"),
                pl.struct("difference", "ci_low", "ci_high").map_elements(
                    lambda r: f"{r['difference']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]",
                    return_dtype=pl.String).alias("difference [95% CI]"),
                pl.col("p_holm").map_elements(fmt_p, return_dtype=pl.String).alias("p (Holm)"),
                pl.struct("difference", "p_holm").map_elements(
                    lambda r: verdict(r["difference"], r["p_holm"], "lower than dense", "higher than dense"),
                    return_dtype=pl.String).alias("verdict"))
            body.append(_table(shown, cls="sortable", left=3))
    return body


def build(plan: Plan) -> tuple[str, str]:
    """Write results.csv, comparisons.csv, claims.csv, the other tables, figures/, report.html and provenance.

    Every input is read and the page rendered before anything is written, so a bad input leaves
    the previous report whole.
    """
    results = tables.results(plan)
    layers = tables.layer_sparsity(plan)
    history = tables.search_history(plan)
    trials, against = tables.trial_history(plan), tables.search_against_fixed(plan)
    k = plan.ks[-1]
    reference = [m for m in plan.methods if plan.method(m).reference]  # the paper's method (global magnitude)
    dup = pl.concat([tables.by_duplication(plan, model, [(DENSE, "0")] + [
        (m, lv) for m in reference for lv in plan.model_levels(model)][:charts.MAX_SERIES - 1], k)
        for model in plan.models if (plan.metrics_dir(model, DENSE, "0") / "memorization.parquet").is_file()])
    kinds = [tables.by_kind(plan, model, [(DENSE, "0")] + [(m, lv) for m in reference
                                                            for lv in plan.model_levels(model)][:2], k)
             for model in plan.models if (plan.metrics_dir(model, DENSE, "0") / "memorization.parquet").is_file()]
    env = environment()
    samples = {m: compare.load_samples(plan, m) for m in plan.models}
    context = {"suffix": plan.params["samples"]["suffix_tokens"], "k": k, "ks": plan.ks,
               "checkpoint_ids": tables.checkpoint_ids(plan), "examples": redaction.extracted_examples(plan),
               "paper_names": {m: tables.paper_model_name(plan, m) for m in plan.models},
               "built_by": f"prunemem {env['prunemem']} (commit {env['git_commit'] or 'unknown'})", "history": history,
               "trials": trials, "search_against_fixed": against,
               "samples": samples, "methods": methods_info(plan), "kinds": pl.concat(kinds) if kinds else None,
               "forgetting": {m: forgetting.load(plan, m) for m in plan.models},
               "downstream": _downstream_context(plan)}
    page, figures, analyses = render(results, layers, dup, context)
    summaries = {f"{m}/{me}/{lv}": sha256_file(plan.metrics_dir(m, me, lv) / "summary.json")
                 for m in plan.models for me, lv in plan.variants(m)}
    if plan.downstream:  # lm-eval's scores, keyed as freshness keys them
        summaries.update({f"downstream/{m}/{me}/{lv}": sha256_file(plan.downstream_dir(m, me, lv) / DOWNSTREAM_SUMMARY)
                          for m in plan.models for me, lv in plan.variants(m)})
    svgs = {name: charts.spec_to_svg(spec) for name, spec in figures.items()}

    out = plan.reports_dir
    with atomic_path(out / "results.csv") as tmp:
        results.write_csv(tmp)
    with atomic_path(out / "layer_sparsity.csv") as tmp:
        layers.write_csv(tmp)
    with atomic_path(out / "search_history.csv") as tmp:
        history.write_csv(tmp)
    with atomic_path(out / "comparisons.csv") as tmp:
        pl.concat([a.comparisons for a in analyses.values()]).write_csv(tmp, float_precision=6)
    with atomic_path(out / "claims.csv") as tmp:
        pl.DataFrame([c for a in analyses.values() for c in a.claims], schema=compare.CLAIM_SCHEMA).write_csv(tmp)
    staging = out / f".{FIGURES}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, svg in svgs.items():
        (staging / f"{name}.svg").write_text(svg, encoding="utf-8")
    shutil.rmtree(out / FIGURES, ignore_errors=True)
    staging.rename(out / FIGURES)
    write_json(out / "metrics.json", tables.headline_metrics(results))
    with atomic_path(out / "report.html") as tmp:
        tmp.write_text(page, encoding="utf-8")
    prov = record("report", summaries, plan.stage_params("report"))
    prov["files"] = {name: sha256_file(out / name) for name in REPORT_FILES
                     if name != "provenance.json" and (out / name).is_file()}
    prov["figures"] = {name: sha256_file(out / FIGURES / f"{name}.svg") for name in sorted(svgs)}
    write_json(out / "provenance.json", prov)
    return str(out / "results.csv"), str(out / "report.html")


def render(results: pl.DataFrame, layers: pl.DataFrame, dup: pl.DataFrame, context: dict):
    """The page from the tidy tables and (optionally) per-sample outcomes.

    Returns (html, {figure name: Vega-Lite spec}, {model: compare.Analysis}); a synthetic grid can be
    rendered and timed without a study on disk.
    """
    check_columns(results)
    k, suffix, ks = context["k"], context["suffix"], context["ks"]
    models = results["model"].unique(maintain_order=True).to_list()
    samples = context.get("samples", {})
    paper = tables.paper_values()
    multi = len(models) > 1
    analyses = {m: compare.analyse(m, samples.get(m), results, k, ks, paper, context["paper_names"].get(m, ""),
                                   prefix=f"{m}: " if multi else "") for m in models}
    p = Page()
    front = tables.pareto_front(results)
    matched = compare.matched_perplexity(results, k)
    shown_ks, empty_ks = charts.informative_ks(results)

    p.section("methods", "Methods", *(
        (f"<h3>{html.escape(m)}</h3>" if multi else "") + _methods_box(context.get("methods", {}), m, results, context)
        for m in models))
    findings = [s for m in models for s in analyses[m].findings]
    p.section("findings", "Findings", "<p class=note>Computed from the data; each rests on a paired test named in it "
              "(exact McNemar on per-member extraction, paired bootstrap over documents for perplexity and over "
              "members for matched-perplexity rates, stratified paired bootstrap for AUCs), with the effect, its 95% "
              "CI and a Holm-corrected p over all tests of the model. Methods are compared at matched perplexity or "
              "matched achieved sparsity, not at a nominal level.</p><ol id=findings-list>"
              + "".join(f"<li{' class=flag' if s.split(': ', 1)[-1].startswith('Sanity flag') else ''}>"
                        f"{html.escape(s)}</li>" for s in findings) + "</ol>")
    claims = pl.DataFrame([c for m in models for c in analyses[m].claims], schema=compare.CLAIM_SCHEMA)
    p.section("claims", "The paper's claims, tested",
              "<p class=note>One row per finding of the paper, computed the same way for every model: "
              f"<b>confirmed</b> or <b>refuted</b> only when the Holm-corrected p is below {compare.ALPHA}, else "
              "<b>inconclusive</b>. The paper's own values (bundled, see the paper section) stand beside each row. "
              "Also <a href=\"claims.csv\">claims.csv</a>.</p>", _table(claims, left=3))

    for m in models:
        ppl_ci = _ppl_intervals(samples.get(m))
        p.section(f"summary-{m}", f"Summary{': ' + m if multi else ''} (k={k})",
                  "<p class=note>Variants grouped by family; click a header to sort. Extraction CIs are Wilson 95%; "
                  "perplexity CIs a bootstrap over documents; AUC CIs a stratified bootstrap. Δ are point differences; "
                  "their paired tests are in the comparisons section.</p>", _summary_table(results, k, m, ppl_ci))

    empty = (f"<p class=note>Nothing is extracted by any variant at k = {', '.join(map(str, empty_ks))}; those panels "
             "are left out.</p>" if empty_ks else "")
    body = [empty]
    for m in models:
        chart = charts.extraction_vs_sparsity(results, m, shown_ks) if shown_ks else None
        if chart is not None:
            body += [f"<h3>{html.escape(m)}</h3>" if multi else "", p.chart(f"extraction-sparsity-{m}", chart)]
        ppl_chart = charts.perplexity_vs_sparsity(results, m)
        if ppl_chart is not None:
            body.append(p.chart(f"perplexity-sparsity-{m}", ppl_chart))
    p.section("sparsity", "Extraction and perplexity against achieved sparsity",
              "<p class=note>One row of panels per family (at most six series each; colour, shape and dash mark each "
              "series). Each curve starts at the dense model; bars are Wilson 95% intervals. Achieved sparsity is the "
              "share of all prunable weights removed: subset strategies (attention, mlp, first25, last25) reach less "
              "of it at the same level. Random-control seeds (random, random-s1, ...) are separate series, so their "
              "spread shows.</p>", *body)

    body = []
    for m in models:
        if results.filter((pl.col("model") == m) & (pl.col("method") == DENSE)).height:
            body += [f"<h3>{html.escape(m)}</h3>" if multi else "",
                     p.chart(f"pareto-{m}", charts.memorization_vs_perplexity(results, m, k, front))]
        else:
            body.append(f"<p class=note>{html.escape(m)}: no dense row, so no perplexity change to plot.</p>")
    p.section("pareto", f"Memorization against perplexity cost (k={k})",
              "<p class=note>x: perplexity change over dense (%); y: extraction rate with Wilson 95% bars. The black "
              "step is the Pareto frontier (variants nothing beats on both), labelled; hover for the rest.</p>", *body)

    p.section("matched", f"Matched perplexity (k={k})",
              "<p class=note>Extraction at a fixed perplexity cost over dense, interpolated linearly in perplexity "
              "between the two levels (or dense and the first level) that bracket it; the band interpolates their "
              "Wilson bounds. – : the method's levels never reach that cost. Which method is lowest, and whether "
              "that is a detectable difference, is in the findings; no star without a test.</p>",
              *(("<h3>" + html.escape(m) + "</h3>" if multi else "") + _matched_html(matched, m) for m in models))

    body = []
    for m in models:
        dense = results.filter((pl.col("model") == m) & (pl.col("method") == DENSE))
        rows = dense if dense.height else results.filter(pl.col("model") == m)
        score = max(SCORES, key=lambda s: rows[f"mia_{s}_auc"][0])
        chart = charts.mia_vs_sparsity(results, m, score)
        if chart is not None:
            body += [f"<h3>{html.escape(m)}: {score}</h3>" if multi else f"<p class=note>Score: {score}.</p>",
                     p.chart(f"mia-{m}", chart)]
    p.section("mia", "Membership inference against achieved sparsity",
              "<p class=note>AUC of the membership score strongest on the dense model (loss, zlib ratio, Min-K% or "
              "Min-K%++), stratified bootstrap 95% bars, y-axis scaled to the data (chance 0.5 dashed when in view); "
              f"scores use the whole {max(ks) + suffix}-token window. Every score for every variant is in "
              "<a href=\"results.csv\">results.csv</a>.</p>", *body)

    if context.get("downstream"):
        p.section("downstream", "Downstream tasks (lm-evaluation-harness)", *_downstream_html(p, results, context, k))

    forgotten = {m: forgetting.analyse(m, samples.get(m), context.get("forgetting", {}).get(m, {}), results, k)
                 for m in models}
    forgotten = {m: r for m, r in forgotten.items() if r is not None and r.rows.height}
    for m, r in forgotten.items():  # its tests are listed (and written) with the model's other comparisons
        analyses[m].comparisons = pl.concat([analyses[m].comparisons, r.comparisons])
    if forgotten:
        table = pl.concat([r.rows for r in forgotten.values()], how="diagonal_relaxed")
        layers_chosen = pl.concat([r.layers for r in forgotten.values()])
        shown = table.select(
            "model", "method", "level", "units", *(pl.col(c).mul(100).round(1).alias(f"{c} (%)") for c in (
                "removal", "removal_low", "removal_high", "retain_fall", "retain_fall_low", "retain_fall_high",
                "perplexity_change", "specificity", "specificity_low", "specificity_high")),
            *(pl.col(c).mul(100).round(1).alias(f"{c} (points)") for c in ("vs_magnitude_forget_diff",
                                                                          "vs_random_forget_diff") if c in table.columns),
            "meets_target", "meets_with_ci")
        p.section("forgetting", f"Targeted forgetting (k={k})",
                  "<p class=note>localize-* masks prune the width units (attention heads, MLP neurons) a localization "
                  "method scores highest for a forget set of members the dense model extracts; the retain set is "
                  "every other extracted member, and perplexity the held-out text (both recorded in each mask's "
                  "header). Removal: the share of the forget set's dense extraction gone; retain fall: the same on "
                  "the retain set; specificity: removal minus retain fall. vs magnitude / vs random: forget-set "
                  "extraction minus that of global magnitude pruning or random units interpolated to the same "
                  "perplexity (negative: targeted forgets more). Its paired tests are their own Holm family per "
                  "model, listed with the comparisons (ids <code>forgetting:</code>).</p>",
                  "<ul>" + "".join(f"<li>{html.escape(v)}</li>" for r in forgotten.values() for v in r.verdict)
                  + "</ul>", _table(shown, left=2),
                  p.chart("forgetting-dose-response", charts.dose_response(table)),
                  "<p class=note>Where the chosen units sit, at each method's largest budget: which layers hold the "
                  "forget set's memorization by each method's account.</p>",
                  p.chart("forgetting-layers", charts.chosen_units_per_layer(layers_chosen)))

    comparisons = pl.concat([a.comparisons for a in analyses.values()])
    if comparisons.height:
        shown = comparisons.with_columns(
            pl.struct("effect", "unit").map_elements(lambda r: fmt_effect(r), return_dtype=pl.String).alias("effect"),
            pl.struct("ci_low", "ci_high", "unit").map_elements(lambda r: fmt_ci(r), return_dtype=pl.String).alias("95% CI"),
            pl.col("p").map_elements(fmt_p, return_dtype=pl.String),
            pl.col("p_holm").map_elements(fmt_p, return_dtype=pl.String).alias("Holm p"),
        ).select("model", "a", "b", "metric", "test", "n", "effect", "95% CI", "p", "Holm p", "verdict", "note")
        p.section("comparisons", "Paired comparisons",
                  f"<p class=note>All {comparisons.height} paired tests the report makes, Holm-corrected per model; also "
                  "<a href=\"comparisons.csv\">comparisons.csv</a>.</p>",
                  f"<details><summary>Show the {comparisons.height} tests</summary>{_table(shown, left=5)}</details>")

    calibration = tables.calibration_comparison(results, k)
    if calibration.height:
        p.section("calibration", f"Calibration sampling: random against cluster-based (CCDS, k={k})",
                  "<p class=note>The same method on the same number of calibration sequences, drawn at random or "
                  "evenly from k-means clusters of the dense model's mean hidden states (EvoP's CCDS). Negative Δ: "
                  "the cluster-sampled set forgets more or costs less (point differences).</p>",
                  _table(_fixed(calibration, percent=("extraction (random)", "extraction (ccds)"))))
    structured = tables.structured_comparison(results, k)
    if structured.height:
        search = [s for m in models for s in analyses[m].search]
        p.section("structured", f"Structured removal: SLEB, EvoP and memorization-aware EvoP (k={k})",
                  "<p class=note>SLEB removes blocks greedily by calibration loss; EvoP searches removal patterns by "
                  "calibration perplexity; evop-mem adds λ × the extraction rate on a search split of members that "
                  "evaluation never sees.</p>",
                  ("<ul>" + "".join(f"<li>{html.escape(v)}</li>" for v in search) + "</ul>") if search else "",
                  _table(_fixed(structured, percent=("achieved_sparsity", "extraction_rate", "ci_low", "ci_high"))
                         .rename({"achieved_sparsity": "achieved sparsity (%)", "extraction_rate": "extraction (%)",
                                  "ci_low": "CI low (%)", "ci_high": "CI high (%)"})))
    history = context.get("history")
    if history is not None and history.height:
        p.section("search", "EvoP search history",
                  f"<p class=note>{html.escape(' '.join(same_pattern(history)))} Fitness of the best pattern so far "
                  "(solid) and the population mean (dashed) per generation; the full history, with the best pattern, "
                  "is <a href=\"search_history.csv\">search_history.csv</a>.</p>",
                  p.chart("search-history", charts.search_history(history)))
    trials = context.get("trials")
    if trials is not None and trials.height:
        against = context["search_against_fixed"]
        verdicts = [f"{r['model']} {r['method']} at {r['level']:g}: the best trial ({r['best trial metric']}, "
                    f"objective {r['best trial objective']:.3f}) "
                    + ("beats" if r["search beats fixed"] else "does not beat")
                    + f" the best single fixed metric ({r['best fixed metric']}, {r['best fixed objective']:.3f}) at "
                    f"the same {r['removed units']} removed units." for r in against.iter_rows(named=True)
                    if r["best fixed metric"] is not None]
        p.section("trials", "AdaPruner trial history (beside EvoP's search)",
                  "<p class=note>Width pruning searched by optuna's TPE over the calibration subset, the importance "
                  "metric and the allocation; the objective is calibration perplexity at a fixed number of removed "
                  "heads and neurons (adapruner-mem adds λ × the search-split extraction rate, scored as evop-mem "
                  "scores). Points: each trial, by metric; line: the best so far.</p>",
                  ("<ul>" + "".join(f"<li>{html.escape(v)}</li>" for v in verdicts) + "</ul>") if verdicts else "",
                  _table(against), p.chart("trial-history", charts.trial_history(trials)))
    if dup.height:
        p.section("duplication", f"Extraction against duplication (k={k})",
                  "<p class=note>Canaries planted 0 times were never trained on: their rate is what the model guesses "
                  "without memorizing.</p>", p.chart("duplication", charts.extraction_vs_duplication(dup, k)),
                  *_kinds_html(context.get("kinds")))
    if layers.height:
        p.section("layers", "Achieved sparsity per block",
                  "<p class=note>Share of each block's prunable weights removed by each mask: uniform for layerwise "
                  "and N:M, uneven for global, OWL and the subset strategies, whole blocks for SLEB. Also "
                  "<a href=\"layer_sparsity.csv\">layer_sparsity.csv</a>.</p>",
                  p.chart("layer-sparsity", charts.layer_sparsity_heatmap(layers)))
    p.section("paper", "The paper's published values",
              f"<p class=note>Source: {html.escape(tables.PAPER_SOURCE)}. \"ours\" is filled where model and method "
              "match (nearest level, said so); \"direction here\" shows the same method against dense on our model "
              "either way. The paper gives no pruning level per value and, mostly, no k.</p>",
              _table(tables.paper_comparison(results, paper, context["paper_names"]), left=3))
    if context["examples"].height:
        p.section("examples", f"Extracted members (dense, k={k})",
                  "<p class=note>Suffixes are shown as a hash and their first tokens unless params set "
                  "<code>report.show_text: true</code>.</p>", _table(context["examples"]))
    detail = ["model", "method", "level", "n_samples", "n_extracted", "extraction_rate", "ci_low", "ci_high",
              "token_match_rate", "n_rechecked", "n_flipped", "perplexity", "achieved_sparsity", "compression"]
    names = {"extraction_rate": "extraction (%)", "ci_low": "CI low (%)", "ci_high": "CI high (%)",
             "token_match_rate": "token match (%)", "n_rechecked": "re-checked", "n_flipped": "flipped",
             "achieved_sparsity": "achieved sparsity (%)"}
    pct = [c for c in names if c not in ("n_rechecked", "n_flipped")]
    per_k = "".join(
        f"<details><summary>k = {kk}</summary>"
        + _table(results.filter(pl.col("k") == kk).select(detail).with_columns(
            *(pl.col(c).mul(100).round(2) for c in pct), pl.col("perplexity").round(3),
            pl.col("compression").round(4)).rename(names), cls="sortable", left=2) + "</details>" for kk in ks)
    glossary = "<dl class=box>" + "".join(f"<dt>{html.escape(a)}</dt><dd>{html.escape(b)}</dd>"
                                          for a, b in GLOSSARY.items()) + "</dl>"
    p.section("detail", "Detail per k", "<p class=note>Every row of results.csv, per k (rates in %).</p>", per_k,
              "<details><summary>Glossary of columns</summary>" + glossary + "</details>")
    files = [f for f in REPORT_FILES if f not in REPORT_DIRECTORIES and f != "report.html"]
    p.section("files", "Files beside this report",
              "<ul>" + "".join(f"<li><a href=\"{html.escape(f)}\">{html.escape(f)}</a></li>" for f in files)
              + f"<li><a href=\"{FIGURES}/\">{FIGURES}/</a>: every chart as SVG</li></ul>")
    p.section("provenance", "Appendix: provenance",
              "<details><summary>Where every row of results.csv came from (hashes shortened here, full there; "
              "<code>prunemem audit</code> re-checks all of them)</summary>"
              "<p><input type=search id=hash-search placeholder=\"filter by hash, method, model…\"></p>"
              + _table(tables.provenance_appendix(results, context["checkpoint_ids"]), left=2, table_id="provenance")
              + f"<p class=note>Built by {html.escape(context['built_by'])}.</p></details>")

    toc = "<nav><ol>" + "".join(f"<li><a href=\"#{a}\">{html.escape(t)}</a></li>" for a, t in p.toc) + "</ol></nav>"
    intro = ("<p class=note>Does pruning make a language model forget what it memorized, and what does that cost? A "
             "sample is <em>extracted</em> when greedy decoding from its k-token prefix reproduces its "
             f"{suffix}-token suffix exactly. Rates are over members.</p>")
    bundle = charts.javascript_bundle().replace("</script", "<\\/script")
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content=\"width=device-width\">"
            f"<title>prunemem report</title><style>{_CSS}</style></head><body><h1>prunemem report</h1>{intro}{toc}"
            f"{''.join(p.parts)}<script>{bundle}</script><script>{_JS}</script></body></html>\n")
    return page, p.figures, analyses


def same_pattern(history: pl.DataFrame) -> list[str]:
    """Sentences naming the levels at which a plain search (evop) and its memorization-aware one
    (evop-mem: the registry's ``search_split``) ended with the same removal pattern."""
    final = history.sort("generation").group_by(["model", "method", "level"], maintain_order=True).last()
    lines = []
    for (model, level), group in final.group_by(["model", "level"], maintain_order=True):
        patterns = dict(zip(group["method"], group["best_pattern"]))
        for aware in sorted((m for m in patterns if describe(m).search_split), key=order):
            for plain in sorted((m for m in patterns if not describe(m).search_split), key=order):
                same = patterns[plain] == patterns[aware]
                lines.append(f"{model}, level {level:g}: {plain} and {aware} "
                             + (f"chose the same pattern ({patterns[plain] or 'nothing removed'}), so they are the "
                                "same model." if same else "chose different patterns."))
    return lines
