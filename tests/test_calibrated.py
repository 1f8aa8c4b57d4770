"""Wanda, SparseGPT, N:M, OWL and SLEB kernels against independent references."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from prunemem.prune.calibrated import (NormStats, SkipBlock, calibration_loss, nm_mask, outlier_ratio, owl_levels,
                                       row_mask, sleb, sparsegpt, wanda_score)


def _correlated(seed=0, rows=8, cols=32, n=200):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cols, generator=gen) @ torch.randn(cols, cols, generator=gen)
    return torch.randn(rows, cols, generator=gen), x


def test_wanda_score_and_row_counts():
    w, x = _correlated()
    stats = NormStats(32, "cpu")
    lin = torch.nn.Linear(32, 8, bias=False)
    stats(lin, (x.view(4, 50, 32),), None)
    score = wanda_score(w, stats)
    assert torch.allclose(score, w.abs().double() * x.double().norm(dim=0))  # |W_ij| * ||X_j||_2
    keep = row_mask(score, 0.5)
    assert (keep.sum(1) == 16).all()
    for r in range(8):  # the pruned half of each row holds its lowest scores
        assert score[r][~keep[r]].max() <= score[r][keep[r]].min()


def test_nm_keeps_n_highest_in_every_group():
    score = torch.rand(4, 16, generator=torch.Generator().manual_seed(1))
    for n, m in [(2, 4), (4, 8)]:
        keep = nm_mask(score, n, m).view(4, 16 // m, m)
        groups = score.view(4, 16 // m, m)
        assert (keep.sum(-1) == n).all()
        assert (groups.masked_fill(~keep, float("inf")).amin(-1) >= groups.masked_fill(keep, -1).amax(-1)).all()
    with pytest.raises(ValueError, match="does not divide"):
        nm_mask(torch.rand(2, 10), 2, 4)


def _obs_reference(w, h, keep, damp):
    """Prune a fixed mask column by column with explicit inverse Hessians (Optimal Brain Surgeon),
    re-inverting after each column -- no Cholesky, no blocking."""
    w = w.double().clone()
    h = h.double() + damp * torch.diag(h.double()).mean() * torch.eye(h.shape[0], dtype=torch.float64)
    hinv = torch.linalg.inv(h)
    for i in range(w.shape[1]):
        err = (w[:, i] * ~keep[:, i]) / hinv[i, i]
        w[:, i:] -= err.unsqueeze(1) * hinv[i, i:].unsqueeze(0)
        hinv = hinv - hinv[:, i : i + 1] @ hinv[i : i + 1, :] / hinv[i, i]
    return w


def test_sparsegpt_updates_equal_obs_reference_and_counts_are_exact():
    w, x = _correlated(seed=2)
    h = 2 * x.double().T @ x.double() / x.shape[0]
    new, keep = sparsegpt(w, h, 0.5, damp=0.01, block=8)
    assert int((~keep).sum()) == 4 * math.floor(0.5 * 8 * 8)  # exactly floor(p * n) in every 8-column block
    for start in range(0, 32, 8):
        assert int((~keep[:, start : start + 8]).sum()) == 32
    assert (new[~keep] == 0).all()
    ref = _obs_reference(w, h, keep, damp=0.01)
    assert torch.allclose(new.double(), ref * keep, atol=1e-4)
    # compensation beats zeroing the same weights
    err = lambda v: torch.linalg.norm(x.double() @ (w.double() - v.double()).T).item()  # noqa: E731
    assert err(new) < err(w * keep)


def test_sparsegpt_with_identity_hessian_is_magnitude_pruning():
    w = torch.randn(6, 16, generator=torch.Generator().manual_seed(3))
    new, keep = sparsegpt(w, torch.eye(16, dtype=torch.float64), 0.5, damp=1e-12, block=16)
    flat = torch.ones(96, dtype=torch.bool)
    flat[torch.sort(w.pow(2).flatten(), stable=True).indices[:48]] = False
    assert torch.equal(keep, flat.view(6, 16))
    assert torch.allclose(new, w * keep, atol=1e-6)


def test_sparsegpt_nm_pattern():
    w, x = _correlated(seed=4)
    _, keep = sparsegpt(w, 2 * x.double().T @ x.double() / 200, 0.5, nm=(2, 4), block=16)
    assert (keep.view(8, 8, 4).sum(-1) == 2).all()


def test_owl_levels_average_the_target_and_protect_outlier_blocks():
    levels = owl_levels([0.01, 0.05, 0.02, 0.03], 0.5, 0.08)
    assert sum(levels) / 4 == pytest.approx(0.5)
    assert levels[1] == min(levels) and levels[0] == max(levels)
    assert max(levels) - min(levels) == pytest.approx(0.16)
    assert owl_levels([0.02, 0.02], 0.6, 0.08) == pytest.approx([0.6, 0.6])
    assert outlier_ratio([torch.tensor([1.0, 1.0, 1.0, 10.0])], 2.0) == 0.25


def test_sleb_first_choice_matches_brute_force(random_model):
    calib = torch.randint(1, 64, (4, 24), generator=torch.Generator().manual_seed(0))
    losses = []
    for i in range(4):
        trial = copy.deepcopy(random_model)
        trial.gpt_neox.layers[i] = SkipBlock()
        losses.append(calibration_loss(trial, calib))
    removed = sleb(random_model, calib, 2)
    assert removed[0] == min(range(4), key=losses.__getitem__) and len(set(removed)) == 2
    assert all(not isinstance(layer, SkipBlock) for layer in random_model.gpt_neox.layers)  # model restored


CFG = {"block_fraction": 0.25, "seed": 0, "owl": {"score": "wanda", "M": 5, "lambda": 0.08}}


def _ctx(model, calib):
    from prunemem.prune.methods import MaskContext
    from prunemem.prune.targets import DictSource

    state = {k: v.clone() for k, v in model.state_dict().items()}

    def fresh():
        clone = copy.deepcopy(model)
        clone.load_state_dict(state)
        return clone

    return MaskContext(DictSource(state), CFG, load_model=fresh, calibration=lambda: calib)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "owl", "sleb", "wanda-2of4", "magnitude-4of8",
                                    "sparsegpt-2of4"])
def test_calibrated_methods_save_apply_and_agree_with_generate(random_model, tmp_path, method):
    from prunemem.evaluate.memorization import greedy_extracted, score_windows
    from prunemem.prune import masks
    from prunemem.prune.methods import compute

    calib = torch.randint(1, 64, (4, 32), generator=torch.Generator().manual_seed(0))
    result = compute(method, _ctx(random_model, calib), 0.5)
    keeps = result.bool_masks()
    total = sum(m.numel() for m in keeps.values())
    pruned = sum(int((~m).sum()) for m in keeps.values())
    # OWL spreads the level over blocks, and each row rounds its share down
    assert pruned == total // 2 if method != "owl" else 0.45 < pruned / total <= 0.5
    if method == "sleb":  # protect_ends (the default): the two inner blocks of four are the only candidates
        assert sorted(result.removed_blocks) == [1, 2]
    if method == "sparsegpt-2of4":  # 2 of every 4 consecutive inputs kept, weights compensated
        for name, keep in keeps.items():
            assert (keep.reshape(keep.shape[0], -1, 4).sum(-1) == 2).all()
        assert set(result.updated) == set(result.masks)
    path = tmp_path / "m.safetensors"
    masks.save(path, result.masks, method=method, level="0.5", checkpoint_sha256="c" * 64, updated=result.updated,
               removed_blocks=result.removed_blocks, block_levels=result.block_levels)
    model = copy.deepcopy(random_model)
    model.prunemem_checkpoint_sha256 = "c" * 64
    masks.apply(model, path)
    params = dict(model.named_parameters())
    for name, keep in keeps.items():
        if name in params:  # SLEB's removed blocks are gone from the model
            assert (params[name][~keep] == 0).all()
    if result.updated:
        assert all(torch.equal(params[n], w) for n, w in result.updated.items())
    windows = torch.randint(1, 64, (6, 24), generator=torch.Generator().manual_seed(1))
    assert torch.equal(score_windows(model, windows, 12, 8, 4)["extracted"],
                       greedy_extracted(model, windows, 12, 8, pad_id=0))


def test_sleb_protect_ends_and_levels_it_cannot_reach(random_model):
    from prunemem.errors import PrunememError
    from prunemem.prune.methods import compute

    calib = torch.randint(1, 64, (4, 24), generator=torch.Generator().manual_seed(0))
    assert set(sleb(copy.deepcopy(random_model), calib, 2, protect_ends=True)) == {1, 2}
    with pytest.raises(PrunememError, match=r"^prune.levels: sleb at 0.75 removes 3 of 4 blocks and only 2 may go"):
        compute("sleb", _ctx(random_model, calib), 0.75)
    unprotected = {**CFG, "sleb": {"protect_ends": False}}
    ctx = _ctx(random_model, calib)
    ctx.cfg = unprotected
    assert len(compute("sleb", ctx, 0.75).removed_blocks) == 3
