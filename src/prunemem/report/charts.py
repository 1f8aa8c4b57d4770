"""Altair charts for the report: small multiples by family, at most six series a panel.

Each chart is a Vega-Lite spec that the page renders with vega-embed (its JavaScript inlined once,
from vl-convert's bundle, so nothing loads from the network); the same spec is written as SVG to
``reports/figures/`` by vl-convert. Series are told apart by colour (Okabe-Ito, colour-blind
safe) *and* by shape or dash; clicking a legend entry isolates that series; tooltips carry the
row's values and hashes.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import altair as alt
import polars as pl

from prunemem.errors import PrunememError
from prunemem.plan import DENSE
from prunemem.report.compare import GROUPS, group

MAX_SERIES = 6
# Okabe & Ito's colour-blind-safe palette (black left out: it is the dense reference)
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9"]
SHAPES = ["circle", "square", "triangle-up", "diamond", "cross", "triangle-down"]
DASHES = [[1, 0], [6, 3], [2, 2], [8, 3, 2, 3], [4, 4], [1, 3]]
WIDTH, HEIGHT = 230, 170

VL_VERSION = ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])  # the bundle matches altair's specs
alt.data_transformers.disable_max_rows()  # the data are ours and bounded by the grid; inlined on purpose


class Datasets:
    """A chart's data, kept once at the spec's top level (``datasets``) and referenced by name.

    Altair copies every sub-chart, data included, each time panels are combined; with names
    instead of inline rows a paper-sized grid's charts build in seconds, not a minute.
    """

    def __init__(self):
        self.values: dict[str, str] = {}

    def __call__(self, frame: pl.DataFrame) -> alt.NamedData:
        # CSV text, not row objects: a third of the bytes (Vega-Lite parses fields by their encoding type)
        text = frame.write_csv(float_precision=6)
        name = "d" + hashlib.sha256(text.encode()).hexdigest()[:16]
        self.values[name] = text
        return alt.NamedData(name=name, format=alt.DataFormat(type="csv"))

    def figure(self, chart) -> "Figure":
        return Figure(chart, self.values)


class Figure:
    """A finished chart: an altair chart or an already composed Vega-Lite dict, plus its named data."""

    def __init__(self, chart, datasets: dict):
        self.chart, self.datasets = chart, datasets

    def to_dict(self, validate: bool = True) -> dict:
        if isinstance(self.chart, dict):
            spec = {"$schema": alt.SCHEMA_URL, **self.chart}
        else:
            spec = self.chart.to_dict(validate=validate)
        spec["datasets"] = {**spec.get("datasets", {}), **self.datasets}
        return spec


def javascript_bundle() -> str:
    """vega-embed, Vega-Lite and Vega as one script (vl-convert bundles them), inlined once in the page.

    Bundling takes seconds of CPU, so the result is kept under the user's cache directory, keyed by
    the vl-convert and Vega-Lite versions that produced it (same inputs, same bytes)."""
    import os

    import vl_convert

    from prunemem.provenance import atomic_path

    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "prunemem"
    path = cache / f"vega-bundle-{vl_convert.__version__}-vl{VL_VERSION}.js"
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        pass
    bundle = vl_convert.javascript_bundle(vl_version=VL_VERSION)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(bundle, encoding="utf-8")
    except (OSError, PrunememError):  # a read-only home only costs the seconds again next time
        pass
    return bundle


def spec_to_svg(spec: dict) -> str:
    """A figure for papers: the same Vega-Lite spec the page embeds, rendered by vl-convert."""
    import vl_convert

    return vl_convert.vegalite_to_svg(spec, vl_version=VL_VERSION)


def panels(methods: list[str]) -> list[tuple[str, list[str]]]:
    """(panel title, methods) per group (compare.GROUPS, from the registry's traits) in order, groups over MAX_SERIES split in parts."""
    out = []
    for fam in GROUPS:
        mine = [m for m in methods if group(m) == fam]
        parts = [mine[i:i + MAX_SERIES] for i in range(0, len(mine), MAX_SERIES)]
        out += [(fam if len(parts) == 1 else f"{fam} ({i + 1}/{len(parts)})", part) for i, part in enumerate(parts)]
    return out


def _series(methods: list[str], name: str, legend_title: str = "method"):
    """Colour, shape and dash encodings over one panel's methods, and its legend-bound selection."""
    scale = dict(domain=methods)
    pick = alt.selection_point(name=name, fields=["method"], bind="legend")
    enc = dict(color=alt.Color("method:N", title=legend_title, scale=alt.Scale(**scale, range=PALETTE[:len(methods)]),
                               legend=alt.Legend(symbolOpacity=1, orient="right")),
               shape=alt.Shape("method:N", title=legend_title, scale=alt.Scale(**scale, range=SHAPES[:len(methods)])),
               strokeDash=alt.StrokeDash("method:N", title=legend_title,
                                         scale=alt.Scale(**scale, range=DASHES[:len(methods)])),
               opacity=alt.condition(pick, alt.value(1.0), alt.value(0.12)))
    return enc, pick


def _with_dense_origin(rows: pl.DataFrame, methods: list[str]) -> pl.DataFrame:
    """Repeat each model's dense row under every method so each curve starts at the unpruned baseline."""
    dense = rows.filter(pl.col("method") == DENSE)
    return pl.concat([*(dense.with_columns(pl.lit(m).alias("method")) for m in methods),
                      rows.filter(pl.col("method").is_in(methods))], how="vertical_relaxed")


def variant_label(method: str, level: float) -> str:
    return method if method == DENSE else f"{method}@{level:g}"


def _panel_spec(chart) -> dict:
    spec = chart.to_dict(validate=False)
    for key in ("$schema", "config", "datasets"):
        spec.pop(key, None)
    return spec


def _panels_like(first, panels_: list[tuple[str, str, str, list[str]]]) -> list[dict]:
    """Panel specs for many families from one altair-built panel.

    ``panels_`` holds (data name, selection name, title, methods) per panel, the first being the
    one ``first`` was built for. Building each panel through altair costs a quarter of a second
    (schema-object construction); the others differ only in these four things, so they are
    re-pointed copies of the first's dict: same encodings, same marks, same tooltips (and views
    renamed, as Vega needs each view's name unique).
    """
    template = _panel_spec(first)
    data0, pick0, title0, methods0 = panels_[0]
    text = json.dumps(template)
    out = [template]
    views = sorted(set(re.findall(r'"(view_[0-9A-Za-z_]+)"', text)))  # altair's unit names: unique per Vega view
    for i, (data, pick, title, methods) in enumerate(panels_[1:], 1):
        copy = text.replace(data0, data).replace(f'"{pick0}"', f'"{pick}"')
        for view in views:
            copy = copy.replace(f'"{view}"', f'"{view}_{i}"')
        spec = json.loads(copy)
        _retarget(spec, title0, title, methods)
        out.append(spec)
    return out


_RANGES = {"color": PALETTE, "shape": SHAPES, "strokeDash": DASHES}


def _retarget(node, title0: str, title: str, methods: list[str]) -> None:
    """Point one panel's method scales at its own methods and swap its title (in place)."""
    if isinstance(node, dict):
        for channel, ranges in _RANGES.items():
            enc = node.get(channel)
            if isinstance(enc, dict) and enc.get("field") == "method" and "scale" in enc:
                enc["scale"]["domain"] = methods
                enc["scale"]["range"] = ranges[:len(methods)]
        for key, value in node.items():
            if key == "title" and isinstance(value, str) and title0 in value:
                node[key] = value.replace(title0, title)
            else:
                _retarget(value, title0, title, methods)
    elif isinstance(node, list):
        for value in node:
            _retarget(value, title0, title, methods)


def _wrap(charts: list, per_row: int = 3) -> dict:
    """Panels three to a row, each with its own legend, as one spec: fits a 1,280 px page.

    The concatenation is written as plain Vega-Lite rather than with alt.hconcat/vconcat, whose
    merging of each panel's legend selection deep-copies every panel once per level of nesting
    (a minute for a paper-sized grid)."""
    independent = {"scale": {"color": "independent", "shape": "independent", "strokeDash": "independent"},
                   "legend": {"color": "independent", "shape": "independent", "strokeDash": "independent"}}
    panels_ = [c if isinstance(c, dict) else _panel_spec(c) for c in charts]
    rows = [{"hconcat": panels_[i:i + per_row], "resolve": independent} for i in range(0, len(panels_), per_row)]
    return {"vconcat": rows, "resolve": independent}


def _hashes(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(
        pl.col("mask_sha256").fill_null("-").str.slice(0, 12).alias("mask"),
        pl.col("metrics_sha256").str.slice(0, 12).alias("metrics"))


TOOLTIP = [alt.Tooltip("model:N"), alt.Tooltip("method:N"), alt.Tooltip("level:Q", format="g"),
           alt.Tooltip("achieved_sparsity:Q", title="achieved sparsity", format=".1%"),
           alt.Tooltip("extraction_rate:Q", title="extraction", format=".2%"),
           alt.Tooltip("ci_low:Q", title="CI low", format=".2%"), alt.Tooltip("ci_high:Q", title="CI high", format=".2%"),
           alt.Tooltip("perplexity:Q", format=".2f"), alt.Tooltip("mask:N", title="mask sha256"),
           alt.Tooltip("metrics:N", title="metrics sha256")]


def informative_ks(results: pl.DataFrame) -> tuple[list[int], list[int]]:
    """(ks where some variant extracts something, ks where nothing is extracted at all)."""
    ks = sorted(results["k"].unique().to_list())
    some = set(results.filter(pl.col("n_extracted") > 0)["k"].unique().to_list())
    return [k for k in ks if k in some], [k for k in ks if k not in some]


def _family_panels(ds, rows: pl.DataFrame, columns: tuple[str, ...], pick: str) -> list[tuple]:
    """(dataset name, selection name, title, methods) of each family panel; [] when no method has one."""
    methods = [m for m in rows["method"].unique(maintain_order=True).to_list() if m != DENSE]
    return [(ds(_with_dense_origin(rows, part).select(*columns)).name, f"{pick}_{i}", title, part)
            for i, (title, part) in enumerate(panels(methods))]


def extraction_vs_sparsity(results: pl.DataFrame, model: str, ks: list[int]) -> Figure | None:
    """Extraction (Wilson 95% bars) against achieved sparsity: one panel per family (one column per k)."""
    ds = Datasets()
    rows = _hashes(results.filter((pl.col("model") == model) & pl.col("k").is_in(ks)))
    names = _family_panels(ds, rows, ("model", "method", "level", "k", "achieved_sparsity", "extraction_rate",
                                      "ci_low", "ci_high", "perplexity", "mask", "metrics"), "pick_sparsity")
    if not names:
        return None
    data0, pick0, title0, part0 = names[0]
    data = alt.NamedData(name=data0, format=alt.DataFormat(type="csv"))
    enc, pick = _series(part0, pick0)
    base = alt.Chart(data).encode(x=alt.X("achieved_sparsity:Q", title="achieved sparsity", axis=alt.Axis(format="%")))
    y = alt.Y("extraction_rate:Q", title="extraction rate", axis=alt.Axis(format="%"))
    layer = (base.mark_line(point=True).encode(y=y, tooltip=TOOLTIP, **enc)
             + base.mark_errorbar().encode(y=alt.Y("ci_low:Q", title="extraction rate"), y2="ci_high:Q",
                                           color=enc["color"], opacity=enc["opacity"])
             ).add_params(pick).properties(width=WIDTH, height=HEIGHT)
    if len(ks) == 1:  # one k: plain panels, wrapped three to a row
        first = layer.properties(title=f"{title0} (k={ks[0]})")
    else:
        first = layer.facet(column=alt.Column("k:O", title=f"{title0}: prefix length k"), data=data)
    return ds.figure(_wrap(_panels_like(first, names), 3 if len(ks) == 1 else 1))


def perplexity_vs_sparsity(results: pl.DataFrame, model: str) -> Figure | None:
    """Held-out perplexity against achieved sparsity, one panel per family."""
    ds = Datasets()
    rows = _hashes(results.filter(pl.col("model") == model).unique(subset=["method", "level"], maintain_order=True))
    names = _family_panels(ds, rows, ("model", "method", "level", "achieved_sparsity", "perplexity",
                                      "extraction_rate", "ci_low", "ci_high", "mask", "metrics"), "pick_ppl")
    if not names:
        return None
    data0, pick0, title0, part0 = names[0]
    enc, pick = _series(part0, pick0)
    first = alt.Chart(alt.NamedData(name=data0, format=alt.DataFormat(type="csv")), title=title0).mark_line(
        point=True).encode(
        x=alt.X("achieved_sparsity:Q", title="achieved sparsity", axis=alt.Axis(format="%")),
        y=alt.Y("perplexity:Q", title="held-out perplexity", scale=alt.Scale(zero=False)),
        tooltip=TOOLTIP, **enc).add_params(pick).properties(width=WIDTH, height=HEIGHT)
    return ds.figure(_wrap(_panels_like(first, names)))


def memorization_vs_perplexity(results: pl.DataFrame, model: str, k: int, front: pl.DataFrame) -> alt.TopLevelMixin:
    """Every variant: % perplexity change over dense (linear) against extraction at k (Wilson bars);
    the Pareto frontier drawn and labelled, the rest named on hover."""
    rows = _hashes(results.filter((pl.col("model") == model) & (pl.col("k") == k)))
    dense = rows.filter(pl.col("method") == DENSE)
    base_ppl = float(dense["perplexity"][0]) if dense.height else float(rows["perplexity"].min())
    on_front = front.filter((pl.col("k") == k) & (pl.col("model") == model)).select(
        "method", "level", pl.lit(True).alias("front"))
    data = rows.join(on_front, on=["method", "level"], how="left").with_columns(
        pl.col("front").fill_null(False),
        pl.col("method").map_elements(group, return_dtype=pl.String).alias("family"),
        (100 * (pl.col("perplexity") / base_ppl - 1)).alias("ppl_change"),
        pl.struct("method", "level").map_elements(lambda r: variant_label(r["method"], r["level"]),
                                                  return_dtype=pl.String).alias("variant")).select(
        "model", "method", "level", "variant", "family", "front", "ppl_change", "achieved_sparsity", "extraction_rate",
        "ci_low", "ci_high", "perplexity", "mask", "metrics")
    fams = [f for f in (DENSE, *GROUPS) if f in set(data["family"])]
    pick = alt.selection_point(name="pick_pareto", fields=["family"], bind="legend")
    scale = dict(domain=fams)
    color = alt.Color("family:N", title="family", scale=alt.Scale(**scale, range=(["#000000"] + PALETTE)[:len(fams)]),
                      legend=alt.Legend(symbolOpacity=1))
    shape = alt.Shape("family:N", title="family", scale=alt.Scale(**scale, range=(["cross"] + SHAPES)[:len(fams)]))
    x = alt.X("ppl_change:Q", title="perplexity change over dense (%)")
    ds = Datasets()
    base = alt.Chart(ds(data)).encode(x=x)
    opacity = alt.condition(pick, alt.value(1.0), alt.value(0.15))
    points = base.mark_point(filled=True, size=60).encode(
        y=alt.Y("extraction_rate:Q", title=f"extraction rate (k={k})", axis=alt.Axis(format="%")),
        color=color, shape=shape, opacity=opacity,
        tooltip=[alt.Tooltip("variant:N"), alt.Tooltip("ppl_change:Q", title="Δ perplexity %", format="+.1f"),
                 *TOOLTIP[3:]]).add_params(pick)
    bars = base.mark_errorbar().encode(y=alt.Y("ci_low:Q", title=f"extraction rate (k={k})"), y2="ci_high:Q",
                                       color=color, opacity=opacity)
    frontier = base.transform_filter(alt.datum.front).mark_line(interpolate="step-after", color="black",
                                                                 strokeWidth=1).encode(
        y="extraction_rate:Q", order="ppl_change:Q")
    labels = base.transform_filter(alt.datum.front).mark_text(align="left", dx=7, dy=-6, fontSize=10).encode(
        y="extraction_rate:Q", text="variant:N")
    return ds.figure((bars + frontier + points + labels).properties(width=760, height=320))


def _interval_panels(ds: Datasets, rows: pl.DataFrame, value: str, pick: str) -> list[tuple]:
    """(data name, selection name, title, methods) of each family panel of ``value`` and its
    ``low``-``high`` interval against achieved sparsity, every curve starting at dense."""
    methods = [m for m in rows["method"].unique(maintain_order=True).to_list() if m != DENSE]
    out = []
    for i, (title, part) in enumerate(panels(methods)):
        data = ds(_with_dense_origin(rows, part).select("model", "method", "level", "achieved_sparsity", value, "low",
                                                        "high", "extraction_rate", "ci_low", "ci_high", "perplexity",
                                                        "mask", "metrics"))
        out.append((data.name, f"{pick}_{i}", title, part))
    return out


def mia_vs_sparsity(results: pl.DataFrame, model: str, score: str) -> Figure | None:
    """One membership score's AUC (bootstrap 95% bars) against achieved sparsity, one panel per family,
    the y-axis scaled to the data; chance (0.5) dashed when in range."""
    ds = Datasets()
    rows = _hashes(results.filter(pl.col("model") == model).unique(subset=["method", "level"], maintain_order=True))
    rows = rows.with_columns(pl.col(f"mia_{score}_auc").alias("auc"), pl.col(f"mia_{score}_auc_low").alias("low"),
                             pl.col(f"mia_{score}_auc_high").alias("high"))
    names = _interval_panels(ds, rows, "auc", "pick_mia")
    if not names:
        return None
    lo, hi = float(rows["low"].min()), float(rows["high"].max())
    pad = max(0.01, 0.05 * (hi - lo))
    domain = [max(0.0, lo - pad), min(1.0, hi + pad)]
    data0, pick0, title0, part0 = names[0]
    data = alt.NamedData(name=data0, format=alt.DataFormat(type="csv"))
    enc, pick = _series(part0, pick0)
    y_title = f"{score} AUC"
    base = alt.Chart(data, title=title0).encode(
        x=alt.X("achieved_sparsity:Q", title="achieved sparsity", axis=alt.Axis(format="%")))
    layer = (base.mark_line(point=True).encode(
        y=alt.Y("auc:Q", title=y_title, scale=alt.Scale(domain=domain, zero=False)),
        tooltip=[*TOOLTIP[:4], alt.Tooltip("auc:Q", title=y_title, format=".3f"),
                 alt.Tooltip("low:Q", format=".3f"), alt.Tooltip("high:Q", format=".3f"), *TOOLTIP[-2:]], **enc)
        + base.mark_errorbar().encode(y=alt.Y("low:Q", title=y_title), y2="high:Q", color=enc["color"],
                                      opacity=enc["opacity"]))
    if domain[0] <= 0.5 <= domain[1]:
        layer += alt.Chart(data).mark_rule(strokeDash=[4, 4], color="gray").encode(y=alt.datum(0.5))
    first = layer.add_params(pick).properties(width=WIDTH, height=HEIGHT)
    return ds.figure(_wrap(_panels_like(first, names)))


def layer_sparsity_heatmap(table: pl.DataFrame) -> alt.Chart:
    """Achieved sparsity of every block under every mask."""
    data = table.with_columns(pl.struct("method", "level").map_elements(
        lambda r: variant_label(r["method"], r["level"]), return_dtype=pl.String).alias("variant"),
        pl.col("sparsity").round(4)).select("model", "variant", "block", "sparsity")
    blocks = max(1, table["block"].n_unique())
    ds = Datasets()
    chart = alt.Chart(ds(data)).mark_rect().encode(
        x=alt.X("block:O", title="transformer block"),
        y=alt.Y("variant:N", title="mask", sort=None),
        color=alt.Color("sparsity:Q", title="sparsity", scale=alt.Scale(domain=[0, 1], scheme="blues")),
        tooltip=["model:N", "variant:N", "block:O", alt.Tooltip("sparsity:Q", format=".3f")],
    ).properties(width=min(900, 24 * blocks), height=11 * max(1, data.filter(
        pl.col("model") == data["model"][0])["variant"].n_unique()))
    if data["model"].n_unique() > 1:
        return ds.figure(chart.facet(row=alt.Row("model:N", title="model")).resolve_scale(y="independent"))
    return ds.figure(chart)


def extraction_vs_duplication(table: pl.DataFrame, k: int) -> alt.TopLevelMixin:
    """Carlini et al.'s curve: canary extraction against planted copies, dense and up to five levels of global."""
    variants = table["variant"].unique(maintain_order=True).to_list()[:MAX_SERIES]
    data = table.filter(pl.col("variant").is_in(variants)).rename({"variant": "method"})
    enc, pick = _series(variants, "pick_dup", "variant")
    x = alt.X("copies:O", title="copies of the canary in the training stream")
    y_title = f"extraction rate (k={k})"
    base = alt.Chart(data).encode(x=x)
    chart = (base.mark_line(point=True).encode(
        y=alt.Y("extraction_rate:Q", title=y_title, axis=alt.Axis(format="%")),
        tooltip=["model:N", alt.Tooltip("method:N", title="variant"), "copies:O", "hits:Q", "n:Q",
                 alt.Tooltip("extraction_rate:Q", format=".1%"), alt.Tooltip("ci_low:Q", format=".1%"),
                 alt.Tooltip("ci_high:Q", format=".1%")], **enc)
        + base.mark_errorbar().encode(y=alt.Y("ci_low:Q", title=y_title), y2="ci_high:Q", color=enc["color"],
                                      opacity=enc["opacity"])).add_params(pick).properties(width=420, height=240)
    if data["model"].n_unique() > 1:
        return chart.facet(row=alt.Row("model:N", title="model"))
    return chart


def search_history(history: pl.DataFrame) -> alt.TopLevelMixin:
    """EvoP's best-so-far (solid) and mean (dashed) fitness per generation, one panel per model and level."""
    data = history.unpivot(index=["model", "method", "level", "generation", "best_pattern"],
                           on=["best_fitness", "mean_fitness"], variable_name="statistic",
                           value_name="fitness").with_columns(
        pl.col("statistic").str.replace("_fitness", ""),
        pl.col("level").map_elements(lambda v: f"{v:g}", return_dtype=pl.String))
    methods = data["method"].unique(maintain_order=True).to_list()[:MAX_SERIES]
    enc, pick = _series(methods, "pick_history")
    enc["strokeDash"] = alt.StrokeDash("statistic:N", title="statistic", sort=["best", "mean"])
    ds = Datasets()
    chart = alt.Chart(ds(data)).mark_line(point=True).encode(
        x=alt.X("generation:Q", title="generation"),
        y=alt.Y("fitness:Q", title="fitness (lower is better)", scale=alt.Scale(zero=False)),
        tooltip=["model:N", "method:N", "level:N", "generation:Q", "statistic:N", alt.Tooltip("fitness:Q", format=".3f"),
                 alt.Tooltip("best_pattern:N", title="best pattern")], **enc,
    ).add_params(pick).properties(width=WIDTH, height=150)
    facet = {"column": alt.Column("level:N", title="level")}
    if data["model"].n_unique() > 1:
        facet["row"] = alt.Row("model:N", title="model")
    return ds.figure(chart.facet(**facet).resolve_scale(y="independent"))


def trial_history(trials: pl.DataFrame) -> alt.TopLevelMixin:
    """AdaPruner's objective per trial (points, coloured by importance metric) and the best so far (line),
    one panel per model and level."""
    data = trials.filter(pl.col("state") == "complete").with_columns(
        pl.col("level").map_elements(lambda v: f"{v:g}", return_dtype=pl.String))
    ds = Datasets()
    base = alt.Chart(ds(data))
    points = base.mark_point(filled=True).encode(
        x=alt.X("trial:Q", title="trial"), y=alt.Y("value:Q", title="objective (lower is better)",
                                                   scale=alt.Scale(zero=False)),
        color=alt.Color("metric:N", title="importance metric"), shape=alt.Shape("method:N", title="method"),
        tooltip=["model:N", "method:N", "level:N", "trial:Q", "metric:N", "allocation:N", "windows:Q", "cluster:N",
                 alt.Tooltip("value:Q", format=".3f"), alt.Tooltip("perplexity:Q", format=".3f"),
                 alt.Tooltip("extraction:Q", format=".3f")])
    line = base.mark_line().encode(x="trial:Q", y="best_value:Q", detail="method:N",
                                   strokeDash=alt.StrokeDash("method:N", title="best so far"))
    chart = alt.layer(points, line).properties(width=WIDTH, height=150)
    facet = {"column": alt.Column("level:N", title="level")}
    if data["model"].n_unique() > 1:
        facet["row"] = alt.Row("model:N", title="model")
    return ds.figure(chart.facet(**facet).resolve_scale(y="independent"))


_MEASURES = {"forget": "forget extraction / dense", "retain": "retain extraction / dense",
             "perplexity": "perplexity change"}


def dose_response(table: pl.DataFrame) -> Figure:
    """Targeted forgetting: forget and retain extraction (share of dense) and perplexity change against the
    share of units pruned, one column per localize method, 95% CI bands (a share's band clipped to 0-100%;
    ``report.forgetting``)."""
    rows = []
    for r in table.iter_rows(named=True):
        base = {"model": r["model"], "method": r["method"], "budget": f"{r['level']:g}", "units": r["units"]}
        rows += [{**base, "share": r["unit_share"], "measure": _MEASURES["forget"], "value": 1 - r["removal"],
                  "low": 1 - r["removal_high"], "high": 1 - r["removal_low"]},
                 {**base, "share": r["unit_share"], "measure": _MEASURES["retain"], "value": 1 - r["retain_fall"],
                  "low": 1 - r["retain_fall_high"], "high": 1 - r["retain_fall_low"]},
                 {**base, "share": r["unit_share"], "measure": _MEASURES["perplexity"],
                  "value": r["perplexity_change"], "low": r["perplexity_low"], "high": r["perplexity_high"]}]
    for (model, method), _ in table.group_by(["model", "method"], maintain_order=True):  # every curve starts at dense
        for measure, value in ((_MEASURES["forget"], 1.0), (_MEASURES["retain"], 1.0), (_MEASURES["perplexity"], 0.0)):
            rows.append({"model": model, "method": method, "budget": "dense", "units": 0, "share": 0.0,
                         "measure": measure, "value": value, "low": value, "high": value})
    data = pl.DataFrame(rows).sort("model", "method", "measure", "share").with_columns(  # a share's band stays in 0-1
        low=pl.when(pl.col("measure") == _MEASURES["perplexity"]).then(pl.col("low")).otherwise(pl.col("low").clip(0, 1)),
        high=pl.when(pl.col("measure") == _MEASURES["perplexity"]).then(pl.col("high"))
        .otherwise(pl.col("high").clip(0, 1)))
    ds = Datasets()
    base = alt.Chart(ds(data)).encode(x=alt.X("share:Q", title="share of units pruned", axis=alt.Axis(format="%")))
    band = base.mark_area(opacity=0.25, color=PALETTE[0]).encode(y=alt.Y("low:Q", title=None), y2="high:Q")
    line = base.mark_line(point=True, color=PALETTE[0]).encode(
        y=alt.Y("value:Q", title=None, axis=alt.Axis(format="%")),
        tooltip=["model:N", "method:N", "budget:N", "units:Q", alt.Tooltip("share:Q", format=".2%"),
                 "measure:N", alt.Tooltip("value:Q", format=".1%"), alt.Tooltip("low:Q", format=".1%"),
                 alt.Tooltip("high:Q", format=".1%")])
    facet = {"column": alt.Column("method:N", title=None),
             "row": alt.Row("measure:N", title=None, sort=list(_MEASURES.values()))}
    chart = (band + line).properties(width=170, height=120)
    if data["model"].n_unique() > 1:
        chart = alt.vconcat(*[chart.transform_filter(alt.datum.model == m).facet(**facet).properties(title=m)
                              .resolve_scale(y="independent") for m in data["model"].unique(maintain_order=True)])
        return ds.figure(chart)
    return ds.figure(chart.facet(**facet).resolve_scale(y="independent"))


def chosen_units_per_layer(layers: pl.DataFrame) -> Figure:
    """Where the chosen units sit: units per block and kind at each method's largest budget."""
    top = layers.join(layers.group_by("model", "method").agg(pl.col("level").max().alias("top")),
                      on=["model", "method"]).filter(pl.col("level") == pl.col("top"))
    data = top.with_columns(pl.col("level").map_elements(lambda v: f"{v:g}", return_dtype=pl.String).alias("budget")
                            ).select("model", "method", "budget", "block", "kind", "units")
    ds = Datasets()
    chart = alt.Chart(ds(data)).mark_bar().encode(
        x=alt.X("block:O", title="transformer block"), y=alt.Y("units:Q", title="chosen units"),
        color=alt.Color("kind:N", title="unit", scale=alt.Scale(domain=["head", "neuron"], range=PALETTE[:2])),
        xOffset="kind:N",
        tooltip=["model:N", "method:N", "budget:N", "block:O", "kind:N", "units:Q"],
    ).properties(width=150, height=120)
    facet = {"column": alt.Column("method:N", title=None)}
    if data["model"].n_unique() > 1:
        facet["row"] = alt.Row("model:N", title="model")
    return ds.figure(chart.facet(**facet).resolve_scale(y="independent"))


def downstream_vs_sparsity(results: pl.DataFrame, model: str, column: str, title: str) -> Figure | None:
    """One downstream task metric (± 1.96 lm-eval stderr) against achieved sparsity, one panel per
    family, each curve from the dense model, as perplexity_vs_sparsity."""
    ds = Datasets()
    rows = _hashes(results.filter(pl.col("model") == model).unique(subset=["method", "level"], maintain_order=True))
    stderr = pl.col(f"{column}_stderr").fill_null(0.0)
    rows = rows.with_columns(pl.col(column).alias("score"), (pl.col(column) - 1.96 * stderr).alias("low"),
                             (pl.col(column) + 1.96 * stderr).alias("high"))
    names = _interval_panels(ds, rows, "score", f"pick_{column}")
    if not names or rows["score"].null_count() == rows.height:
        return None
    data0, pick0, title0, part0 = names[0]
    enc, pick = _series(part0, pick0)
    base = alt.Chart(alt.NamedData(name=data0, format=alt.DataFormat(type="csv")), title=title0).encode(
        x=alt.X("achieved_sparsity:Q", title="achieved sparsity", axis=alt.Axis(format="%")))
    first = (base.mark_line(point=True).encode(
        y=alt.Y("score:Q", title=title, scale=alt.Scale(zero=False)),
        tooltip=[*TOOLTIP[:4], alt.Tooltip("score:Q", title=title, format=".3f"), *TOOLTIP[4:]], **enc)
        + base.mark_errorbar().encode(y=alt.Y("low:Q", title=title), y2="high:Q", color=enc["color"],
                                      opacity=enc["opacity"])).add_params(pick).properties(width=WIDTH, height=HEIGHT)
    return ds.figure(_wrap(_panels_like(first, names)))


def memorization_vs_downstream(results: pl.DataFrame, model: str, k: int, column: str, title: str) -> Figure:
    """Every variant: a downstream metric (higher is better) against extraction at k (Wilson bars);
    the frontier of variants no other beats on both (more accuracy, less extraction) drawn and labelled."""
    rows = _hashes(results.filter((pl.col("model") == model) & (pl.col("k") == k) & pl.col(column).is_not_null()))
    ordered = rows.sort(column, "extraction_rate", descending=[True, False])
    best = pl.col("extraction_rate").cum_min().shift(1, fill_value=float("inf"))
    front = ordered.filter(pl.col("extraction_rate") < best).select("method", "level", pl.lit(True).alias("front"))
    data = rows.join(front, on=["method", "level"], how="left").with_columns(
        pl.col("front").fill_null(False), pl.col(column).alias("score"),
        pl.col("method").map_elements(group, return_dtype=pl.String).alias("family"),
        pl.struct("method", "level").map_elements(lambda r: variant_label(r["method"], r["level"]),
                                                  return_dtype=pl.String).alias("variant")).select(
        "model", "method", "level", "variant", "family", "front", "score", "achieved_sparsity", "extraction_rate",
        "ci_low", "ci_high", "perplexity", "mask", "metrics")
    fams = [f for f in (DENSE, *GROUPS) if f in set(data["family"])]
    pick = alt.selection_point(name=f"pick_front_{column}", fields=["family"], bind="legend")
    scale = dict(domain=fams)
    color = alt.Color("family:N", title="family", scale=alt.Scale(**scale, range=(["#000000"] + PALETTE)[:len(fams)]),
                      legend=alt.Legend(symbolOpacity=1))
    shape = alt.Shape("family:N", title="family", scale=alt.Scale(**scale, range=(["cross"] + SHAPES)[:len(fams)]))
    ds = Datasets()
    base = alt.Chart(ds(data)).encode(x=alt.X("score:Q", title=title, scale=alt.Scale(zero=False)))
    opacity = alt.condition(pick, alt.value(1.0), alt.value(0.15))
    y_title = f"extraction rate (k={k})"
    points = base.mark_point(filled=True, size=60).encode(
        y=alt.Y("extraction_rate:Q", title=y_title, axis=alt.Axis(format="%")), color=color, shape=shape,
        opacity=opacity, tooltip=[alt.Tooltip("variant:N"), alt.Tooltip("score:Q", title=title, format=".3f"),
                                  *TOOLTIP[3:]]).add_params(pick)
    bars = base.mark_errorbar().encode(y=alt.Y("ci_low:Q", title=y_title), y2="ci_high:Q", color=color,
                                       opacity=opacity)
    frontier = base.transform_filter(alt.datum.front).mark_line(interpolate="step-before", color="black",
                                                                 strokeWidth=1).encode(
        y="extraction_rate:Q", order=alt.Order("score:Q", sort="descending"))
    labels = base.transform_filter(alt.datum.front).mark_text(align="left", dx=7, dy=-6, fontSize=10).encode(
        y="extraction_rate:Q", text="variant:N")
    return ds.figure((bars + frontier + points + labels).properties(width=760, height=320))
