"""workflow/configs/pythia.yaml: the paper's grid validates, and a dry run lists every job offline."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import REPO, venv_env

from prunemem.dvcgen import stages
from prunemem.errors import PrunememError
from prunemem.plan import Plan, validate

PYTHIA = REPO / "workflow" / "configs" / "pythia.yaml"
DEDUPED = REPO / "workflow" / "configs" / "pythia-deduped.yaml"


def test_grid_levels_per_size_and_deduped_overlay():
    plan = Plan.load([PYTHIA])
    assert plan.models == ["pythia-160m", "pythia-410m", "pythia-1_4b", "pythia-2_8b", "pythia-6_9b", "pythia-12b"]
    assert plan.mask_levels("global", "pythia-160m") == ["0.1", "0.125", "0.15"]
    assert plan.mask_levels("global", "pythia-12b") == ["0.35", "0.4", "0.45"]
    assert plan.ks == [50, 100, 200, 500] and plan.params["samples"]["training_members"] == 5000
    assert {plan.params["models"][m]["revision"] for m in plan.models} == {"step143000"}
    assert ("global", "0.45") in plan.variants("pythia-12b") and ("global", "0.45") not in plan.variants("pythia-160m")
    deduped = Plan.load([PYTHIA, DEDUPED])
    assert deduped.models == [m + "-deduped" for m in plan.models]
    assert deduped.params["models"]["pythia-12b-deduped"]["repo"] == "EleutherAI/pythia-12b-deduped"


def test_dvc_stages_for_hub_models():
    plan = Plan.load([PYTHIA])
    out = stages(plan, "workflow/configs/pythia.yaml")["stages"]
    ckpt = out["checkpoint-pythia-1_4b"]
    assert "src/prunemem/hub.py" in ckpt["deps"]
    assert ckpt["params"] == [{"workflow/configs/pythia.yaml": [f"models.pythia-1_4b.{k}"
                                                                 for k in ("source", "repo", "revision")]}]
    assert "evaluate-pythia-12b-global-0_45" in out and "evaluate-pythia-160m-global-0_45" not in out
    # the fetch stage, from the same job table: the hf sources' keys, its own closure, read by samples
    fetch = out["fetch-pythia-1_4b"]
    assert fetch["cmd"] == "prunemem --params workflow/configs/pythia.yaml fetch --model pythia-1_4b"
    assert fetch["params"] == [{"workflow/configs/pythia.yaml": ["models.pythia-1_4b.members",
                                                                  "models.pythia-1_4b.heldout"]}]
    assert fetch["outs"] == ["data/fetched/pythia-1_4b.json"]
    assert {"src/prunemem/data/fetch.py", "src/prunemem/data/sources.py", "src/prunemem/hub.py"} <= set(fetch["deps"])
    assert "data/fetched/pythia-1_4b.json" in out["samples-pythia-1_4b"]["deps"]
    assert "src/prunemem/data/fetch.py" not in out["samples-pythia-1_4b"]["deps"]  # samples read the record only


@pytest.mark.parametrize("mutate,fragment", [
    (lambda p: p["models"].update({"pythia-1.4b": p["models"].pop("pythia-1_4b")}), "does not match"),
    (lambda p: p["models"]["pythia-160m"].update(source="embedded"), "models.pythia-160m.repo: only for source: hub"),
    (lambda p: [m.update(enabled=False) for m in p["models"].values()], "every model has enabled: false"),
])
def test_bad_grid_params(mutate, fragment):
    import yaml

    params = yaml.safe_load(PYTHIA.read_text())
    mutate(params)
    with pytest.raises(PrunememError, match=re.escape(fragment)):
        validate(params)


def test_snakemake_dry_run_lists_every_job_offline(tmp_path):
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "-n",
                          "--configfile", str(PYTHIA)], capture_output=True, text=True, timeout=180, check=False,
                         env={**venv_env(), "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", run.stdout + run.stderr, re.MULTILINE))
    n_masks = 6 * 6 * 3
    assert counts == {"fetch": "6", "checkpoint": "6", "samples": "6", "mask": str(n_masks),
                      "evaluate": str(n_masks + 6), "report": "1", "all": "1",
                      "total": str(6 + 6 + 6 + n_masks + n_masks + 6 + 2)}
    assert not (tmp_path / "data").exists()


PROFILE = REPO / "workflow" / "profiles" / "slurm"


def test_slurm_profile_dry_run_gives_every_job_resources_scaled_by_model(tmp_path):
    import time

    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "-n",
                          "--profile", str(PROFILE), "--configfile", str(PYTHIA)],
                         capture_output=True, text=True, timeout=180, check=False,
                         env={**venv_env(), "HF_HUB_OFFLINE": "1"}, cwd=REPO)
    elapsed = time.perf_counter() - start
    assert run.returncode == 0, run.stderr[-2000:]
    jobs = re.findall(r"^rule (\w+):.*?wildcards: model=([\w-]+)(?:, method=([\w-]+))?.*?resources: (.*?)$",
                      run.stdout + run.stderr, re.MULTILINE | re.DOTALL)
    assert len(jobs) == 6 + 6 + 6 + 2 * 6 * 6 * 3 + 6  # every job but the report and `all` names a model
    res = {}
    for rule, model, method, text in jobs:
        fields = dict(re.findall(r"(\w+)=([^,]+)", text))
        assert {"gpu", "cpus_per_gpu", "mem_mb", "runtime"} <= set(fields), (rule, text)
        res[(rule, model, method)] = {k: int(fields[k]) for k in ("gpu", "mem_mb", "runtime")} | {
            "threads": 1, "cpus_per_gpu": int(fields["cpus_per_gpu"])} | (
            {"slurm_extra": fields["slurm_extra"]} if "slurm_extra" in fields else {})
    evaluations = {model: r for (rule, model, _), r in res.items() if rule == "evaluate"}
    assert all(r["gpu"] == 1 for r in evaluations.values())
    assert evaluations["pythia-12b"]["runtime"] > evaluations["pythia-160m"]["runtime"]
    assert evaluations["pythia-12b"]["mem_mb"] > evaluations["pythia-1_4b"]["mem_mb"] > evaluations["pythia-160m"]["mem_mb"]
    assert all(r["gpu"] == 0 for (rule, *_), r in res.items() if rule in ("fetch", "samples", "checkpoint", "mask"))
    assert elapsed < 30  # the DAG of the paper's grid builds in seconds (issue target: 10 s; CI machines vary)
    submitted = submit_through_the_plugin(res)
    assert {rule: part for (rule, *_), (part, _) in submitted.items() if rule != "evaluate"} == {
        "fetch": "cpu", "checkpoint": "cpu", "samples": "cpu", "mask": "cpu"}
    assert {part for (rule, *_), (part, _) in submitted.items() if rule == "evaluate"} == {"gpu"}
    for call in (call for _, call in submitted.values()):
        assert call.count("--output ") == 1 and "logs/slurm/rule_" in call and " --requeue" in call


class _Resources(dict):
    __getattr__ = dict.get


class _Job:
    """What the plugin reads of a Snakemake job: name, threads, resources, wildcards."""

    def __init__(self, rule, resources):
        self.name, self.resources, self.threads, self.wildcards = rule, _Resources(resources), 1, {}

    def is_group(self):
        return False


def submit_through_the_plugin(jobs: dict) -> dict:
    """Every job's (partition, sbatch call) from the profile's settings, by the plugin's own code.

    The profile's `slurm-*` keys become the plugin's ExecutorSettings (a misspelt key is a
    TypeError here, as it is an error for Snakemake); its default resources join each job's.
    """
    import yaml
    from snakemake_executor_plugin_slurm import ExecutorSettings
    from snakemake_executor_plugin_slurm.partitions import get_best_partition, read_partition_file
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.validation import validate_slurm_extra

    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    settings = ExecutorSettings(**{key[len("slurm-"):].replace("-", "_"): value for key, value in profile.items()
                                   if key.startswith("slurm-")})
    partitions = read_partition_file(REPO / settings.partition_config)
    defaults = {k: v.strip("'\"") if isinstance(v, str) else v for k, v in profile.get("default-resources", {}).items()}

    class Log:
        def info(self, *a):
            pass
        debug = warning = info

    out = {}
    for key, resources in jobs.items():
        job = _Job(key[0], {**defaults, **resources})
        validate_slurm_extra(job)  # the check that refused every job of the old profile
        partition = job.resources.get("slurm_partition") or get_best_partition(partitions, job, Log())
        call = get_submit_command(job, {"run_uuid": "u", "slurm_logfile": f"{settings.logdir}/rule_{key[0]}/%j.log",
                                        "comment_str": key[0], "account": "-A acct", "partition": f"-p {partition}",
                                        "workdir": "."}, settings=settings)
        out[key] = (partition, call)
    return out


def test_the_plugin_refuses_output_in_slurm_extra():
    """The class of error the old profile had: the plugin check the test above runs is live."""
    from snakemake_interface_common.exceptions import WorkflowError
    from snakemake_executor_plugin_slurm.validation import validate_slurm_extra

    with pytest.raises(WorkflowError, match="--output"):
        validate_slurm_extra(_Job("evaluate", {"slurm_extra": "--output=logs/slurm/%x-%j.out"}))


def test_evop_overlay_adds_the_search_methods_with_gpu_time_for_the_search():
    from prunemem.cluster import job_resources

    evop = REPO / "workflow" / "configs" / "pythia-evop.yaml"
    plan = Plan.load([PYTHIA, evop])
    assert ("evop-mem", "0.45") in plan.variants("pythia-12b") and plan.calibrated("evop")
    memo_params = plan.stage_params("mask", "pythia-12b", "evop-mem", "0.45")
    assert (memo_params["samples.k"], memo_params["samples.suffix_tokens"]) == ([50, 100, 200, 500], 50)
    assert not any(key.startswith("prune.evop") for key in plan.stage_params("mask", "pythia-12b", "global", "0.45"))
    sleb, search, memo = (job_resources(plan, plan.job("mask", "pythia-12b", m, "0.45"))
                          for m in ("sleb", "evop", "evop-mem"))
    assert sleb["gpu"] == search["gpu"] == memo["gpu"] == 1
    assert search["runtime"] < memo["runtime"]
    # SLEB at 12B, level 0.45: 16 greedy rounds over ~26 candidates = ~400 whole-model forwards, more than
    # EvoP's 320 candidates (memplan.calibration_flops)
    assert sleb["runtime"] > search["runtime"]


def test_sota_overlay_every_method_on_every_size_with_resources_from_its_cost():
    from prunemem.cluster import job_resources

    plan = Plan.load([PYTHIA, REPO / "workflow" / "configs" / "pythia-sota.yaml"])
    assert plan.params["samples"]["calibration"] == {"sequences": 128, "tokens": 2048, "pool": 128}
    wanted = {"wanda", "sparsegpt", "owl", "wanda-2of4", "sparsegpt-2of4", "int4-gptq", "int8"}
    for model in plan.models:
        assert wanted <= {method for method, _ in plan.variants(model)}, model
    def job(model, method):
        return next(j for j in plan.jobs() if j.stage in ("mask", "transform") and (j.model, j.method) == (model, method))

    cost = {m: job_resources(plan, job("pythia-12b", m)) for m in wanted}
    assert all(cost[m]["gpu"] == 1 for m in wanted - {"int8"}) and cost["int8"]["gpu"] == 0
    assert cost["wanda"]["runtime"] < cost["owl"]["runtime"] < cost["sparsegpt"]["runtime"]
    assert cost["sparsegpt"]["mem_mb"] > cost["wanda"]["mem_mb"]  # it carries its updated weights
    assert job_resources(plan, job("pythia-160m", "sparsegpt"))["runtime"] < cost["sparsegpt"]["runtime"]
