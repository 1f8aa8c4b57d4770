"""`prunemem export`: a compressed variant as a standard HF checkpoint that reproduces our evaluation exactly."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from prunemem.errors import PrunememError
from prunemem.export import export_variant
from prunemem.plan import Plan
from prunemem.runtime import deterministic


def _plan(root):
    return Plan.load([root / "params.yaml"], root=root)


def _windows(plan) -> torch.Tensor:
    from prunemem.provenance import read_parquet

    members = read_parquet(plan.samples_dir("tiny") / "members.parquet", "members")
    return torch.tensor(members["tokens"].to_list()[:16], dtype=torch.long)


# a mask with updated weights, one with a removed block, one with removed sublayers, two transforms
@pytest.mark.parametrize("method,level,layers", [("sparsegpt", "0.5", 2), ("sleb", "0.5", 1), ("evop-mem", "0.5", 2),
                                                 ("int4-gptq", "0", 2), ("lowrank", "0.5", 2)])
def test_export_loads_with_transformers_alone_and_gives_the_evaluated_logits(pipeline, tmp_path, method, level,
                                                                            layers):
    from transformers import AutoModelForCausalLM

    from prunemem.evaluate.run import load_variant

    deterministic(1)
    plan = _plan(pipeline)
    out = export_variant(plan, "tiny", method, level, tmp_path / "out")
    exported = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    assert exported.config.num_hidden_layers == layers
    ours = load_variant(plan, "tiny", method, level, "cpu", torch.float32)[0].eval()
    ids = _windows(plan)
    with torch.no_grad():
        assert torch.equal(exported(ids).logits, ours(ids).logits)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["checkpoint_sha256"] == ours.prunemem_checkpoint_sha256
    assert prov["inputs"] and prov["evaluation"]["perplexity"] > 0
    card = (out / "README.md").read_text()
    assert prov["checkpoint_sha256"] in card and f"--method {method}" in card


def test_exported_model_scores_the_evaluated_perplexity_exactly(pipeline, tmp_path):
    from transformers import AutoModelForCausalLM

    from prunemem.evaluate.perplexity import combine, span_nll, spans
    from prunemem.provenance import read_parquet

    plan = _plan(pipeline)
    summary = json.loads((plan.metrics_dir("tiny", "global", "0.5") / "summary.json").read_text())
    deterministic(plan.params["evaluate"]["threads"])
    model = AutoModelForCausalLM.from_pretrained(export_variant(plan, "tiny", "global", "0.5", tmp_path / "g"),
                                                 local_files_only=True).eval()
    docs = read_parquet(plan.samples_dir("tiny") / "perplexity.parquet", "perplexity set")["tokens"].to_list()
    tokens = torch.tensor([t for doc in docs for t in doc])
    todo = spans(tokens.numel(), plan.params["perplexity"]["window"], plan.params["perplexity"]["stride"])
    batch = summary["perplexity_batch_size"]
    with torch.no_grad():
        nll = torch.cat([span_nll(model, tokens, todo[i:i + batch]) for i in range(0, len(todo), batch)])
    assert combine(float(nll.sum()), todo)[0] == summary["perplexity"]


def test_a_variant_failing_verification_is_refused_and_nothing_is_written(pipeline, tmp_path):
    study = tmp_path / "study"
    shutil.copytree(pipeline, study, ignore=shutil.ignore_patterns(".snakemake", "metrics", "reports"))
    plan = _plan(study)
    transform = plan.variant_artifact("tiny", "int8", "0")
    weights = transform.with_suffix(".safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(PrunememError) as err:
        export_variant(plan, "tiny", "int8", "0", tmp_path / "out")
    assert "\n" not in str(err.value) and weights.name in str(err.value)
    assert not (tmp_path / "out").exists()
    mask = plan.variant_artifact("tiny", "global", "0.9")
    mask.unlink()
    with pytest.raises(PrunememError, match=r"artifact is missing; build it first"):
        export_variant(plan, "tiny", "global", "0.9", tmp_path / "out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(PrunememError, match=r"--out: .*full exists and is not empty"):
        export_variant(plan, "tiny", "global", "0.5", tmp_path / "full")
    assert not (tmp_path / "out").exists()
