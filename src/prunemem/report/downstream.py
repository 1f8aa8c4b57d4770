"""The report's downstream section: each task's headline metric per variant, tested against dense.

A task's headline metric is the first lm-eval reports for it (``acc`` for multiple choice,
``exact_match`` for generation). Every variant scores the same documents (lm-eval's ``limit``
takes the first N of a fixed split), so a variant is compared with dense on the per-document
outcomes in both per-sample logs: the difference with Newcombe's paired interval and an exact
McNemar p-value, Holm-corrected over every (variant, task) of the model. lm-eval's own stderr is
a per-variant interval and says nothing about a difference.
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl

from prunemem.errors import PrunememError
from prunemem.evaluate.stats import holm, mcnemar_exact, paired_rate_difference
from prunemem.plan import DENSE, Plan
from prunemem.report.tables import downstream_summary

SCHEMA = {"model": pl.String, "method": pl.String, "level": pl.Float64, "task": pl.String, "metric": pl.String,
          "column": pl.String, "n": pl.Int64, "dense": pl.Float64, "variant": pl.Float64, "difference": pl.Float64,
          "ci_low": pl.Float64, "ci_high": pl.Float64, "p": pl.Float64, "p_holm": pl.Float64}


def headline(summary: dict, order: list[str] | None = None) -> list[tuple[str, str, str]]:
    """(task, lm-eval metric key, results.csv column) of each task's first metric, in ``order``
    (params downstream.tasks) where given."""
    from prunemem.downstream.run import columns

    out = []
    rank = {name: i for i, name in enumerate(order or [])}
    for task, info in sorted(summary["tasks"].items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])):
        if not info["metrics"]:
            continue
        key = next(iter(info["metrics"]))
        one = {"tasks": {task: {"metrics": {key: info["metrics"][key]}}}}
        out.append((task, key, next(iter(columns(one)))))
    return out


def outcomes(plan: Plan, model: str, method: str, level: str, task: str, key: str) -> dict[int, float]:
    """{doc_id: the metric's per-document value} from a variant's per-sample log."""
    from prunemem.downstream.run import samples_file

    path = plan.downstream_dir(model, method, level) / samples_file(task)
    metric, filt = key.split(",", 1)
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError) as err:
        raise PrunememError(f"{path}: unreadable per-sample log ({err}); rerun `prunemem downstream`") from None
    return {int(r["doc_id"]): float(r[metric]) for r in rows if r.get("filter", "none") == filt and metric in r}


def paired_tests(plan: Plan, model: str) -> pl.DataFrame:
    """Every variant against dense on each task's headline metric (one row per variant and task)."""
    if not plan.downstream or (DENSE, "0") not in plan.variants(model):
        return pl.DataFrame(schema=SCHEMA)
    tasks = headline(downstream_summary(plan, model, DENSE, "0"), [t["name"] for t in plan.params["downstream"]["tasks"]])
    base = {task: outcomes(plan, model, DENSE, "0", task, key) for task, key, _ in tasks}
    rows = []
    for method, level in plan.variants(model):
        if method == DENSE:
            continue
        for task, key, column in tasks:
            mine = outcomes(plan, model, method, level, task, key)
            docs = sorted(set(mine) & set(base[task]))
            if not docs:
                continue
            a = np.array([mine[d] >= 0.5 for d in docs])  # 0/1 outcomes (acc, exact_match)
            b = np.array([base[task][d] >= 0.5 for d in docs])
            diff, lo, hi = paired_rate_difference(a, b)
            rows.append({"model": model, "method": method, "level": float(level), "task": task, "metric": key,
                         "column": column, "n": len(docs), "dense": float(b.mean()), "variant": float(a.mean()),
                         "difference": diff, "ci_low": lo, "ci_high": hi,
                         "p": mcnemar_exact(int((a & ~b).sum()), int((~a & b).sum()))})
    frame = pl.DataFrame(rows, schema={k: v for k, v in SCHEMA.items() if k != "p_holm"})
    return frame.with_columns(pl.Series("p_holm", holm(frame["p"].to_list()), dtype=pl.Float64))
