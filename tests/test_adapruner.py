"""Width pruning: importance metrics against independent references, allocation, the AdaPruner search,
the mask artifact that shrinks the evaluated model, and the bad input lines of issue 22."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import yaml

from prunemem.errors import PrunememError
from prunemem.prune import importance, masks, search, width
from prunemem.prune.methods import MaskContext, compute
from prunemem.prune.registry import resolve
from prunemem.prune.targets import DictSource
from prunemem.prune.width import WidthUnit

from conftest import REPO


@pytest.fixture
def model(biased_model):
    return biased_model


def _ids(n=6, t=20, seed=0):
    return torch.randint(1, 64, (n, t), generator=torch.Generator().manual_seed(seed))


def _unit_entries(model, unit, tensors):
    """The entries of ``tensors`` (by parameter name) that belong to ``unit``, weights only."""
    out = []
    for name, dim, index in width.unit_slices(model, unit):
        if name.endswith(".weight"):
            out.append(tensors[name].narrow(dim, index.start, index.stop - index.start).flatten())
    return torch.cat(out).double()


def test_magnitude_metrics_are_the_norms_of_the_units_weights(model):
    stats = importance.collect(model, None)
    params = dict(model.named_parameters())
    for kind, n in (("head", 4), ("neuron", 128)):
        l1, l2 = (importance.scores(stats, m, 2, kind, 8) for m in ("l1", "l2"))
        for i in (0, n - 1):
            entries = _unit_entries(model, WidthUnit(2, kind, i), {k: v.detach() for k, v in params.items()})
            assert float(l1[i]) == pytest.approx(float(entries.abs().sum()), rel=1e-9)
            assert float(l2[i]) == pytest.approx(float(entries.norm()), rel=1e-9)


def _inputs(model, ids, rel):
    """The inputs of one linear over ``ids``, captured independently of ``importance.collect``."""
    seen = []
    handle = model.get_submodule(rel).register_forward_hook(lambda m, a, o: seen.append(a[0].detach()))
    with torch.no_grad():
        model(ids)
    handle.remove()
    return torch.cat([s.reshape(-1, s.shape[-1]) for s in seen]).double()


def test_wanda_and_flap_metrics_match_their_formulas(model):
    ids = _ids()
    stats = importance.collect(model, ids, batch_size=4)  # two batches: statistics must accumulate
    up = _inputs(model, ids, "gpt_neox.layers.1.mlp.dense_h_to_4h")
    down = _inputs(model, ids, "gpt_neox.layers.1.mlp.dense_4h_to_h")
    w_up = model.gpt_neox.layers[1].mlp.dense_h_to_4h.weight.detach().double()
    w_down = model.gpt_neox.layers[1].mlp.dense_4h_to_h.weight.detach().double()
    i = 5
    wanda = (w_up[i].abs() * up.norm(dim=0)).sum() + (w_down[:, i].abs() * down[:, i].norm()).sum()
    assert float(importance.scores(stats, "wanda", 1, "neuron", 8)[i]) == pytest.approx(float(wanda), rel=1e-9)
    # FLAP (arXiv 2312.11983, eq. 6): sample variance of the output projection's input channel x ||W_:,j||^2
    flap = down[:, i].var() * w_down[:, i].pow(2).sum()
    assert float(importance.scores(stats, "flap", 1, "neuron", 8)[i]) == pytest.approx(float(flap), rel=1e-6)
    heads = importance.scores(stats, "flap", 1, "head", 8)
    att_in = _inputs(model, ids, "gpt_neox.layers.1.attention.dense")
    w_o = model.gpt_neox.layers[1].attention.dense.weight.detach().double()
    expected = (att_in[:, 16:24].var(dim=0) * w_o[:, 16:24].pow(2).sum(0)).sum()
    assert float(heads[2]) == pytest.approx(float(expected), rel=1e-6)


def _loss(model, ids):
    """The mean next-token loss in the model's own precision (HF's loss upcasts only to float32)."""
    logits = model(input_ids=ids).logits[:, :-1]
    return float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)))


def test_taylor_metrics_are_first_order_loss_changes(model):
    """taylor-group is |dL/d eps| for scaling the unit by (1 - eps), checked by finite differences;
    taylor is the sum of |w g| over the unit, checked against autograd directly."""
    ids = _ids(n=4)
    model = model.double()  # finite differences need the precision
    stats = importance.collect(model, ids, gradients=True, batch_size=4)  # one batch: L is its mean loss
    unit = WidthUnit(0, "neuron", 9)
    params = dict(model.named_parameters())
    assert all(p.grad is None for p in model.parameters())  # collect leaves no gradients behind
    eps = 1e-3
    with torch.no_grad():
        saved = {n: params[n].detach().clone() for n, _, _ in width.unit_slices(model, unit)}
        for name, dim, index in width.unit_slices(model, unit):
            if name.endswith(".weight"):
                params[name].narrow(dim, index.start, index.stop - index.start).mul_(1 + eps)
        plus = _loss(model, ids)
        for name, dim, index in width.unit_slices(model, unit):
            if name.endswith(".weight"):
                params[name].copy_(saved[name])
                params[name].narrow(dim, index.start, index.stop - index.start).mul_(1 - eps)
        minus = _loss(model, ids)
        for name in saved:
            params[name].copy_(saved[name])
    derivative = (plus - minus) / (2 * eps)
    group = float(importance.scores(stats, "taylor-group", 0, "neuron", 8)[9])
    assert group == pytest.approx(abs(derivative), rel=1e-4) and group > 1e-6
    model.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    weights = {n: p.detach() for n, p in model.named_parameters()}
    reference = (_unit_entries(model, unit, weights) * _unit_entries(model, unit, grads)).abs().sum()
    assert float(importance.scores(stats, "taylor", 0, "neuron", 8)[9]) == pytest.approx(float(reference), rel=1e-6)


def test_metric_registry_and_the_torch_free_names_agree():
    from prunemem.prune.units import WIDTH_METRICS

    assert tuple(importance.METRICS) == WIDTH_METRICS


def test_allocation_uniform_and_owl_remove_the_same_total():
    assert importance.allocate([10, 10, 10], 0.5) == [5, 5, 5]
    owl = importance.allocate([10, 10, 10], 0.5, shares=[0.3, 0.5, 0.7])
    assert sum(owl) == 15 and owl[0] < owl[1] < owl[2]
    assert importance.allocate([4, 4], 0.3, shares=[0.0, 1.0]) == [0, 2]


def test_choose_removes_the_lowest_scores_and_owl_spares_outlier_blocks(model):
    ids = _ids()
    stats = importance.collect(model, ids)
    chosen = importance.choose(model, stats, "l1", "uniform", 0.5, kinds=("neuron", "head"))
    assert sum(u.kind == "head" for u in chosen) == 4 * 2 and sum(u.kind == "neuron" for u in chosen) == 4 * 64
    l1 = importance.scores(stats, "l1", 3, "neuron", 8)
    gone = [u.index for u in chosen if u.block == 3 and u.kind == "neuron"]
    assert float(l1[gone].max()) <= float(l1[[i for i in range(128) if i not in gone]].min())
    ratios = [importance.block_outlier_ratio(stats, b, 3.0) for b in range(4)]
    owl = importance.choose(model, stats, "l1", "owl", 0.5, kinds=("neuron",), owl_m=3.0, owl_lambda=0.2)
    per_block = [sum(u.block == b for u in owl) for b in range(4)]
    assert sum(per_block) == 4 * 64
    assert per_block[ratios.index(max(ratios))] < per_block[ratios.index(min(ratios))]


def _params(**adapruner):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["prune"]["ccds"]["clusters"] = 2
    params["prune"]["adapruner"].update({"trials": 5, "startup_trials": 3, "windows": [4, 8],
                                         "metrics": ["l1", "wanda", "taylor"], **adapruner})
    return params


def _ctx(model, params, cache_dir=None):
    pool = _ids(n=16, t=24, seed=2)
    split = _ids(n=4, t=40, seed=3)
    return MaskContext(DictSource(dict(model.named_parameters())), params["prune"], load_model=lambda: model,
                       calibration=lambda: pool[:8], pool=lambda: pool, search_split=lambda: split,
                       samples={"k": [16, 24], "suffix_tokens": 16}, cache_dir=cache_dir)


def test_adapruner_searches_resumes_from_cache_and_repeats(model, tmp_path, monkeypatch):
    params = _params(trials=2)
    short = compute(resolve("adapruner", params), _ctx(model, params, tmp_path), 0.5)
    calls = []
    real = search.score_model
    monkeypatch.setattr(search, "score_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    params = _params(trials=4)
    resumed = compute(resolve("adapruner", params), _ctx(model, params, tmp_path), 0.5)
    # the 2 cached trials are not scored again, nor a configuration proposed twice; the fixed metrics are
    configs = [json.dumps({k: r[k] for k in ("metric", "allocation", "windows", "cluster", "owl_M", "owl_lambda")
                           if k in r}, sort_keys=True) for r in resumed.info["trials"]["history"]]
    assert len(calls) == len(set(configs[2:]) - set(configs[:2])) + len(params["prune"]["adapruner"]["metrics"])
    fresh = compute(resolve("adapruner", params), _ctx(model, params, None), 0.5)
    assert resumed.info == fresh.info and resumed.removed_units == fresh.removed_units
    history = fresh.info["trials"]["history"]
    assert history[:2] == short.info["trials"]["history"]
    assert [r["trial"] for r in history] == list(range(4))
    best = min((r for r in history if r["state"] == "complete"), key=lambda r: r["value"])
    assert fresh.info["trials"]["best"] == best["trial"]
    assert history[-1]["best_value"] == best["value"]
    # the recorded units are the best trial's, and they remove half the neurons of every block
    units = [WidthUnit.parse(u) for u in fresh.removed_units]
    assert len(units) == 4 * 64 and {u.kind for u in units} == {"neuron"}
    with width.units_zeroed(model, units):
        again = search.score_model(model, _ctx(model, params).calibration(), batch_rows=8)
    assert again.perplexity == pytest.approx(best["perplexity"], rel=1e-9)
    # every searched metric, as its fixed width-<metric> method computes it, at the same number of units
    fixed = fresh.info["trials"]["fixed"]
    assert set(fixed) == set(params["prune"]["adapruner"]["metrics"])
    assert all(f["removed"] == len(units) for f in fixed.values())
    plain = compute(resolve("width-l1", params), _ctx(model, params), 0.5)
    with width.units_zeroed(model, [WidthUnit.parse(u) for u in plain.removed_units]):
        l1 = search.score_model(model, _ctx(model, params).calibration(), batch_rows=8)
    assert fixed["l1"]["value"] == pytest.approx(l1.fitness, rel=1e-9)


def test_adapruner_mem_adds_lambda_times_extraction_through_evops_scoring(model):
    params = _params(trials=2, metrics=["l1", "l2"], **{"lambda": 7.0})
    result = compute(resolve("adapruner-mem", params), _ctx(model, params), 0.5)
    row = result.info["trials"]["history"][0]
    assert row["extraction"] is not None and row["value"] == pytest.approx(row["perplexity"] + 7.0 * row["extraction"])
    ctx = _ctx(model, params)
    units = importance.choose(model, importance.collect(model, None), "l1", "uniform", 0.5)
    with width.units_zeroed(model, units):
        mine = search.score_model(model, ctx.calibration(), ctx.search_split(), 24, 16, 7.0)
    evaluator = search.Evaluator(model, ctx.calibration(), "sublayer", search=ctx.search_split(), k=24, suffix=16,
                                 lam=7.0)
    with width.units_zeroed(model, units):
        theirs = evaluator([()])[0]  # EvoP's scoring of the pattern that removes no sublayer
    assert mine.fitness == pytest.approx(theirs.fitness, rel=1e-6)


def test_width_mask_artifact_shrinks_the_evaluated_model(model, tmp_path):
    params = _params()
    result = compute(resolve("width-wanda", params), _ctx(model, params), 0.5)
    path = tmp_path / "m.safetensors"
    masks.save(path, result.masks, method="width-wanda", level="0.5", checkpoint_sha256="x",
               removed_units=result.removed_units, info=result.info)
    assert masks.header(path)["removed_units"] == result.removed_units
    ids = _ids()
    units = [WidthUnit.parse(u) for u in result.removed_units]
    with torch.no_grad(), width.units_zeroed(model, units):
        zeroed = model(ids).logits
    small = copy.deepcopy(model)
    before = width.n_parameters(small)
    masks.apply(small, path, check_checkpoint=False)
    assert small.gpt_neox.layers[0].mlp.dense_h_to_4h.weight.shape[0] == 64
    assert width.n_parameters(small) == before - sum(width.unit_size(model, u) for u in units)
    with torch.no_grad():
        torch.testing.assert_close(small(ids).logits, zeroed, rtol=1e-5, atol=1e-5)


# -- bad input: one line each ---------------------------------------------------------------------
def _validate(params):
    from prunemem.plan import validate

    validate(params)


@pytest.mark.parametrize("change, message", [
    ({"metrics": ["l1", "fisher"]}, r"prune.adapruner.metrics: importance metric 'fisher' is not registered; "
                                    r"allowed: l1, l2, wanda, taylor, taylor-group, flap"),
    ({"allocations": ["even"]}, r"prune.adapruner.allocations: allocation 'even' is not registered; allowed: uniform, owl"),
    ({"trials": 0}, r"prune.adapruner.trials: 0; allowed: an integer >= 1"),
    ({"windows": []}, r"prune.adapruner.windows: empty"),
    ({"metrics": ["l1"], "allocations": ["uniform"], "windows": [8], "clusters": False},
     r"prune.adapruner: a search space with nothing to search"),
])
def test_bad_adapruner_params_are_one_line(change, message):
    params = _params(**change)
    params["prune"]["methods"] = ["adapruner"]
    with pytest.raises(PrunememError, match=message) as err:
        _validate(params)
    assert "\n" not in str(err.value)


def test_an_unregistered_width_allocation_is_one_line():
    params = _params()
    params["prune"]["methods"] = ["width-l1"]
    params["prune"]["width"]["allocation"] = "greedy"
    with pytest.raises(PrunememError, match=r"prune.width.allocation: allocation 'greedy' is not registered; "
                                            r"allowed: uniform, owl"):
        _validate(params)


def test_a_level_that_empties_a_layer_is_refused_naming_it(model):
    params = _params()
    params["prune"]["width"].update({"scope": "attention", "allocation": "owl", "owl": {"M": 3.0, "lambda": 0.5}})
    with pytest.raises(PrunememError, match=r"would remove every head of layer \d \(gpt_neox.layers.\d.attention\)"):
        compute(resolve("width-l1", params), _ctx(model, params), 0.8)
    params["prune"]["width"]["allow_empty_sublayer"] = True
    result = compute(resolve("width-l1", params), _ctx(model, params), 0.8)
    assert len(result.removed_units) == math.floor(0.8 * 4) * 4


def test_the_report_draws_the_trials_and_says_whether_the_search_beats_the_fixed_metrics(model, tmp_path):
    """Trial history and the matched-count verdict, read from a real adapruner mask header, rendered."""
    import polars as pl
    from test_report_render import EMPTY_DUP, synthetic_context, synthetic_grid

    from prunemem.plan import Plan
    from prunemem.report import html, tables

    params = _params(trials=2, metrics=["l1", "l2"])
    params["prune"].update(methods=["adapruner"], levels=[0.5])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    plan = Plan.load([tmp_path / "params.yaml"], root=tmp_path)
    result = compute(resolve("adapruner", params), _ctx(model, params), 0.5)
    masks.save(plan.mask_path("tiny", "adapruner", "0.5"), result.masks, method="adapruner", level="0.5",
               checkpoint_sha256="x", removed_units=result.removed_units, info=result.info)
    trials, against = tables.trial_history(plan), tables.search_against_fixed(plan)
    assert trials["trial"].to_list() == [0, 1] and against["removed units"].to_list() == [4 * 64]
    fixed = result.info["trials"]["fixed"]
    best_fixed = min(f["value"] for f in fixed.values())
    assert against["best fixed objective"][0] == best_fixed
    assert against["search beats fixed"][0] == (against["best trial objective"][0] < best_fixed)
    results, layers = synthetic_grid()
    results, layers = (f.filter(pl.col("model") == "pythia-160m") for f in (results, layers))
    context = {**synthetic_context(results), "trials": trials, "search_against_fixed": against}
    page, figures, _ = html.render(results, layers, EMPTY_DUP, context)
    assert "AdaPruner trial history" in page and "trial-history" in figures
    assert ("beats the best single fixed metric" if against["search beats fixed"][0]
            else "does not beat the best single fixed metric") in page


def test_the_pipeline_evaluates_the_shrunk_adapruner_model(pipeline):
    """Through Snakemake: the adapruner mask lists its units, evaluation loads a really smaller model,
    and the report draws the trials."""
    from prunemem.evaluate.run import load_variant
    from prunemem.plan import Plan

    plan = Plan.load([pipeline / "params.yaml"], root=pipeline)
    head = masks.header(plan.mask_path("tiny", "adapruner", "0.5"))
    assert len(head["removed_units"]) == 2 * 256 and len(head["info"]["trials"]["history"]) == 3
    model, mask, _, _ = load_variant(plan, "tiny", "adapruner", "0.5", "cpu", torch.float32)
    assert [layer.mlp.dense_h_to_4h.out_features for layer in model.gpt_neox.layers] == [256, 256]
    summary = json.loads((plan.metrics_dir("tiny", "adapruner", "0.5") / "summary.json").read_text())
    assert summary["achieved_sparsity"] == pytest.approx(1 / 3)
    assert "AdaPruner trial history" in (pipeline / "reports/report.html").read_text()
