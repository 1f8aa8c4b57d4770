"""jobs.batch: which jobs one process runs, and that batching never changes what is built.

- ``variant``: every job of the job table is its own batch (the cluster presets);
- ``method``: one batch per (stage, model, method) of the level stages, its levels in the plan's
  order, owning the method's directory (the embedded default and the suite's SMALL study);
- a level built second in a batch's process (the SMALL study was built by Snakemake with
  ``method``) is byte-identical to the same level built alone in a fresh process.
"""

from __future__ import annotations

import copy
import hashlib
import shutil
import subprocess

from conftest import SMALL, venv_env
from prunemem.cluster import batch_resources, job_resources
from prunemem.dvcgen import stages
from prunemem.plan import LEVEL_STAGES, METRICS_FILES, Plan


def _plan(batch: str) -> Plan:
    params = copy.deepcopy(SMALL)
    params["jobs"] = {"batch": batch}
    return Plan(params)


def test_variant_batches_are_the_jobs_one_to_one():
    plan = _plan("variant")
    assert [b.jobs for b in plan.batches()] == [(job,) for job in plan.jobs()]
    assert [b.name for b in plan.batches()] == [job.name for job in plan.jobs()]
    assert all(b.targets == job.outputs and b.args == job.args for b, job in zip(plan.batches(), plan.jobs()))


def test_method_batches_group_a_methods_levels_in_order():
    plan, each = _plan("method"), _plan("variant")
    grouped = [b for b in plan.batches() if b.stage in LEVEL_STAGES]
    assert len(plan.batches()) < len(plan.jobs())
    assert sorted(j.id for b in plan.batches() for j in b.jobs) == sorted(j.id for j in plan.jobs())  # each once
    for batch in grouped:
        assert batch.levels == [lv for m, lv in plan.variants(batch.model) if m == batch.method]
        assert batch.targets == (plan.level_stage_dir(batch.stage, batch.model, batch.method),)
        assert all(p.is_relative_to(batch.targets[0]) for p in batch.outputs)
    sparsegpt = plan.batch("mask", "tiny", "sparsegpt")
    assert sparsegpt.name == "mask-tiny-sparsegpt"
    assert sparsegpt.args == "--model tiny --method sparsegpt --level 0.5 --level 0.9"
    # DVC: the batch's command and every level's files, deps and params keys
    stage = stages(plan)["stages"]["mask-tiny-sparsegpt"]
    assert stage["cmd"] == "prunemem mask --model tiny --method sparsegpt --level 0.5 --level 0.9"
    assert stage["outs"] == ["data/masks/tiny/sparsegpt/0.5.safetensors", "data/masks/tiny/sparsegpt/0.9.safetensors"]
    assert "data/samples/tiny" in stage["deps"]
    per_level = stages(each)["stages"]
    assert stage["deps"] == per_level["mask-tiny-sparsegpt-0_5"]["deps"]
    # an evaluation batch reads every level's mask
    ev = stages(plan)["stages"]["evaluate-tiny-sparsegpt"]
    assert [d for d in ev["deps"] if d.startswith("data/masks")] == stage["outs"]
    assert ev["outs"] == ["data/metrics/tiny/sparsegpt/0.5", "data/metrics/tiny/sparsegpt/0.9"]
    # the levels run one after another: the largest ask, the summed runtime
    jobs = [plan.job("mask", "tiny", "sparsegpt", lv) for lv in ("0.5", "0.9")]
    asked = batch_resources(plan, sparsegpt)
    assert asked["runtime"] == sum(job_resources(plan, j)["runtime"] for j in jobs)
    assert asked["mem_mb"] == max(job_resources(plan, j)["mem_mb"] for j in jobs)


def test_a_batch_digest_follows_each_level():
    plan = _plan("method")
    params = copy.deepcopy(plan.params)
    params["prune"]["seed"] = 7  # the random control's own param
    moved = Plan(params)
    assert moved.batch_digest(moved.batch("mask", "tiny", "random")) != plan.batch_digest(plan.batch("mask", "tiny",
                                                                                                          "random"))
    assert moved.batch_digest(moved.batch("mask", "tiny", "global")) == plan.batch_digest(plan.batch("mask", "tiny",
                                                                                                          "global"))
    single = _plan("variant")  # one job: its own digest, as its artifact records it
    assert single.batch_digest(single.batch("mask", "tiny", "random", "0.5")) == single.stage_digest(
        "mask", "tiny", "random", "0.5")


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_level_built_after_another_in_one_process_equals_it_built_alone(pipeline, tmp_path):
    """The SMALL study's random 0.9 mask and evaluation ran second in their batches' processes."""
    study = tmp_path / "study"
    shutil.copytree(pipeline, study, ignore=shutil.ignore_patterns(".snakemake"))
    plan = Plan.load([study / "params.yaml"], root=study)
    mask, metrics = plan.mask_path("tiny", "random", "0.9"), plan.metrics_dir("tiny", "random", "0.9")
    batched = {p: _sha(p) for p in (mask, *(metrics / name for name in METRICS_FILES))}
    mask.unlink()
    shutil.rmtree(metrics)
    for verb in ("mask", "evaluate"):  # each alone, in a fresh process
        done = subprocess.run(["prunemem", verb, "--model", "tiny", "--method", "random", "--level", "0.9"],
                              cwd=study, capture_output=True, text=True, env=venv_env(), timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    assert {p: _sha(p) for p in batched} == batched


def test_a_bad_level_anywhere_in_a_batch_is_refused_before_any_is_built(pipeline, tmp_path, capsys, monkeypatch):
    from prunemem.cli import main

    study = tmp_path / "study"
    shutil.copytree(pipeline, study, ignore=shutil.ignore_patterns(".snakemake", "data"))
    monkeypatch.chdir(study)
    assert main(["mask", "--model", "tiny", "--method", "global", "--level", "0.5", "--level", "0.7"]) == 1
    assert capsys.readouterr().err.strip() == ("prunemem: error: --level: '0.7' is not a level of global; "
                                              "allowed: 0.5, 0.9")
    assert not (study / "data").exists()  # the good first level was not built either
