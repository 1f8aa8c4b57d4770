"""Width pruning: fixed-metric methods (``width-<metric>``) and AdaPruner's adaptive search.

AdaPruner (Yunnan University; "AdaPruner: Adaptive Channel Pruning ... via Bayesian optimization"
over the structured solution space) searches *which calibration data* and *which importance metric*
to trust, with the allocation, by Bayesian optimization. Ours:

- the space: the calibration subset drawn from the CCDS pool (how many windows, and optionally
  which k-means cluster of ``prunemem.prune.ccds``), the importance metric of
  ``prunemem.prune.importance``, the allocation (uniform or OWL) and OWL's M and lambda;
- the sampler: optuna's TPE, seeded per trial (``seed * 100003 + trial``), so a trial is a
  function of the seed and the trials before it, and a run that resumes from cached trials
  proposes exactly what an uninterrupted run would;
- the objective: calibration perplexity of the model with the trial's units removed, at the same
  number of removed units (hence parameters) for every trial; ``adapruner-mem`` adds
  lambda x extraction rate on the search split through the scoring code ``evop-mem`` uses
  (``prunemem.prune.search.score_model`` / ``Score.of``);
- the cache: every scored trial is written (atomically) to
  ``.snakemake/prunemem/adapruner/<key>.json``, keyed by the checkpoint, the data and every
  setting but the budget, so a rerun with a larger ``prune.adapruner.trials`` resumes.

Trials are scored on the dense model with the units zeroed (``width.units_zeroed``), which computes
what the shrunk model does (tests/test_width.py); the artifact records the removed units and
``masks.apply`` shrinks the evaluated model.

    prunemem mask --model tiny --method adapruner --level 0.5
    prunemem mask --model tiny --method width-taylor --level 0.5
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path

import torch

from prunemem.errors import PrunememError
from prunemem.prune import importance
from prunemem.prune.masks import BitMask
from prunemem.prune.width import WidthUnit, check_removable, unit_slices, units_zeroed

log = logging.getLogger(__name__)

SCOPES = {"mlp": ("neuron",), "attention": ("head",), "both": ("head", "neuron")}
ANY = "any"  # the whole pool, not one cluster


def kinds_of(cfg: dict) -> tuple[str, ...]:
    scope = cfg["width"]["scope"]
    if scope not in SCOPES:
        raise PrunememError(f"prune.width.scope: {scope!r} is not one of {', '.join(SCOPES)}")
    return SCOPES[scope]


def unit_masks(model, source, units: list[WidthUnit]) -> dict[str, BitMask]:
    """Keep-masks of every prunable tensor: the removed units' rows and columns are False."""
    keep = {name: torch.ones(source[name].shape, dtype=torch.bool) for name in source.names}
    for unit in units:
        for name, dim, index in unit_slices(model, unit):
            if name in keep:
                keep[name].narrow(dim, index.start, index.stop - index.start).fill_(False)
    return {name: BitMask.of(mask) for name, mask in keep.items()}


def _result(ctx, model, units: list[WidthUnit], info: dict) -> dict:
    """The ``MaskResult`` fields (``prunemem.prune.methods.width`` builds it: no import back up)."""
    return {"masks": unit_masks(model, ctx.source, units), "removed_units": [u.name for u in units], "info": info}


def _check_level(model, units, cfg, level) -> None:
    check_removable(model, units, cfg["width"].get("allow_empty_sublayer", False), key=f"prune.levels: {level:g}")


def fixed(metric: str):
    """The ``width-<metric>`` method: one importance metric, the allocation of ``prune.width``."""
    def method(ctx, level: float):
        cfg, width = ctx.cfg, ctx.cfg["width"]
        importance.check_names(metric, width["allocation"])
        kinds = kinds_of(cfg)
        model = ctx.load_model()
        needs_data = metric in importance.NEEDS_ACTIVATIONS | importance.NEEDS_GRADIENTS or width["allocation"] == "owl"
        stats = importance.collect(model, ctx.calibration() if needs_data else None,
                                   gradients=metric in importance.NEEDS_GRADIENTS, batch_size=cfg.get("batch_size", 8))
        units = importance.choose(model, stats, metric, width["allocation"], level, kinds,
                                  width["owl"]["M"], width["owl"]["lambda"])
        _check_level(model, units, cfg, level)
        return _result(ctx, model, units, {"width": {"metric": metric, "allocation": width["allocation"],
                                                     "scope": width["scope"], "removed": len(units)}})

    method.__doc__ = f"Width pruning by the {metric!r} importance of heads and neurons (prunemem.prune.importance)."
    return method


def search_space(spec: dict, clusters: int) -> dict[str, list]:
    """The categorical dimensions of the search (checked: one line naming an empty or unknown key)."""
    from prunemem.prune.units import check_adapruner_space

    check_adapruner_space(spec)
    return {"metric": list(dict.fromkeys(spec["metrics"])), "allocation": list(dict.fromkeys(spec["allocations"])),
            "windows": list(dict.fromkeys(spec["windows"])),
            "cluster": [ANY] + ([str(c) for c in range(clusters)] if spec.get("clusters", False) else [])}


def _suggest(trial, space: dict, spec: dict) -> dict:
    p = {"metric": trial.suggest_categorical("metric", space["metric"]),
         "allocation": trial.suggest_categorical("allocation", space["allocation"]),
         "windows": trial.suggest_categorical("windows", space["windows"]),
         "cluster": trial.suggest_categorical("cluster", space["cluster"])}
    if p["allocation"] == "owl":
        p["owl_lambda"] = trial.suggest_float("owl_lambda", *spec["owl_lambda"])
        p["owl_M"] = trial.suggest_float("owl_M", *spec["owl_M"])
    return p


def _distributions(space: dict, spec: dict) -> dict:
    import optuna

    out = {k: optuna.distributions.CategoricalDistribution(v) for k, v in space.items()}
    out["owl_lambda"] = optuna.distributions.FloatDistribution(*spec["owl_lambda"])
    out["owl_M"] = optuna.distributions.FloatDistribution(*spec["owl_M"])
    return out


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            h.update(part.detach().cpu().contiguous().numpy().tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()


class TrialCache:
    """Scored trials on disk, one JSON file per search (all its settings but the budget in the key)."""

    def __init__(self, directory: Path | None, key: str):
        self.path = None if directory is None else Path(directory) / f"{key[:32]}.json"
        self.trials: list[dict] = []
        if self.path is not None and self.path.exists():
            try:
                self.trials = json.loads(self.path.read_text())["trials"]
            except (ValueError, KeyError):
                log.warning("%s: unreadable trial cache, starting afresh", self.path)

    def add(self, row: dict) -> None:
        self.trials.append(row)
        if self.path is not None:
            from prunemem.provenance import atomic_path

            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.path) as tmp:
                Path(tmp).write_text(json.dumps({"trials": self.trials}, sort_keys=True))


def _adapruner(memorization: bool):
    def method(ctx, level: float):
        import optuna

        from prunemem.prune import ccds, search
        from prunemem.runtime import progress

        cfg, spec, width = ctx.cfg, ctx.cfg["adapruner"], ctx.cfg["width"]
        kinds = kinds_of(cfg)
        space = search_space(spec, cfg["ccds"]["clusters"] if spec.get("clusters", False) else 0)
        split = ctx.search_split() if memorization else None  # an overlapping split fails before any work
        torch.set_num_threads(spec["threads"])
        model = ctx.load_model()
        calibration, pool = ctx.calibration(), ctx.pool()
        seed = cfg["seed"]
        labels = None
        if len(space["cluster"]) > 1:
            _, labels = ccds.cluster_indices(ccds.embed(model, pool), 1, cfg["ccds"]["clusters"], seed)
            space["cluster"] = [ANY] + [str(c) for c in sorted(set(labels))]
        lam = float(spec["lambda"]) if memorization else 0.0
        k, suffix = (max(ctx.samples["k"]), ctx.samples["suffix_tokens"]) if memorization else (0, 0)
        key = _digest(getattr(model, "prunemem_checkpoint_sha256", None), ctx.method.name if ctx.method else "",
                      f"{level:g}", {k_: v for k_, v in spec.items() if k_ not in ("trials", "threads")}, width,
                      kinds, seed, cfg.get("batch_size", 8), pool, calibration, split, lam, k, suffix,
                      str(next(model.parameters()).dtype))
        cache = TrialCache(ctx.cache_dir, key)
        stats_cache: dict[tuple, importance.Stats] = {}

        def subset(windows: int, cluster: str) -> torch.Tensor:
            members = list(range(pool.shape[0])) if cluster == ANY else \
                [i for i, label in enumerate(labels) if str(label) == cluster]
            chosen = sorted(random.Random(seed).sample(members, min(windows, len(members))))
            return pool[chosen]

        scored: dict[str, dict] = {}  # TPE often proposes a configuration again: score it once

        def evaluate(p: dict) -> dict:
            memo = json.dumps(p, sort_keys=True)
            if memo not in scored:
                scored[memo] = _evaluate(p)
            return scored[memo]

        def _evaluate(p: dict) -> dict:
            needs = p["metric"] in importance.NEEDS_GRADIENTS
            key_ = (p["windows"], p["cluster"], needs)
            if not needs and (p["windows"], p["cluster"], True) in stats_cache:  # a backward pass measured these too
                key_ = (p["windows"], p["cluster"], True)
            if key_ not in stats_cache:
                stats_cache[key_] = importance.collect(model, subset(p["windows"], p["cluster"]), gradients=needs,
                                                       batch_size=cfg.get("batch_size", 8))
            units = importance.choose(model, stats_cache[key_], p["metric"], p["allocation"], level, kinds,
                                      p.get("owl_M", width["owl"]["M"]), p.get("owl_lambda", width["owl"]["lambda"]))
            try:
                _check_level(model, units, cfg, level)
            except PrunememError as err:
                return {"state": "fail", "reason": str(err), "units": []}
            with units_zeroed(model, units):
                score = search.score_model(model, calibration, split, k, suffix, lam, spec["batch_size"])
            return {"state": "complete", "value": score.fitness, "perplexity": score.perplexity,
                    "extraction": score.extraction, "units": [u.name for u in units]}

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(direction="minimize")
        dists = _distributions(space, spec)
        history: list[dict] = []
        for number in progress(range(spec["trials"]), desc=f"adapruner @ {level:g}", unit="trial"):
            if number < len(cache.trials):
                row = cache.trials[number]
                scored.setdefault(json.dumps(row["params"], sort_keys=True),
                                  {k_: v for k_, v in row.items() if k_ not in ("number", "params")})
                study.add_trial(optuna.trial.create_trial(
                    params=row["params"], distributions={n: dists[n] for n in row["params"]},
                    value=row.get("value"), state=optuna.trial.TrialState.COMPLETE if row["state"] == "complete"
                    else optuna.trial.TrialState.FAIL))
            else:
                study.sampler = optuna.samplers.TPESampler(seed=seed * 100003 + number,
                                                           n_startup_trials=spec["startup_trials"])
                trial = study.ask()
                params = dict(sorted(_suggest(trial, space, spec).items()))
                row = {"number": number, "params": params, **evaluate(params)}
                if row["state"] == "complete":
                    study.tell(trial, row["value"])
                else:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                cache.add(row)
            history.append(row)
            log.info("trial %d: %s -> %s", number, row["params"], row.get("value", row.get("reason")))
        done = [r for r in history if r["state"] == "complete"]
        if not done:
            raise PrunememError(f"prune.adapruner: no trial of {len(history)} was feasible at level {level:g} "
                                f"({history[-1]['reason']})")
        best = min(done, key=lambda r: (r["value"], r["number"]))
        units = sorted(WidthUnit.parse(u) for u in best["units"])
        best_so_far, rows = float("inf"), []
        for r in history:
            if r["state"] == "complete":
                best_so_far = min(best_so_far, r["value"])
            rows.append({"trial": r["number"], **r["params"], "state": r["state"], "value": r.get("value"),
                         "perplexity": r.get("perplexity"), "extraction": r.get("extraction"),
                         "best_value": best_so_far if best_so_far < float("inf") else None})
        fixed_scores = _fixed_baselines(model, calibration, space["metric"], level, kinds, cfg, split, k, suffix, lam,
                                        spec["batch_size"])
        info = {"trials": {"best": best["number"], "best_params": best["params"], "lambda": lam, "k": k or None,
                           "scope": width["scope"], "removed": len(units), "history": rows, "fixed": fixed_scores}}
        return _result(ctx, model, units, info)

    method.__doc__ = ("AdaPruner: TPE search over calibration subset, importance metric and allocation; "
                      + ("objective = calibration perplexity + lambda * search-split extraction" if memorization
                         else "objective = calibration perplexity"))
    return method


def _fixed_baselines(model, calibration, metrics, level, kinds, cfg, split, k, suffix, lam, batch_rows) -> dict:
    """Each searched metric as its fixed method ``width-<metric>`` computes it (importance on the calibration
    set, ``prune.width``'s allocation), scored by the search's objective at the same number of removed
    units: the matched-parameter comparison of the report."""
    from prunemem.prune import search

    width = cfg["width"]
    stats = importance.collect(model, calibration, gradients=bool(set(metrics) & importance.NEEDS_GRADIENTS),
                               batch_size=cfg.get("batch_size", 8))
    out = {}
    for metric in metrics:
        units = importance.choose(model, stats, metric, width["allocation"], level, kinds, width["owl"]["M"],
                                  width["owl"]["lambda"])
        try:
            _check_level(model, units, cfg, level)
        except PrunememError as err:
            out[metric] = {"state": "fail", "reason": str(err)}
            continue
        with units_zeroed(model, units):
            score = search.score_model(model, calibration, split, k, suffix, lam, batch_rows)
        out[metric] = {"state": "complete", "value": score.fitness, "perplexity": score.perplexity,
                       "extraction": score.extraction, "removed": len(units)}
    return out


def run(ctx, level: float) -> dict:
    """The mask of a width method, as its registry traits say: AdaPruner's trial search (``trial_search``;
    ``search_split``: adapruner-mem) or one fixed importance metric (``width_metric``: width-<metric>)."""
    if ctx.method.trial_search:
        return _adapruner(memorization=ctx.method.search_split)(ctx, level)
    return fixed(ctx.method.width_metric)(ctx, level)
