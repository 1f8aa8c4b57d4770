"""DVC and Snakemake on one repository: both entry points, a fresh clone, the provenance trap.

The scenario of docs/architecture.md ("Two tools, one job table"), run for real on a tiny grid:
1. a repository built by `snakemake` (which then `dvc commit`s) and pushed to a local remote;
2. a fresh clone pulls it, a param changes, and `snakemake` runs without any .snakemake metadata:
   it must rebuild what the param shaped, and dvc.lock must then match the bytes;
3. a second fresh clone makes the same change and rebuilds everything from scratch with
   `dvc repro --force`: the same bytes as step 2, for every artifact (checkpoint training
   included), which is also the test that two clean builds are byte-identical.
After each step `dvc status` is clean and `prunemem audit` (which includes `dvc status`) passes.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, SMALL, md5s, venv_env

TINY = copy.deepcopy(SMALL)
# kept small for the suite's time budget: SparseGPT and evaluation reruns are byte-checked in
# tests/reliability/test_interruption.py, every method's pipeline run in tests/test_pipeline_e2e.py
TINY["prune"].update(methods=["global", "random"], levels=[0.5])
del TINY["compress"]
# and no downstream stage (~12 s a build, three builds here): its DVC stages are checked stage by stage
# in tests/test_jobs.py, its bytes rebuilt identically in tests/test_downstream.py
del TINY["downstream"]


def run(cwd, *cmd, check=True):
    done = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, env=venv_env(), timeout=600)
    if check:
        assert done.returncode == 0, f"{cmd}: {done.stdout[-1500:]}{done.stderr[-1500:]}"
    return done


def dvc_status(cwd):
    out = run(cwd, "dvc", "status").stdout
    return out.strip()


def set_seed(repo, seed):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["prune"]["seed"] = seed
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    """A git repository holding this project with the TINY grid, built by Snakemake and pushed."""
    root = tmp_path_factory.mktemp("dvc")
    repo, remote = root / "origin", root / "remote"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in filter(None, files.split("\0")):
        if (REPO / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, repo / name, follow_symlinks=False)
    (repo / "params.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    run(repo, "prunemem", "dvc-yaml")
    run(repo, "git", "init", "-q")
    run(repo, "dvc", "remote", "add", "--local", "-f", "local", str(remote))
    run(repo, "git", "add", "-A")
    run(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny study")
    run(repo, sys.executable, "-m", "snakemake", "--cores", "2")
    run(repo, "dvc", "push", "-q")
    run(repo, "git", "add", "dvc.lock")
    run(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "results")
    return repo, remote


def clone(origin, to):
    repo, remote = origin
    run(to.parent, "git", "clone", "-q", str(repo), str(to))
    run(to, "dvc", "remote", "add", "--local", "-f", "local", str(remote))
    run(to, "dvc", "pull", "-q")
    return to


def test_snakemake_leaves_dvc_status_clean_and_the_audit_passes(origin):
    repo, _ = origin
    assert (repo / "data/checkpoints/tiny/.snakemake_timestamp").exists()  # ignored by DVC (.dvcignore)
    assert dvc_status(repo) == "Data and pipelines are up to date."
    run(repo, "prunemem", "audit")


def test_dvc_metrics_and_plots_read_the_results(origin, tmp_path):
    import json

    repo, _ = origin
    metrics = json.loads(run(repo, "dvc", "metrics", "show", "--json").stdout)
    values = json.dumps(metrics)
    assert "reports/metrics.json" in values and "extraction_rate" in values and "global@0.5" in values
    run(repo, "dvc", "plots", "show", "-o", str(tmp_path / "plots"))
    page = (tmp_path / "plots" / "index.html").read_text()
    assert "extraction vs sparsity" in page and "membership AUC vs sparsity" in page


def test_push_pull_round_trip_restores_every_artifact(origin, tmp_path):
    repo, _ = origin
    copy_ = clone(origin, tmp_path / "clone")
    assert md5s(copy_) == md5s(repo)
    assert dvc_status(copy_) == "Data and pipelines are up to date."
    run(copy_, "prunemem", "audit")


def test_a_param_change_in_a_fresh_clone_rebuilds_the_same_bytes_from_either_entry_point(origin, tmp_path):
    by_snakemake = clone(origin, tmp_path / "a")
    set_seed(by_snakemake, 7)  # shapes the random mask only (the params digest is what a method reads)
    before = md5s(by_snakemake)
    dry = run(by_snakemake, sys.executable, "-m", "snakemake", "-n", "--cores", "2")
    planned = dict(re.findall(r"^(\w+)\s+(\d+)$", dry.stdout + dry.stderr, re.MULTILINE))
    # no .snakemake metadata here: the masks are found stale from their own records
    # the seed is the random control's param alone: the global mask, and everything upstream, stay
    assert planned == {"all": "1", "evaluate": "1", "mask": "1", "report": "1", "total": "4"}, planned
    run(by_snakemake, sys.executable, "-m", "snakemake", "--cores", "2")
    after = md5s(by_snakemake)
    assert after["data/masks/tiny/random/0.5.safetensors"] != before["data/masks/tiny/random/0.5.safetensors"]
    assert after["data/checkpoints/tiny/model.safetensors"] == before["data/checkpoints/tiny/model.safetensors"]
    assert dvc_status(by_snakemake) == "Data and pipelines are up to date."
    run(by_snakemake, "prunemem", "audit")

    by_dvc = clone(origin, tmp_path / "b")
    set_seed(by_dvc, 7)
    assert "changed" in dvc_status(by_dvc)
    audit = run(by_dvc, "prunemem", "audit", check=False)
    assert audit.returncode == 1 and "stale" in audit.stdout  # the pulled masks predate the change
    run(by_dvc, "dvc", "repro", "--force", "-q")  # everything, from scratch
    assert dvc_status(by_dvc) == "Data and pipelines are up to date."
    run(by_dvc, "prunemem", "audit")
    assert md5s(by_dvc) == after
