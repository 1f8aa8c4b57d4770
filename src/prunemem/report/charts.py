"""Altair charts, rendered to inline SVG (vl-convert) so the report needs no CDN and is byte-stable."""

from __future__ import annotations

import io

import altair as alt
import polars as pl

from prunemem.plan import DENSE
from prunemem.prune.registry import describe


def to_svg(chart: alt.TopLevelMixin) -> str:
    buf = io.StringIO()
    chart.save(buf, format="svg")
    return buf.getvalue()


def _with_dense_origin(results: pl.DataFrame) -> pl.DataFrame:
    """Repeat the dense row under every pruning method so each curve starts at the unpruned baseline."""
    dense = results.filter(pl.col("method") == DENSE)
    pruned = results.filter(pl.col("method").map_elements(lambda m: describe(m).kind, return_dtype=pl.String)
                            == "mask")
    starts = [dense.with_columns(pl.lit(m).alias("method")) for m in pruned["method"].unique(maintain_order=True)]
    return pl.concat([*starts, pruned])


def _facet_models(chart, results: pl.DataFrame, **facet):
    """Facet by model (rows) only when there is more than one."""
    if results["model"].n_unique() > 1:
        facet["row"] = alt.Row("model:N", title="model")
    return chart.facet(**facet) if facet else chart


def extraction_vs_sparsity(results: pl.DataFrame) -> alt.Chart:
    """Extraction rate (Wilson 95% band) against achieved sparsity per method, one panel per k; perplexity beside."""
    data = _with_dense_origin(results)
    x = alt.X("achieved_sparsity:Q", title="achieved sparsity")
    color = alt.Color("method:N", title="method")
    base = alt.Chart(data)
    rate = _facet_models((base.mark_area(opacity=0.12).encode(x=x, y=alt.Y("ci_low:Q", title="extraction rate"),
                                                              y2="ci_high:Q", color=color)
                          + base.mark_line(point=True).encode(x=x, y="extraction_rate:Q", color=color)
                          ).properties(width=220, height=200), data, column=alt.Column("k:O", title="prefix length k"))
    ppl_data = data.unique(subset=["model", "method", "level"], maintain_order=True)
    ppl = _facet_models(alt.Chart(ppl_data).mark_line(point=True).encode(
        x=x, y=alt.Y("perplexity:Q", title="held-out perplexity", scale=alt.Scale(zero=False)), color=color,
    ).properties(width=220, height=200, title="perplexity"), ppl_data)
    return alt.hconcat(rate, ppl).resolve_scale(color="shared")


def mia_vs_sparsity(results: pl.DataFrame) -> alt.Chart:
    """Membership-inference AUC (bootstrap 95% CI) against achieved sparsity, one panel per score."""
    from prunemem.evaluate.mia import SCORES

    data = _with_dense_origin(results).unique(subset=["model", "method", "level"], maintain_order=True)
    long = pl.concat([data.select("model", "method", "level", "achieved_sparsity",
                                  pl.lit(score).alias("score"), pl.col(f"mia_{score}_auc").alias("auc"),
                                  pl.col(f"mia_{score}_auc_low").alias("low"),
                                  pl.col(f"mia_{score}_auc_high").alias("high"))
                      for score in SCORES])
    x = alt.X("achieved_sparsity:Q", title="achieved sparsity")
    color = alt.Color("method:N", title="method")
    base = alt.Chart(long)
    chance = base.mark_rule(strokeDash=[4, 4], color="gray").encode(y=alt.datum(0.5))
    return _facet_models((base.mark_line(point=True).encode(
        x=x, y=alt.Y("auc:Q", title="AUC", scale=alt.Scale(domain=[0, 1])), color=color)
        + base.mark_errorbar().encode(x=x, y="low:Q", y2="high:Q", color=color) + chance
    ).properties(width=200, height=180), long, column=alt.Column("score:N", title="membership score", sort=list(SCORES)))


def family(method: str) -> str:
    """The method's family in the registry: dense, pruning, control, quantization, low-rank."""
    return describe(method).family


def memorization_vs_perplexity(results: pl.DataFrame, k: int, front: pl.DataFrame) -> alt.Chart:
    """Every variant as a point: what it costs (perplexity) against what it removes (extraction at k),
    with the Pareto frontier (``tables.pareto_front``) drawn through the variants nothing beats."""
    on_front = front.filter(pl.col("k") == k).select("model", "method", "level", pl.lit(True).alias("front"))
    data = results.filter(pl.col("k") == k).join(on_front, on=["model", "method", "level"], how="left").with_columns(
        pl.col("front").fill_null(False),
        pl.col("method").map_elements(family, return_dtype=pl.String).alias("family"),
        pl.format("{} {}", pl.col("method"), pl.col("level")).alias("variant"))
    x = alt.X("perplexity:Q", title="held-out perplexity", scale=alt.Scale(zero=False, type="log"))
    y = alt.Y("extraction_rate:Q", title=f"extraction rate (k={k})")
    base = alt.Chart(data).encode(x=x, y=y)
    frontier = base.transform_filter(alt.datum.front).mark_line(
        interpolate="step-after", color="black", strokeWidth=1.2).encode(order="perplexity:Q")
    points = base.mark_point(filled=True, size=70).encode(
        color=alt.Color("family:N", title="family"), shape=alt.Shape("family:N", title="family"),
        tooltip=["variant:N", "extraction_rate:Q", "perplexity:Q", "compression:Q"])
    labels = base.mark_text(align="left", dx=6, dy=-4, fontSize=9).encode(
        text="variant:N", color=alt.Color("family:N", title="family"))
    return _facet_models((frontier + points + labels).properties(width=560, height=320), data)


def layer_sparsity_heatmap(table: pl.DataFrame) -> alt.Chart:
    """Achieved sparsity of every block under every mask."""
    data = table.with_columns(pl.format("{} {}", pl.col("method"), pl.col("level")).alias("variant"))
    return alt.Chart(data).mark_rect().encode(
        x=alt.X("block:O", title="transformer block"),
        y=alt.Y("variant:N", title="mask", sort=None),
        color=alt.Color("sparsity:Q", title="sparsity", scale=alt.Scale(domain=[0, 1], scheme="blues")),
        tooltip=["variant:N", "block:O", alt.Tooltip("sparsity:Q", format=".3f")],
    ).properties(width=28 * max(1, table["block"].n_unique()), height=12 * max(1, data["variant"].n_unique()))


def extraction_vs_duplication(table: pl.DataFrame, k: int) -> alt.Chart:
    """Carlini et al.'s curve: canary extraction against the number of planted copies."""
    x = alt.X("copies:O", title="copies of the canary in the training stream")
    color = alt.Color("variant:N", title="model variant")
    base = alt.Chart(table)
    return _facet_models((base.mark_line(point=True).encode(
        x=x, y=alt.Y("extraction_rate:Q", title=f"extraction rate (k={k})"), color=color)
        + base.mark_errorbar().encode(x=x, y=alt.Y("ci_low:Q", title=f"extraction rate (k={k})"), y2="ci_high:Q",
                                      color=color)).properties(width=420, height=260), table)


def search_history(history: pl.DataFrame) -> alt.Chart:
    """EvoP's best-so-far and mean fitness per generation, one panel per level (own y scales)."""
    data = history.unpivot(index=["model", "method", "level", "generation"], on=["best_fitness", "mean_fitness"],
                           variable_name="statistic", value_name="fitness").with_columns(
        pl.col("statistic").str.replace("_fitness", ""))
    chart = alt.Chart(data).mark_line(point=True).encode(
        x=alt.X("generation:Q", title="generation"),
        y=alt.Y("fitness:Q", title="fitness", scale=alt.Scale(zero=False, type="log")),
        color=alt.Color("method:N", title="method"),
        strokeDash=alt.StrokeDash("statistic:N", title="statistic", sort=["best", "mean"]),
        tooltip=["method:N", "generation:Q", "statistic:N", alt.Tooltip("fitness:Q", format=".2f")],
    ).properties(width=220, height=180)
    return _facet_models(chart, data, column=alt.Column("level:N", title="level")).resolve_scale(y="independent")
