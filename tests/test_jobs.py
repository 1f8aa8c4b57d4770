"""One job table, read by both tools: code deps are the real import closure, and dry runs write nothing.

On a copy of the SMALL study (``pipeline``) inside a copy of this repository, tracked by DVC:
- for every module of src/prunemem, the jobs Snakemake declares it an input of, and the DVC
  stages it is a dep of, are exactly the jobs whose import closure contains it; editing one
  module of each distinct closure makes exactly those stages stale in ``dvc status`` (DVC
  compares each stage with its own deps), and exactly those jobs and everything downstream of
  them in ``snakemake -n`` (Snakemake reruns what consumes a rerun's outputs);
- ``snakemake -n``, ``dvc status`` and ``prunemem audit`` leave every file of the tree unchanged
  (bytes and mtimes), Snakemake's .snakemake/ and DVC's .dvc/tmp/ state aside;
- a hand-edited dvc.yaml fails the audit, naming the stage.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from prunemem.plan import Plan
from test_dvc import run

STATE = (".snakemake", ".dvc/tmp", ".dvc/cache")  # the tools' own state, not the working tree


@pytest.fixture(scope="module")
def tracked(pipeline, tmp_path_factory):
    """This repository's files plus the built SMALL study, with dvc.yaml generated and dvc.lock committed."""
    root = tmp_path_factory.mktemp("tracked") / "repo"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout
    for name in filter(None, files.split("\0")):
        if (REPO / name).is_file() or (REPO / name).is_symlink():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name, follow_symlinks=False)
    for part in ("data", "reports"):
        shutil.copytree(pipeline / part, root / part, copy_function=shutil.copy2)
    shutil.copy2(pipeline / "params.yaml", root / "params.yaml")
    run(root, "prunemem", "dvc-yaml")
    run(root, "dvc", "config", "--local", "core.no_scm", "true")  # the copy is no git repository
    run(root, "dvc", "commit", "--force", "-q")
    return root


def _dry_run(root: Path, *extra: str) -> list[dict[str, list[str]]]:
    """The jobs ``snakemake -n`` would run, each as {"input": [...], "output": [...]} as Snakemake prints them."""
    out = run(root, sys.executable, "-m", "snakemake", "-n", "--cores", "1", *extra).stdout
    jobs, current = [], None
    for line in out.splitlines():
        if line.startswith(("rule ", "localrule ")):
            current = {"input": [], "output": []}
            jobs.append(current)
        elif current is not None and line.strip().startswith(("input:", "output:")):
            key, _, files = line.strip().partition(": ")
            current[key.rstrip(":")] = [f.strip() for f in files.split(",") if f.strip()]
    return [job for job in jobs if job["output"]]


def _job_of_output(plan: Plan, root: Path) -> dict[str, str]:
    """Snakemake output -> the batch (its job: one process) that writes it."""
    return {str(p): batch.name for batch in plan.batches() for p in batch.targets}


def _planned(dry: list[dict], jobs: dict[str, str]) -> set[str]:
    return {jobs[job["output"][0]] for job in dry if job["output"][0] in jobs}


def _modules(root: Path) -> list[Path]:
    return sorted((root / "src" / "prunemem").rglob("*.py"))


def _closure_jobs(plan: Plan, root: Path) -> dict[str, set[str]]:
    """Module (repo-relative) -> the batches (Snakemake jobs, DVC stages) whose import closure contains it."""
    out = {p.relative_to(root).as_posix(): set() for p in _modules(root)}
    for batch in plan.batches():
        for f in batch.code:
            out.setdefault(f, set()).add(batch.name)
    return out


def test_every_module_is_a_dep_of_exactly_the_jobs_that_import_it(tracked, monkeypatch):
    monkeypatch.chdir(tracked)
    plan = Plan.load(["params.yaml"])
    expected = _closure_jobs(plan, tracked)
    assert any(len(jobs) == 0 for jobs in expected.values())  # the CLI, the audit ... shape no artifact
    assert "mask-tiny-wanda" in expected["src/prunemem/blockwise.py"]  # crosses the package folder
    assert "evaluate-tiny-global" in expected["src/prunemem/prune/masks.py"]  # jobs.batch: method (SMALL)
    # Snakemake: each job's declared inputs, as the dry run of every job prints them
    jobs = _job_of_output(plan, tracked)
    assert _planned(_dry_run(tracked), jobs) == set()  # the study is up to date
    everything = _dry_run(tracked, "--forceall")
    assert len(everything) == len(plan.batches()) < len(plan.jobs())
    declared: dict[str, set[str]] = {}
    for job in everything:
        for f in job["input"]:
            if f.startswith(str(tracked)):
                declared.setdefault(Path(f).relative_to(tracked).as_posix(), set()).add(jobs[job["output"][0]])
    # DVC: each stage's deps
    stages = yaml.safe_load((tracked / "dvc.yaml").read_text())["stages"]
    dvc_deps: dict[str, set[str]] = {}
    for name, stage in stages.items():
        for dep in stage["deps"]:
            dvc_deps.setdefault(dep, set()).add(name)
    for module, names in expected.items():
        assert declared.get(module, set()) == names, module
        assert dvc_deps.get(module, set()) == names, module


def _tree(root: Path) -> dict[str, tuple]:
    """(size, mtime, sha256) of every file in the tree, the tools' own state aside."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not rel.startswith(STATE):
            stat = path.stat()
            out[rel] = (stat.st_size, stat.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def test_editing_a_module_makes_exactly_its_importers_stale_in_both_tools(tracked, monkeypatch):
    from dvc.repo import Repo

    monkeypatch.chdir(tracked)
    plan = Plan.load(["params.yaml"])
    expected = _closure_jobs(plan, tracked)
    jobs = _job_of_output(plan, tracked)
    by_name = {batch.name: batch for batch in plan.batches()}

    def downstream(names: set[str]) -> set[str]:
        out = set(names)
        for batch in plan.batches():  # upstream first
            if any(up.name in out for up in plan.upstream_batches(batch)):
                out.add(batch.name)
        return out

    assert set(by_name) >= set().union(*expected.values())
    # the declarations of every module are checked above; here the tools' own verdicts, for the module that
    # crosses package folders, one only the masks import, one no job imports (both tools), and one only
    # the evaluations and one only the report import (DVC)
    dry_checked = {"src/prunemem/blockwise.py", "src/prunemem/prune/methods.py", "src/prunemem/cli.py"}
    chosen = [*sorted(dry_checked), "src/prunemem/evaluate/perplexity.py", "src/prunemem/report/html.py"]
    assert len({frozenset(expected[m]) for m in chosen}) == len(chosen)  # five different closures
    with Repo(str(tracked)) as repo:
        for module in chosen:
            path = tracked / module
            original, stat = path.read_bytes(), path.stat()
            try:
                path.write_bytes(original + b"\n# edited\n")  # DVC compares bytes, Snakemake mtimes
                future = time.time() + 3600  # newer than every output (`dvc commit` re-links some of them)
                os.utime(path, (future, future))
                assert set(repo.status()) == expected[module], f"dvc status, {module}"
                if module in dry_checked:
                    assert _planned(_dry_run(tracked), jobs) == downstream(expected[module]), f"snakemake -n, {module}"
            finally:
                path.write_bytes(original)
                os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert repo.status() == {}


def test_dry_runs_and_the_audit_write_nothing(tracked, monkeypatch):
    monkeypatch.chdir(tracked)
    mask = tracked / "data/masks/tiny/global/0.5.safetensors"
    later = mask.stat().st_mtime + 3600
    os.utime(mask, (later, later))  # newer than the metrics made from it, as when `dvc pull` wrote it last
    before = _tree(tracked)
    dry = run(tracked, sys.executable, "-m", "snakemake", "-n", "--cores", "1")
    assert "Nothing to be done" in dry.stdout + dry.stderr  # judged by its record, not rerun for its mtime
    assert run(tracked, "dvc", "status").stdout.strip() in ("", "Data and pipelines are up to date.")
    audit = run(tracked, "prunemem", "audit", check=False)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    # judging a built study (every record read) still loads no torch: the DAG builds in a second or two
    judged = run(tracked, sys.executable, "-c", "import sys; from prunemem.plan import Plan; from prunemem.freshness "
                 "import judge; assert judge(Plan.load(['params.yaml'])); assert 'torch' not in sys.modules")
    assert judged.returncode == 0
    assert _tree(tracked) == before
    assert mask.stat().st_mtime == later


def test_a_hand_edited_dvc_yaml_fails_the_audit_naming_the_stage(tracked, tmp_path):
    from prunemem.audit import Audit

    copy = tmp_path / "repo"
    copy.mkdir()
    stages = yaml.safe_load((tracked / "dvc.yaml").read_text())
    stages["stages"]["mask-tiny-wanda"]["deps"].remove("src/prunemem/blockwise.py")
    del stages["stages"]["report"]
    (copy / "dvc.yaml").write_text(yaml.safe_dump(stages, sort_keys=False))
    audit = Audit(Plan.load([tracked / "params.yaml"], root=copy))
    audit.dvc_yaml()  # the check `prunemem audit` runs before `dvc status`
    assert audit.mismatches == [
        "dvc.yaml stage report: missing; regenerate dvc.yaml (prunemem dvc-yaml)",
        "dvc.yaml stage mask-tiny-wanda: deps differ from the job table; regenerate dvc.yaml (prunemem dvc-yaml)"]


def rowwise(ctx, level):
    """The worked example of docs/architecture.md: each output row pruned to exactly ``level`` by |W|."""
    from prunemem.prune.calibrated import row_mask
    from prunemem.prune.methods import MaskResult

    return MaskResult({n: row_mask(ctx.source[n].abs().double(), level) for n in ctx.source.names})


def test_a_new_method_is_one_function_and_one_registry_entry(pipeline, tmp_path, monkeypatch):
    from prunemem.audit import Audit
    from prunemem.downstream.run import Downstream
    from prunemem.dvcgen import stages
    from prunemem.evaluate.run import evaluate
    from prunemem.prune.registry import REGISTRY, Entry
    from prunemem.prune.run import build_mask
    from prunemem.report import compare, html

    study = tmp_path / "study"
    shutil.copytree(pipeline, study, ignore=shutil.ignore_patterns(".snakemake"))
    monkeypatch.setitem(REGISTRY, "rowwise", Entry("rowwise", f"{__name__}:rowwise"))  # the one entry
    params = yaml.safe_load((study / "params.yaml").read_text())
    params["prune"]["methods"].append("rowwise")
    (study / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(study)
    plan = Plan.load(["params.yaml"])
    levels = plan.mask_levels("rowwise", "tiny")
    assert levels == plan.levels and all(("rowwise", lv) in plan.variants("tiny") for lv in levels)  # the grid
    stage = stages(plan)["stages"]["mask-tiny-rowwise"]  # dvc.yaml: one stage builds its levels in turn
    assert stage["cmd"] == "prunemem mask --model tiny --method rowwise " + " ".join(f"--level {lv}" for lv in levels)
    assert stage["params"] == ["evaluate.threads"] and "src/prunemem/prune/methods.py" in stage["deps"]
    assert "data/samples/tiny" not in stage["deps"]  # not calibrated
    with Downstream(plan, "tiny") as tasks:
        for level in levels:
            build_mask(plan, "tiny", "rowwise", level)
            evaluate(plan, "tiny", "rowwise", level)
            tasks.run("rowwise", level)  # lm-eval's tasks on it too
    html.build(plan)  # the report
    rows = (study / "reports/results.csv").read_text().splitlines()
    assert sum(row.split(",")[1] == "rowwise" for row in rows) == len(levels) * len(plan.ks)
    assert compare.traits("rowwise") == compare.Traits("state of the art", "unstructured")  # from its traits
    assert Audit(plan).run(dvc=False) == []  # the audit walks it like any other method
