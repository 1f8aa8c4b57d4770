"""Replicates of the random control: prune.random_seeds adds random-s<N>, the random control at seed N."""

from __future__ import annotations

import copy

import torch

from conftest import SMALL
from prunemem.plan import Plan, validate
from prunemem.prune.methods import MaskContext, compute
from prunemem.prune.targets import DictSource


def test_random_seeds_add_replicates_with_their_own_seed_and_paths():
    params = copy.deepcopy(SMALL)
    params["prune"]["random_seeds"] = [1, 2]
    plan = Plan(params)
    at = plan.methods.index("random")
    assert plan.methods[at:at + 3] == ["random", "random-s1", "random-s2"]
    assert plan.mask_path("tiny", "random-s1", "0.5").as_posix().endswith("data/masks/tiny/random-s1/0.5.safetensors")
    assert plan.method("random-s2").replicate_of == "random" and plan.method("random-s2").seed == 2
    # adding a replicate leaves every other mask's params (hence its cached artifact) unchanged
    fewer = copy.deepcopy(params)
    fewer["prune"]["random_seeds"] = [1]
    for method in ("global", "random", "random-s1", "wanda"):
        assert Plan(fewer).stage_digest("mask", "tiny", method, "0.5") == plan.stage_digest("mask", "tiny", method,
                                                                                             "0.5")
    # the shared seed does not reach a replicate
    reseeded = copy.deepcopy(params)
    reseeded["prune"]["seed"] = 7
    assert Plan(reseeded).stage_digest("mask", "tiny", "random-s1", "0.5") == plan.stage_digest(
        "mask", "tiny", "random-s1", "0.5")
    assert Plan(reseeded).stage_digest("mask", "tiny", "random", "0.5") != plan.stage_digest("mask", "tiny", "random",
                                                                                             "0.5")
    no_random = copy.deepcopy(params)
    no_random["prune"]["methods"].remove("random")
    validate(no_random)  # the seeds replicate the control only when the grid has it
    assert not any(m.startswith("random") for m in Plan(no_random).methods)


def test_replicate_masks_are_the_random_control_at_that_seed(random_model):
    state = {k: v.clone() for k, v in random_model.state_dict().items()}
    cfg = {"block_fraction": 0.25, "seed": 0}
    seed0 = compute("random", MaskContext(DictSource(state), cfg), 0.5).bool_masks()
    s1 = compute("random-s1", MaskContext(DictSource(state), cfg), 0.5).bool_masks()
    plain1 = compute("random", MaskContext(DictSource(state), {**cfg, "seed": 1}), 0.5).bool_masks()
    assert all(torch.equal(s1[n], plain1[n]) for n in s1)
    assert any(not torch.equal(s1[n], seed0[n]) for n in s1)
    assert all(int((~m).sum()) == m.numel() // 2 for m in s1.values())
