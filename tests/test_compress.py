"""Quantization against torch's fake-quantize reference; low-rank against Eckart–Young; records and apply."""

from __future__ import annotations

import pytest
import torch

from prunemem.compress.lowrank import rank_for, truncated_svd
from prunemem.compress.quantize import bits_per_weight, quantize_dequantize


def _reference(w, bits, group, symmetric):
    """torch.fake_quantize_per_channel_affine over rows of (out * groups, group)."""
    rows = w.reshape(-1, group)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = rows.abs().amax(1) / qmax
        zero = torch.zeros(rows.shape[0], dtype=torch.int32)
        qmin = -qmax
    else:
        qmin, qmax = 0, 2**bits - 1
        scale = (rows.amax(1) - rows.amin(1)) / qmax
        zero = torch.clamp(torch.round(-rows.amin(1) / scale), 0, qmax).to(torch.int32)
    out = torch.fake_quantize_per_channel_affine(rows, scale, zero, 0, qmin, qmax)
    return out.reshape(w.shape)


@pytest.mark.parametrize("bits,group,symmetric", [(8, 0, True), (8, 0, False), (4, 16, True), (4, 16, False),
                                                  (3, 32, True), (2, 8, False)])
def test_round_to_nearest_matches_torch_fake_quantize(bits, group, symmetric):
    w = torch.randn(12, 64, generator=torch.Generator().manual_seed(bits))
    ours = quantize_dequantize(w, bits, group, symmetric)
    ref = _reference(w, bits, group or 64, symmetric)
    assert torch.allclose(ours, ref, atol=1e-6)
    levels = ours.reshape(-1, group or 64).unique(dim=None).numel()
    assert levels <= 12 * (64 // (group or 64)) * 2**bits
    assert ((ours - w).abs() <= (w.abs().max() / (2 ** (bits - 1) - 1 if symmetric else 1))).all()


def test_quantization_errors_are_one_line():
    w = torch.randn(4, 48)
    with pytest.raises(ValueError, match="allowed: 2, 3, 4, 8"):
        quantize_dequantize(w, 5, 0, True)
    with pytest.raises(ValueError, match="group_size: 32 does not divide the input dimension 48"):
        quantize_dequantize(w, 4, 32, True)


def test_bits_per_weight_counts_scales_and_zero_points():
    assert bits_per_weight(8, 0, 256, True) == 8 + 16 / 256
    assert bits_per_weight(4, 128, 1024, False) == 4 + (16 + 4) / 128


def test_truncated_svd_is_eckart_young_optimal():
    w = torch.randn(20, 30, generator=torch.Generator().manual_seed(0))
    s = torch.linalg.svdvals(w.double())
    for rank in (1, 5, 19, 20):
        approx = truncated_svd(w, rank)
        assert torch.linalg.matrix_rank(approx.double(), rtol=1e-5).item() == rank  # float32 rounding noise
        expected = s[rank:].pow(2).sum().sqrt().item()
        assert torch.linalg.norm((w - approx).double()).item() == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_rank_for_keeps_the_parameter_budget():
    assert rank_for(0.5, 256, 768) == 96  # 96 * (256 + 768) = 0.5 * 256 * 768
    assert rank_for(1.0, 10, 10) == 5  # factors of rank 5 already cost all 100 parameters
    assert rank_for(0.01, 8, 8) == 0
    with pytest.raises(ValueError, match=r"outside \(0, 1\]"):
        rank_for(1.5, 8, 8)


@pytest.fixture
def plan_with_checkpoint(tmp_path, random_model, default_params):
    """A plan rooted in tmp_path whose checkpoint is the random tiny model (hidden 32 -> groups of 16)."""
    from prunemem.plan import Plan

    params = {**default_params, "compress": {"quantize": {"int4": {"bits": 4, "group_size": 16, "symmetric": False}},
                                             "lowrank": {"keep": [0.5]}}}
    plan = Plan(params, tmp_path)
    random_model.save_pretrained(plan.checkpoint_dir("tiny"), safe_serialization=True)
    return plan


@pytest.mark.parametrize("method,level", [("int4", "0"), ("lowrank", "0.5")])
def test_transform_record_round_trip_and_refusals(plan_with_checkpoint, method, level):
    import json

    from prunemem.checkpoints import load_model
    from prunemem.compress.run import apply_transform, build_transform
    from prunemem.errors import PrunememError

    plan = plan_with_checkpoint
    path = build_transform(plan, "tiny", method, level)
    record = json.loads(path.read_text())
    assert record["method"] == method and 0 < record["compression"] < 1
    model = load_model(plan.checkpoint_dir("tiny"))
    before = {n: p.clone() for n, p in model.named_parameters()}
    assert apply_transform(model, path)["weights_sha256"] == record["weights_sha256"]
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.endswith(("query_key_value.weight", "dense.weight", "4h.weight", "4h_to_h.weight"))
                           for n in changed)

    # the stored weights are what the transform computed, compactly: recomputing gives the same bits
    from prunemem.compress.run import transform_model, weights_digest, weights_path

    fresh = load_model(plan.checkpoint_dir("tiny"))
    transform_model(fresh, record["spec"], "k")
    assert weights_digest(fresh) == record["weights_sha256"]
    stored, dense = weights_path(path).stat().st_size, sum(before[n].numel() * 4 for n in changed)
    # int4, groups of 16: 4-bit codes + a float32 scale and a uint8 zero per group = 0.203 of fp32; rank-r factors
    assert stored < (0.25 if method == "int4" else 0.55) * dense  # (+ the header, large beside a tiny model)

    original, before_record = weights_path(path).read_bytes(), dict(record)
    record["weights_sha256"] = "0" * 64
    path.write_text(json.dumps(record))
    refusals = []
    with pytest.raises(PrunememError, match="differs from the recorded 000000000000...; refusing the stored") as err:
        apply_transform(load_model(plan.checkpoint_dir("tiny")), path)
    refusals.append(err)
    tampered = bytearray(original)
    tampered[-1] ^= 1
    weights_path(path).write_bytes(bytes(tampered))
    with pytest.raises(PrunememError, match=r"stored transform weights differ from the record's sha256") as err:
        apply_transform(load_model(plan.checkpoint_dir("tiny")), path)
    refusals.append(err)
    weights_path(path).write_bytes(original)
    record["checkpoint_sha256"] = "f" * 64
    path.write_text(json.dumps(record))
    with pytest.raises(PrunememError, match="transform was made for checkpoint"):
        apply_transform(load_model(plan.checkpoint_dir("tiny")), path)
    path.write_text(json.dumps(before_record))
    weights_path(path).unlink()
    with pytest.raises(PrunememError, match="transform weights file not found") as missing:
        apply_transform(load_model(plan.checkpoint_dir("tiny")), path)
    # every refusal is one line naming the file, and nothing is recomputed in its place
    for err in refusals + [missing]:
        assert "\n" not in str(err.value) and str(path.parent) in str(err.value), err.value
    assert not weights_path(path).exists()


@pytest.mark.parametrize("compress,fragment", [
    ({"quantize": {"int5": {"bits": 5, "group_size": 0, "symmetric": True}}}, "compress.quantize.int5.bits"),
    ({"quantize": {"int4": {"bits": 4, "group_size": 100, "symmetric": True}}},
     "compress.quantize.int4.group_size: 100 does not divide the input dimension 192"),
    ({"lowrank": {"keep": [0.0]}}, "compress.lowrank.keep[0]"),
    ({"lowrank": {"keep": [1.5]}}, "compress.lowrank.keep[0]"),
    ({"lowrank": {"keep": [0.001]}}, "compress.lowrank.keep: 0.001 leaves rank 0"),
])
def test_bad_compression_params_give_one_line(tmp_path, capsys, default_params, compress, fragment):
    from conftest import write_params
    from prunemem.cli import main

    params_file = write_params(tmp_path / "params.yaml", {**default_params, "compress": compress})
    assert main(["--params", str(params_file), "validate"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err, err
