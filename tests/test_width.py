"""Width units (prunemem.prune.width): zeroing a unit is removing it, shrinking really shrinks."""

from __future__ import annotations

import copy

import pytest
import torch

from prunemem.errors import PrunememError
from prunemem.prune import width
from prunemem.prune.width import WidthUnit


@pytest.fixture
def model(biased_model):
    return biased_model


def _ids():
    return torch.randint(1, 64, (2, 24), generator=torch.Generator().manual_seed(0))


def _some_units(model):
    return [WidthUnit(0, "head", 1), WidthUnit(0, "head", 3), WidthUnit(1, "neuron", 0), WidthUnit(1, "neuron", 77),
            WidthUnit(2, "head", 0), WidthUnit(2, "neuron", 5), WidthUnit(3, "head", 2),
            *[WidthUnit(3, "neuron", i) for i in range(0, 128, 2)]]


def test_width_units_cover_every_head_and_neuron_in_order(model):
    units = width.width_units(model)
    assert units == sorted(units)
    assert len(units) == 4 * (4 + 128)
    assert units[:5] == [WidthUnit(0, "head", i) for i in range(4)] + [WidthUnit(0, "neuron", 0)]


def test_unit_slices_follow_the_fused_per_head_layout(model):
    """Head h's q, k and v are rows [3dh, 3d(h+1)) of query_key_value: checked against HF's own split."""
    layer = model.gpt_neox.layers[0].attention
    d = layer.head_size
    x = torch.randn(1, 5, 32)
    qkv = layer.query_key_value(x).view(1, 5, -1, 3 * d).transpose(1, 2)  # as GPTNeoXAttention.forward
    q, k, v = qkv.chunk(3, dim=-1)
    name, dim, rows = width.unit_slices(model, WidthUnit(0, "head", 2))[0]
    assert (name, dim) == ("gpt_neox.layers.0.attention.query_key_value.weight", 0)
    mine = torch.nn.functional.linear(x, layer.query_key_value.weight[rows], layer.query_key_value.bias[rows])
    torch.testing.assert_close(mine, torch.cat([q[:, 2], k[:, 2], v[:, 2]], dim=-1))
    names = [s[0].rsplit(".", 2)[-2] + "." + s[0].rsplit(".", 1)[-1] for s in width.unit_slices(model, WidthUnit(1, "neuron", 3))]
    assert names == ["dense_h_to_4h.weight", "dense_h_to_4h.bias", "dense_4h_to_h.weight"]


def test_zeroing_units_equals_shrinking_them(model):
    units = _some_units(model)
    ids = _ids()
    with torch.no_grad():
        dense = model(ids).logits
        with width.units_zeroed(model, units):
            zeroed = model(ids).logits
        small = width.shrink(copy.deepcopy(model), units)
        shrunk = small(ids).logits
    assert not torch.allclose(zeroed, dense, atol=1e-3)  # the units mattered
    torch.testing.assert_close(shrunk, zeroed, rtol=1e-5, atol=1e-5)
    # and a greedy generate() with the KV cache runs on the shrunk model
    out = small.generate(ids[:1, :8], max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 12)


def test_shrink_changes_shapes_and_parameter_count(model):
    before = width.n_parameters(model)
    units = _some_units(model)
    expected = sum(width.unit_size(model, u) for u in units)
    width.shrink(model, units)
    layers = model.gpt_neox.layers
    assert tuple(layers[0].attention.query_key_value.weight.shape) == (3 * 8 * 2, 32)
    assert tuple(layers[0].attention.dense.weight.shape) == (32, 16)
    assert tuple(layers[3].mlp.dense_h_to_4h.weight.shape) == (64, 32)
    assert tuple(layers[3].mlp.dense_4h_to_h.weight.shape) == (32, 64)
    assert before - width.n_parameters(model) == expected > 0
    assert model.config.width_per_block[3] == {"heads": 3, "neurons": 64}
    assert len(width.width_units(model)) == 4 * 132 - len(units)


def test_units_zeroed_restores_weights_bit_exactly(model):
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with width.units_zeroed(model, _some_units(model)):
        assert float(model.gpt_neox.layers[0].attention.query_key_value.weight[24:48].detach().abs().sum()) == 0
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
    with pytest.raises(RuntimeError), width.units_zeroed(model, _some_units(model)):
        raise RuntimeError("a failing trial")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_removing_a_whole_sublayer_is_refused_unless_allowed(model):
    every_head = [WidthUnit(1, "head", h) for h in range(4)]
    with pytest.raises(PrunememError, match=r"every head of layer 1 \(gpt_neox.layers.1.attention\)"):
        width.shrink(copy.deepcopy(model), every_head)
    ids = _ids()
    units = every_head + [WidthUnit(2, "neuron", i) for i in range(128)]
    with torch.no_grad():
        with width.units_zeroed(model, units):
            zeroed = model(ids).logits
        shrunk = width.shrink(copy.deepcopy(model), units, allow_empty_sublayer=True)(ids).logits
    torch.testing.assert_close(shrunk, zeroed, rtol=1e-5, atol=1e-5)


def test_standard_form_round_trips_through_from_pretrained(model, tmp_path):
    """Export: the shrunk model in standard shapes loads with transformers alone and gives the same logits."""
    from transformers import GPTNeoXForCausalLM

    units = _some_units(model) + [WidthUnit(b, "neuron", i) for b in (0, 1, 2) for i in range(100, 128)] + \
        [WidthUnit(1, "head", h) for h in range(4)]
    ids = _ids()
    with torch.no_grad():
        with width.units_zeroed(model, units):
            zeroed = model(ids).logits
        small = width.shrink(copy.deepcopy(model), units, allow_empty_sublayer=True)
        assert width.standard_form(small)["intermediate_size"] == 128 - 28
        small.save_pretrained(tmp_path, safe_serialization=True)
        loaded = GPTNeoXForCausalLM.from_pretrained(tmp_path).eval()
        torch.testing.assert_close(loaded(ids).logits, zeroed, rtol=1e-5, atol=1e-5)
    assert loaded.config.intermediate_size == 100
