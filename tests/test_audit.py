"""`prunemem audit` on a real small study: clean passes; every planted lie is caught and named."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml

from conftest import venv_env


@pytest.fixture
def study(pipeline, tmp_path):
    copy = tmp_path / "study"
    shutil.copytree(pipeline, copy, ignore=shutil.ignore_patterns(".snakemake"))
    return copy


def audit(study):
    run = subprocess.run(["prunemem", "audit", "--no-dvc"], cwd=study, capture_output=True, text=True,
                         env=venv_env())
    assert "Traceback" not in run.stderr, run.stderr
    return run.returncode, run.stdout.splitlines(), run.stderr


def test_a_clean_study_passes(study):
    code, lines, err = audit(study)
    assert (code, lines) == (0, []), lines
    assert "artifacts checked, 0 mismatches" in err


def test_stale_outputs_after_a_param_change(study):
    params = yaml.safe_load((study / "params.yaml").read_text())
    params["prune"]["seed"] = 1  # the random control reads it; nothing was rebuilt
    params["evaluate"]["near_tie_margin"] = 0.2
    (study / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    code, lines, _ = audit(study)
    assert code == 1
    assert any(line.startswith("data/masks/tiny/random/0.5.safetensors: stale: built with params") for line in lines)
    assert any(line.startswith("data/metrics/tiny/dense/0/summary.json: stale") for line in lines)
    assert not any("checkpoints" in line or "samples" in line for line in lines)  # their params did not change


def test_a_tampered_metric(study):
    path = study / "data/metrics/tiny/global/0.9/summary.json"
    summary = json.loads(path.read_text())
    summary["per_k"][0]["n_extracted"] += 1
    summary["per_k"][0]["extraction_rate"] = summary["per_k"][0]["n_extracted"] / summary["per_k"][0]["n_samples"]
    path.write_text(json.dumps(summary))
    results = study / "reports/results.csv"
    rows = results.read_text().splitlines()
    cells = rows[1].split(",")
    cells[13] = "1.0"  # perplexity of the first row
    results.write_text("\n".join([rows[0], ",".join(cells), *rows[2:]]) + "\n")
    code, lines, _ = audit(study)
    assert code == 1
    k = summary["per_k"][0]["k"]
    assert any(line.startswith(f"data/metrics/tiny/global/0.9/summary.json: k={k} n_extracted is ")
               and "but memorization.parquet gives" in line for line in lines), lines
    assert any(line.startswith("reports/results.csv: row 2 (tiny dense 0.0 k=16) perplexity is 1.0") for line in lines)
    assert any(line.startswith("reports/results.csv: sha256 is") for line in lines)  # the report's record


def test_a_mask_swapped_between_methods(study):
    masks = study / "data/masks/tiny"
    shutil.copy(masks / "global/0.5.safetensors", masks / "attention/0.5.safetensors")
    code, lines, _ = audit(study)
    assert code == 1
    assert "data/masks/tiny/attention/0.5.safetensors: method in its header is 'global', expected 'attention'" in lines
    assert any(line.startswith("data/metrics/tiny/attention/0.5/summary.json: input mask") for line in lines)


def test_tampered_per_sample_results_and_a_missing_artifact(study):
    (study / "data/metrics/tiny/int8/0/memorization.parquet").write_bytes(b"PAR1 not really")
    (study / "data/transforms/tiny/lowrank/0.5.json").unlink()
    code, lines, _ = audit(study)
    assert code == 1
    assert any(line.startswith("data/metrics/tiny/int8/0/memorization.parquet: sha256 is") for line in lines)
    assert "data/transforms/tiny/lowrank/0.5.json: missing; run the pipeline" in lines


def test_a_tampered_figure_and_perplexity_windows(study):
    figure = sorted((study / "reports/figures").glob("*.svg"))[0]
    figure.write_text(figure.read_text() + "<!-- edited -->")
    (study / "data/metrics/tiny/dense/0/perplexity_windows.parquet").write_bytes(b"PAR1 not really")
    code, lines, _ = audit(study)
    assert code == 1
    assert any(line.startswith(f"reports/figures/{figure.name}: sha256 is") for line in lines), lines
    assert any(line.startswith("data/metrics/tiny/dense/0/perplexity_windows.parquet: sha256 is") for line in lines)


def test_freshness_judges_each_artifact_by_its_own_record(study, monkeypatch):
    import os

    from prunemem.freshness import FRESH, judge
    from prunemem.plan import Plan

    monkeypatch.chdir(study)
    plan = Plan.load(["params.yaml"])
    verdicts = judge(plan)
    assert set(verdicts) == {job.id for job in plan.jobs()} and set(verdicts.values()) == {FRESH}
    summary = study / "data/metrics/tiny/global/0.5/summary.json"
    os.utime(summary, (1, 1))  # older than its inputs, as after an unlucky `dvc pull`
    assert judge(plan)[("evaluate", "tiny", "global", "0.5")] is FRESH and summary.stat().st_mtime == 1  # no write
    shutil.copy(study / "data/masks/tiny/global/0.9.safetensors", study / "data/masks/tiny/global/0.5.safetensors")
    params = yaml.safe_load((study / "params.yaml").read_text())
    params["perplexity"]["stride"] = 32
    (study / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stale = judge(Plan.load(["params.yaml"]))
    assert stale[("evaluate", "tiny", "global", "0.5")] == "built with other params"
    assert stale[("mask", "tiny", "global", "0.5")] == "built with other params"  # its header says 0.9
    assert all(stale[job.id] for job in plan.jobs("evaluate")) and stale[("mask", "tiny", "global", "0.9")] is FRESH


def test_the_audit_counts_a_masks_bits_itself(tmp_path):
    """`audit.kept_counts` re-counts packed bits with numpy (torch-free), also beside SparseGPT's bf16
    weights; a flipped bit changes the count it reports, a truncated tensor is one line."""
    import torch

    from prunemem.audit import kept_counts
    from prunemem.errors import PrunememError
    from prunemem.identity import mask_header
    from prunemem.prune import masks

    keep = {"a.weight": torch.rand(7, 13, generator=torch.Generator().manual_seed(0)) > 0.3,
            "b.weight": torch.zeros(3, 5, dtype=torch.bool)}
    path = tmp_path / "m.safetensors"
    masks.save(path, keep, method="global", level="0.3", checkpoint_sha256="0" * 64,
               updated={"a.weight": torch.ones(7, 13, dtype=torch.bfloat16)})
    meta = mask_header(path)
    assert kept_counts(path, meta["shapes"]) == meta["kept"] == {n: int(m.sum()) for n, m in keep.items()}
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[start] ^= 0x80  # the first weight of the first tensor (keys sorted: a.weight's bits come first)
    path.write_bytes(bytes(data))
    assert kept_counts(path, meta["shapes"])["a.weight"] == meta["kept"]["a.weight"] + (-1 if keep["a.weight"][0, 0] else 1)
    path.write_bytes(bytes(data[:start + 3]))
    with pytest.raises(PrunememError, match="corrupt mask tensors"):
        kept_counts(path, meta["shapes"])
