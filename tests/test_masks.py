"""Mask methods against torch.nn.utils.prune, exact counts, ties, the file format and apply()."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.utils import prune as torch_prune

from prunemem.errors import PrunememError
from prunemem.prune import magnitude, masks
from prunemem.prune.methods import MaskContext, compute
from prunemem.prune.targets import DictSource, blocks_at_edges, prunable

CFG = {"block_fraction": 0.25, "seed": 0}


def _compute(method, source, level, cfg=CFG):
    return compute(method, MaskContext(source, cfg), level).bool_masks()


def _linears(model):
    mods = dict(model.named_modules())
    return [(mods[t.name.rsplit(".", 1)[0]], t.name) for t in prunable([n for n, _ in model.named_parameters()])]


def test_prunable_set_is_the_four_block_linears(random_model):
    names = [t.name for t in prunable(list(random_model.state_dict()))]
    assert len(names) == 4 * 4
    assert all(n.endswith(("query_key_value.weight", "attention.dense.weight", "dense_h_to_4h.weight",
                           "dense_4h_to_h.weight")) for n in names)
    assert not any("embed" in n or "layernorm" in n or "bias" in n for n in names)


@pytest.mark.parametrize("level", [0.1, 0.5, 0.9])
def test_layerwise_matches_torch_l1_unstructured(random_model, level):
    ours = _compute("layerwise", DictSource(random_model.state_dict()), level, CFG)
    for module, name in _linears(random_model):
        n = module.weight.numel()
        torch_prune.l1_unstructured(module, "weight", amount=math.floor(level * n))
        assert torch.equal(ours[name], module.weight_mask.bool()), name
        torch_prune.remove(module, "weight")


@pytest.mark.parametrize("level", [0.2, 0.5, 0.8])
def test_global_matches_torch_global_unstructured(random_model, level):
    sd = {k: v.clone() for k, v in random_model.state_dict().items()}
    ours = _compute("global", DictSource(sd), level, CFG)
    linears = _linears(random_model)
    total = sum(m.weight.numel() for m, _ in linears)
    torch_prune.global_unstructured([(m, "weight") for m, _ in linears], pruning_method=torch_prune.L1Unstructured,
                                    amount=math.floor(level * total))
    for module, name in linears:
        assert torch.equal(ours[name], module.weight_mask.bool()), name
    assert sum(int((~m).sum()) for m in ours.values()) == math.floor(level * total)


def test_global_exact_count_and_tie_rule():
    # every magnitude equal: the quota must be filled by (tensor order, flat index), first pruned first
    sd = {"gpt_neox.layers.0.mlp.dense_h_to_4h.weight": torch.full((3, 5), -2.0),
          "gpt_neox.layers.1.mlp.dense_h_to_4h.weight": torch.full((4, 5), 2.0)}
    keep = {n: m.bool() for n, m in magnitude.global_masks(list(sd), lambda n: sd[n].abs(), 0.5).items()}
    first, second = keep["gpt_neox.layers.0.mlp.dense_h_to_4h.weight"], keep["gpt_neox.layers.1.mlp.dense_h_to_4h.weight"]
    assert int((~first).sum()) + int((~second).sum()) == 17  # floor(0.5 * 35)
    assert not first.any() and int((~second).sum()) == 2
    assert not second.view(-1)[:2].any() and second.view(-1)[2:].all()


def test_tensor_mask_ties_break_by_index():
    keep = magnitude.tensor_mask(torch.tensor([1.0, 0.5, 0.5, 0.5, 2.0]), 0.4)
    assert keep.tolist() == [True, False, False, True, True]


def test_zero_level_keeps_everything(random_model):
    src = DictSource(random_model.state_dict())
    for method in ("layerwise", "global", "attention", "mlp", "first25", "last25", "random"):
        assert all(m.all() for m in _compute(method, src, 0.0, CFG).values()), method


@pytest.mark.parametrize("method,part", [("attention", "attention"), ("mlp", "mlp"), ("first25", "first"),
                                         ("last25", "last")])
def test_subset_methods_touch_only_their_subset(random_model, method, part):
    src = DictSource(random_model.state_dict())
    keep = _compute(method, src, 0.5, CFG)
    inside = {t.name for t in src.targets if {"attention": t.part == "attention", "mlp": t.part == "mlp",
                                               "first": t.layer == 0, "last": t.layer == 3}[part]}
    assert inside and all(keep[n].all() for n in keep if n not in inside)
    n_inside = sum(keep[n].numel() for n in inside)
    assert sum(int((~keep[n]).sum()) for n in inside) == math.floor(0.5 * n_inside)


def test_edge_blocks_fraction():
    assert blocks_at_edges(4, 0.25) == 1 and blocks_at_edges(36, 0.25) == 9 and blocks_at_edges(2, 0.25) == 1
    assert blocks_at_edges(6, 0.25) == 2


def test_random_control_is_exact_seeded_and_not_magnitude(random_model):
    src = DictSource(random_model.state_dict())
    a, b = _compute("random", src, 0.5, CFG), _compute("random", src, 0.5, CFG)
    c = _compute("random", src, 0.5, {**CFG, "seed": 1})
    mag = _compute("layerwise", src, 0.5, CFG)
    for name, m in a.items():
        assert int((~m).sum()) == math.floor(0.5 * m.numel())
        assert torch.equal(m, b[name])
    assert any(not torch.equal(a[n], c[n]) for n in a)
    assert any(not torch.equal(a[n], mag[n]) for n in a)


def test_pack_roundtrip_odd_sizes():
    gen = torch.Generator().manual_seed(0)
    for shape in [(1,), (7,), (3, 5), (8, 8), (2, 3, 11)]:
        m = torch.rand(shape, generator=gen) > 0.4
        packed = masks.pack(m)
        assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(m.numel() / 8)
        assert torch.equal(masks.unpack(packed, list(shape)), m)
    # numpy.packbits order: most significant bit first
    assert masks.pack(torch.tensor([True] + [False] * 7)).item() == 128


def test_save_load_apply_and_refuse_other_checkpoint(random_model, tmp_path):
    src = DictSource({k: v.clone() for k, v in random_model.state_dict().items()})
    keep = _compute("global", src, 0.6, CFG)
    path = tmp_path / "m.safetensors"
    masks.save(path, keep, method="global", level="0.6", checkpoint_sha256="a" * 64, provenance={"x": 1})
    loaded = masks.load(path)
    assert loaded.keys() == keep.keys() and all(torch.equal(loaded[n], keep[n]) for n in keep)
    meta = masks.header(path)
    assert meta["method"] == "global" and meta["level"] == "0.6" and meta["provenance"] == {"x": 1}
    assert meta["kept"] == {n: int(m.sum()) for n, m in keep.items()}

    random_model.prunemem_checkpoint_sha256 = "b" * 64
    before = {n: p.clone() for n, p in random_model.named_parameters()}
    with pytest.raises(PrunememError, match="mask was made for checkpoint"):
        masks.apply(random_model, path)
    assert all(torch.equal(before[n], p) for n, p in random_model.named_parameters())

    random_model.prunemem_checkpoint_sha256 = "a" * 64
    masks.apply(random_model, path)
    params = dict(random_model.named_parameters())
    for name, m in keep.items():
        assert torch.equal(params[name] != 0, m & (before[name] != 0))
    embed = "gpt_neox.embed_in.weight"
    assert torch.equal(params[embed], before[embed])


def test_corrupt_mask_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00not a header")
    with pytest.raises(PrunememError, match="bad.safetensors"):
        masks.load(bad)


def test_global_masks_chunked_equal_whole_and_pack_per_tensor(random_model, monkeypatch):
    # ties across chunk boundaries: magnitudes rounded to a few values
    sd = {t.name: (random_model.state_dict()[t.name] * 4).round() / 4
          for t in prunable(list(random_model.state_dict()))}
    whole = magnitude.global_masks(list(sd), lambda n: sd[n].abs(), 0.6, pack=False)
    monkeypatch.setattr(magnitude, "CHUNK", 40)  # a multiple of 8 smaller than every tensor
    chunked = magnitude.global_masks(list(sd), lambda n: sd[n].abs(), 0.6)
    assert all(torch.equal(chunked[n].bool(), whole[n]) and chunked[n].kept == int(whole[n].sum()) for n in sd)
    assert all(torch.equal(chunked[n].bits, masks.pack(whole[n])) for n in sd)  # the artifact's bytes
    assert torch.equal(masks.pack(whole[next(iter(sd))], chunk=16), masks.pack(whole[next(iter(sd))]))
