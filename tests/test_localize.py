"""Targeted forgetting (prunemem.prune.localize): the forget/retain sets, the unit gates, the six
localization methods and their bad input, on a tiny model that memorizes four random sequences."""

from __future__ import annotations

import pytest
import torch

from prunemem.errors import PrunememError
from prunemem.prune import localize
from prunemem.prune.width import units_zeroed, width_units

SUFFIX, K = 8, 24
CFG = {"steps": 15, "lr": 100.0, "l1": 0.5, "retain_weight": 1.0, "ig_steps": 4, "zeroout_batch": 64, "threads": 1}


def _sets(seqs: torch.Tensor) -> localize.Sets:
    # sequences 0-3 are memorized; forget 0 and 1, retain text = the unseen 4-7 (held out), no search members
    return localize.Sets(["s0", "s1"], ["s2", "s3"], seqs[:2, -(K + SUFFIX):], seqs[4:, :32],
                         torch.zeros(0, 0, dtype=torch.long))


# -- sets and budgets ------------------------------------------------------------------------------
IDS = [f"canary-{i:05d}" for i in range(6)]
HIT = [True, False, True, True, False, True]


def test_a_seeded_forget_set_is_drawn_from_the_extracted_members_and_the_rest_retained():
    forget, retain, record = localize.choose_sets(IDS, HIT, {"forget": {"size": 2}}, seed=0, k=K)
    again = localize.choose_sets(IDS, HIT, {"forget": {"size": 2}}, seed=0, k=K)[0]
    assert forget == again and len(forget) == 2
    assert set(forget) | set(retain) == {i for i, h in zip(IDS, HIT) if h} and not set(forget) & set(retain)
    assert record["forget"] == forget and record["retain"] == retain and record["extracted_members"] == 4
    other = [localize.choose_sets(IDS, HIT, {"forget": {"size": 2, "seed": s}}, seed=0, k=K)[0] for s in range(8)]
    assert len({tuple(o) for o in other}) > 1  # the seed matters
    # a size above the extracted count draws them all (a default that survives a retrained model), recorded
    forget, retain, record = localize.choose_sets(IDS, HIT, {"forget": {"size": 10}}, seed=0, k=K)
    assert len(forget) == 4 and retain == [] and record["forget"] == forget


def test_a_forget_set_with_no_extracted_member_says_how_many_are_and_how_to_choose():
    with pytest.raises(PrunememError) as err:
        localize.choose_sets(IDS, HIT, {"forget": {"sample_ids": [IDS[1], IDS[4]]}}, seed=0, k=K)
    msg = str(err.value)
    assert "\n" not in msg and "0 of the 2 chosen samples are extracted by the dense model at k=24" in msg
    assert "4 are" in msg and IDS[0] in msg and "forget.size" in msg


def test_a_forget_set_overlapping_the_retain_set_is_refused_naming_the_shared_ids():
    spec = {"forget": {"sample_ids": [IDS[0], IDS[2]]}, "retain": {"sample_ids": [IDS[2], IDS[3]]}}
    with pytest.raises(PrunememError, match=r"share 1 sample id: canary-00002;"):
        localize.choose_sets(IDS, HIT, spec, seed=0, k=K)
    with pytest.raises(PrunememError, match=r"overlaps the search split.*canary-00000 = search\[1\]"):
        localize.check_disjoint_text({IDS[0]: [1, 2, 3, 4]}, {"search[0]": [9, 9, 9], "search[1]": [7, 2, 3, 4]}, 3,
                                     "search split")


def test_a_unit_budget_larger_than_the_model_names_its_unit_count():
    with pytest.raises(PrunememError, match=r"5000 units exceed the model's 1000 units"):
        localize.budget_units(5000, 1000)
    with pytest.raises(PrunememError, match=r"removes none"):
        localize.budget_units(0.0001, 1000)
    assert localize.budget_units(0.01, 1000) == 10 and localize.budget_units(7, 1000) == 7


# -- gates and masks -------------------------------------------------------------------------------
def test_gates_at_zero_equal_the_width_ablation_and_the_mask(memorizing_model):
    from prunemem.prune.masks import apply

    model, seqs = memorizing_model
    units = width_units(model)
    chosen = [units[1], units[5], units[len(units) // 2 + 3]]  # a head and neurons of both blocks
    gates = torch.ones(len(units))
    gates[[units.index(u) for u in chosen]] = 0
    with torch.no_grad(), localize.gated(model, units, gates):
        gated = model(seqs[:2]).logits
    with torch.no_grad(), units_zeroed(model, chosen):
        zeroed = model(seqs[:2]).logits
    torch.testing.assert_close(gated, zeroed, rtol=1e-5, atol=1e-5)
    masked = type(model)(model.config).eval()
    masked.load_state_dict(model.state_dict())
    names = [n for n, _ in model.named_parameters() if n.endswith(".weight") and ".layers." in n
             and "layernorm" not in n]
    apply(masked, localize.keep_masks(model, chosen, names))
    with torch.no_grad():
        torch.testing.assert_close(masked(seqs[:2]).logits, zeroed, rtol=1e-5, atol=1e-5)


def test_batched_zero_out_equals_one_ablation_at_a_time_and_candidates_are_exact(memorizing_model):
    model, seqs = memorizing_model
    inp = localize.Inputs(model, width_units(model), _sets(seqs), K, SUFFIX,
                          {**CFG, "zeroout_batch": 16, "zeroout_candidates": 0}, 0)
    exact = localize.zeroout(inp)
    windows = inp.forget_windows()
    with torch.no_grad():
        base = -localize.suffix_logprob(model, windows, SUFFIX).mean(1)
        for u in (0, 3, 40, len(inp.units) - 1):
            with units_zeroed(model, [inp.units[u]]):
                nll = -localize.suffix_logprob(model, windows, SUFFIX).mean(1)
            assert float(exact[u]) == pytest.approx(float((nll - base).mean()), abs=1e-4)
    # on candidates (every head + the first-order estimate's top neurons): exact there, ranked first
    inp.cfg = {**CFG, "zeroout_candidates": 40}
    pooled = localize.zeroout(inp)
    heads = [u for u, unit in enumerate(inp.units) if unit.kind == "head"]
    estimate = localize.attribution(inp)
    estimate[heads] = float("inf")
    pool = localize.top_units(estimate, 40)
    torch.testing.assert_close(pooled[pool], exact[pool], rtol=0, atol=1e-5)
    assert set(localize.top_units(pooled, 40)) == set(pool)
    assert len(set(localize.top_units(exact, 10)) & set(pool)) >= 8  # the pool holds most of the exact top 10


def test_integrated_gradients_completeness(memorizing_model):
    """Attributions sum to log p(all gates 1) - log p(all gates 0) (up to the midpoint rule)."""
    model, seqs = memorizing_model
    inp = localize.Inputs(model, width_units(model), _sets(seqs), K, SUFFIX, {**CFG, "ig_steps": 32}, 0)
    total = float(localize.ig(inp).sum())
    n = len(inp.units)
    with torch.no_grad():
        ends = []
        for g in (torch.zeros(n), torch.ones(n)):
            with localize.gated(model, inp.units, g):
                ends.append(float(localize.suffix_logprob(model, inp.forget_windows(), SUFFIX).sum(1).mean()))
    assert total == pytest.approx(ends[1] - ends[0], rel=0.05)


@pytest.mark.parametrize("method", ["activations", "selective", "slimming", "hardconcrete"])
def test_each_method_forgets_more_than_random_units(memorizing_model, method):
    """Ablating a method's top 5% of units raises the forget NLL more than a random 5% does."""
    model, seqs = memorizing_model
    sets = _sets(seqs)

    def forget_nll(units):
        with torch.no_grad(), units_zeroed(model, units):
            return float(-localize.suffix_logprob(model, sets.forget, SUFFIX).mean())

    chosen, scores, record = localize.localize(method, model, sets, 0.05, K, SUFFIX, CFG, 0)
    rand = localize.localize("random", model, sets, 0.05, K, SUFFIX, CFG, 0)[0]
    assert len(chosen) == record["units"] // 20 and record["chosen"] == [u.name for u in chosen]
    assert len(record["scores"]) == record["units"]
    assert forget_nll(chosen) > forget_nll(rand)
    assert localize.localize(method, model, sets, 0.05, K, SUFFIX, CFG, 0)[0] == chosen  # deterministic


# -- params ----------------------------------------------------------------------------------------
def test_a_unit_budget_larger_than_the_embedded_model_stops_validate_naming_its_unit_count(default_params):
    import copy

    from prunemem.plan import validate

    params = copy.deepcopy(default_params)
    params["prune"]["methods"] = ["global", "localize-zeroout"]
    params["prune"].pop("localize", None)
    with pytest.raises(PrunememError, match=r"prune.localize: required by method localize-zeroout"):
        validate(params)
    arch = params["embedded"]["architecture"]
    units = arch["num_layers"] * (arch["num_heads"] + 4 * arch["hidden_size"])
    params["prune"]["localize"] = {"budgets": [0.01, units + 1], "forget": {"size": 2}, "steps": 5, "threads": 1}
    with pytest.raises(PrunememError) as err:
        validate(params)
    assert f"{units + 1} units exceed the embedded model's {units} units" in str(err.value)
    assert "\n" not in str(err.value)
