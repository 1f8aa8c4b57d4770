"""GPTQ against the unblocked OBQ reference, against round-to-nearest, and the block-by-block calibration."""

from __future__ import annotations

import pytest
import torch

from prunemem.compress.gptq import gptq
from prunemem.compress.quantize import fake_quantize, grid, quantize_dequantize


def _obq_reference(w, h, bits, group, symmetric, damp):
    """Column-by-column optimal-brain-quantization with an explicit inverse Hessian, re-inverted after
    each column is fixed (Frantar & Alistarh 2022) -- no Cholesky, no blocking."""
    w = w.double().clone()
    h = h.double().clone()
    h += damp * torch.diag(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)
    hinv = torch.linalg.inv(h)
    q = torch.zeros_like(w)
    for i in range(w.shape[1]):
        if i % group == 0:
            params = grid(w[:, i : i + group], bits, symmetric)
        q[:, i] = fake_quantize(w[:, i : i + 1], *params).squeeze(1)
        err = (w[:, i] - q[:, i]) / hinv[i, i]
        w[:, i:] -= err.unsqueeze(1) * hinv[i, i:].unsqueeze(0)
        hinv = hinv - hinv[:, i : i + 1] @ hinv[i : i + 1, :] / hinv[i, i]
    return q


def _problem(seed=0, rows=6, cols=32, n=256):
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=gen)
    x = torch.randn(n, cols, generator=gen) @ mix  # correlated inputs, where GPTQ matters
    w = torch.randn(rows, cols, generator=gen)
    return w, 2 * x.double().T @ x.double() / n, x


@pytest.mark.parametrize("bits,group,symmetric", [(4, 32, True), (3, 8, False), (2, 16, True)])
def test_gptq_equals_unblocked_obq(bits, group, symmetric):
    w, h, _ = _problem()
    ours = gptq(w, h, bits, group if group < 32 else 0, symmetric, damp=0.01, block=8)
    ref = _obq_reference(w, h, bits, group, symmetric, damp=0.01)
    assert torch.allclose(ours.double(), ref, atol=1e-4)


def test_gptq_with_identity_hessian_is_round_to_nearest():
    w = torch.randn(5, 64, generator=torch.Generator().manual_seed(1))
    ours = gptq(w, torch.eye(64, dtype=torch.float64), 4, 16, True, damp=0.01, block=16)
    assert torch.allclose(ours, quantize_dequantize(w, 4, 16, True), atol=1e-6)


def test_gptq_reconstructs_layer_outputs_better_than_rtn():
    w, h, x = _problem(seed=2)
    out_err = lambda q: torch.linalg.norm(x @ (w - q).T).item()  # noqa: E731
    assert out_err(gptq(w, h, 3, 0, True, damp=0.01)) < 0.8 * out_err(quantize_dequantize(w, 3, 0, True))


def test_blockwise_calibration_sees_each_block_once_and_propagates_edits(random_model):
    from prunemem.blockwise import HessianStats, blockwise

    ids = torch.randint(1, 64, (6, 16), generator=torch.Generator().manual_seed(0))
    seen = []

    def edit(index, linears, stats):
        seen.append(index)
        assert len(linears) == 4 and all(f"layers.{index}." in n for n in linears)
        for name, module in linears.items():
            assert stats[name].rows == 6 * 16
            assert torch.allclose(stats[name].hessian, stats[name].hessian.T)
            module.weight.zero_()  # edits must reach the next block's inputs

    with torch.no_grad():
        before = random_model(input_ids=ids).logits
    blockwise(random_model, ids, lambda m: HessianStats(m.in_features, "cpu"), edit, batch_size=4)
    assert seen == [0, 1, 2, 3]
    with torch.no_grad():
        after = random_model(input_ids=ids).logits
    assert not torch.allclose(before, after)


def test_first_block_hessian_matches_direct_computation(random_model):
    from prunemem.blockwise import HessianStats, blockwise

    ids = torch.randint(1, 64, (4, 12), generator=torch.Generator().manual_seed(5))
    captured = {}
    layer0 = random_model.gpt_neox.layers[0]

    def keep_input(module, args, output):
        captured["x"] = args[0].detach()

    handle = layer0.mlp.dense_4h_to_h.register_forward_hook(keep_input)
    with torch.no_grad():
        random_model(input_ids=ids)
    handle.remove()
    x = captured["x"].reshape(-1, captured["x"].shape[-1]).double()
    hessians = {}

    def edit(index, linears, stats):
        if index == 0:
            hessians.update({n: s.hessian for n, s in stats.items()})

    blockwise(random_model, ids, lambda m: HessianStats(m.in_features, "cpu"), edit, batch_size=3)
    assert torch.allclose(hessians["gpt_neox.layers.0.mlp.dense_4h_to_h"], 2 * x.T @ x / x.shape[0], atol=1e-8)


@pytest.mark.parametrize("bits,group,symmetric", [(4, 8, True), (3, 16, False), (8, 0, True)])
def test_gptq_stored_codes_give_its_weights_back_bit_for_bit(bits, group, symmetric):
    from prunemem.compress.quantize import dequantize
    from prunemem.compress.run import _pack_codes, _qmin, _unpack_codes

    w, h, _ = _problem(seed=3)
    store: dict = {}
    ours = gptq(w, h, bits, group, symmetric, damp=0.01, block=8, store=store)
    assert torch.equal(ours, gptq(w, h, bits, group, symmetric, damp=0.01, block=8))  # storing changes nothing
    spec = {"bits": bits, "symmetric": symmetric}
    packed = _pack_codes(store["codes"], _qmin(spec), bits)
    assert packed.dtype == torch.uint8 and packed.numel() == (w.numel() + 1) // 2 if bits <= 4 else w.numel()
    scale, zero = store["scale"], store["zero"].to(torch.uint8).to(torch.float64)
    codes = _unpack_codes(packed, _qmin(spec), bits, w.numel(), scale.dtype).reshape(scale.shape[0], scale.shape[1], -1)
    assert torch.equal(dequantize(codes, scale, zero).reshape(w.shape).to(w.dtype), ours)
