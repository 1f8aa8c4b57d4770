"""End to end: the real Snakemake pipeline on a small embedded config in a temporary directory."""

from __future__ import annotations

import csv
import shutil
import subprocess

import pytest

from conftest import md5s, snakemake, venv_env
from prunemem.report.tables import RESULT_COLUMNS

def _results(workdir):
    with open(workdir / "reports" / "results.csv") as fh:
        return list(csv.DictReader(fh))


def test_results_table_follows_the_contract(pipeline):
    rows = _results(pipeline)
    # the contract's columns, then each downstream task's metrics with their stderr (params downstream:)
    scores = ["downstream_prunemem_completeline_exact_match", "downstream_prunemem_nextline_acc",
              "downstream_prunemem_nextline_acc_norm"]
    assert list(rows[0]) == RESULT_COLUMNS + [c for s in scores for c in (s, f"{s}_stderr")]
    for r in rows:  # a multiple-choice accuracy of 12 documents, and the same per variant at every k
        assert float(r["downstream_prunemem_nextline_acc"]) * 12 == pytest.approx(
            round(float(r["downstream_prunemem_nextline_acc"]) * 12))
    dense_mc = {r["downstream_prunemem_nextline_acc"] for r in rows if r["method"] == "dense"}
    assert len(dense_mc) == 1 and float(dense_mc.pop()) > 0.25  # above chance (4 choices)
    # dense + 9 two-level methods + wanda-2of4 (one level) + int8, int4-gptq and lowrank, at 2 k
    assert len(rows) == (1 + 9 * 2 + 1 + 3) * 2
    assert {int(r["n_samples"]) for r in rows} == {16 - 4}  # the search split is never evaluated
    dense = [r for r in rows if r["method"] == "dense"]
    assert {r["k"] for r in dense} == {"16", "32"} and all(float(r["achieved_sparsity"]) == 0 for r in dense)
    for r in rows:
        assert float(r["ci_low"]) <= float(r["extraction_rate"]) <= float(r["ci_high"])
        assert int(r["n_extracted"]) == round(float(r["extraction_rate"]) * int(r["n_samples"]))
    glob = {r["level"]: r for r in rows if r["method"] == "global" and r["k"] == "32"}
    assert float(glob["0.5"]["achieved_sparsity"]) == pytest.approx(0.5, abs=1e-4)
    att = [r for r in rows if r["method"] == "attention" and r["level"] == "0.9"][0]
    assert float(att["achieved_sparsity"]) < 0.9 * 0.5  # attention is about a third of the prunable weights
    assert all(len(r["checkpoint_sha256"]) == 64 and len(r["samples_sha256"]) == 64 for r in rows)
    assert all((r["mask_sha256"] == "") == (r["method"] == "dense") for r in rows)
    by_method = {(r["method"], r["level"]): r for r in rows}
    assert float(by_method[("int8", "0.0")]["compression"]) == pytest.approx(0.5, abs=0.01)  # vs 16-bit storage
    assert float(by_method[("lowrank", "0.5")]["compression"]) == pytest.approx(0.5, abs=0.01)
    assert float(by_method[("int4-gptq", "0.0")]["compression"]) == pytest.approx((4 + 16 / 32) / 16)
    assert float(by_method[("global", "0.5")]["compression"]) == pytest.approx(0.5, abs=1e-4)
    # every variant (pruned, quantized, low-rank) passed the generate() cross-check; fp32 flips nothing
    assert all(r["n_cross_checked"] == "8" and r["n_flipped"] == "0" for r in rows)
    assert sum(int(r["n_rechecked"]) for r in rows) > 0
    for r in rows:
        assert float(r["mia_loss_auc_low"]) <= float(r["mia_loss_auc"]) <= float(r["mia_loss_auc_high"])


def test_memorization_is_real_and_pruning_removes_it(pipeline):
    import polars as pl

    per_sample = pl.read_parquet(pipeline / "data/metrics/tiny/dense/0/memorization.parquet")
    k32 = per_sample.filter(pl.col("k") == 32)
    rate = {c: k32.filter(pl.col("copies") == c)["extracted"].mean() for c in (0, 32, 256)}
    assert rate[256] >= 0.5 and rate[256] > rate[0], rate
    rows = {(r["method"], r["level"]): r for r in _results(pipeline) if r["k"] == "32"}
    dense, heavy = rows[("dense", "0.0")], rows[("global", "0.9")]
    assert float(heavy["extraction_rate"]) < float(dense["extraction_rate"])
    assert float(heavy["perplexity"]) > float(dense["perplexity"])
    assert float(dense["mia_loss_auc"]) > 0.5  # heavily duplicated canaries are easy members


def _copy_study(pipeline, tmp_path):
    study = tmp_path / "study"
    shutil.copytree(pipeline, study, ignore=shutil.ignore_patterns(".snakemake"))
    return study


def _evaluate(study, *extra):
    return subprocess.run(["prunemem", "evaluate", "--model", "tiny", "--method", "dense", "--level", "0", *extra],
                          cwd=study, capture_output=True, text=True, env=venv_env())


def test_evaluate_refuses_windows_past_the_context_before_loading_weights(pipeline, tmp_path):
    import json

    study = _copy_study(pipeline, tmp_path)
    config = study / "data/checkpoints/tiny/config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"max_position_embeddings": 40}))
    (study / "data/checkpoints/tiny/model.safetensors").write_bytes(b"not weights")  # never read
    before = md5s(study)
    run = _evaluate(study)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == (
        "prunemem: error: samples.k + samples.suffix_tokens: 48 tokens exceed tiny's context of 40 "
        "(data/checkpoints/tiny/config.json)")
    assert md5s(study) == before


def test_evaluate_refuses_samples_from_another_tokenizer(pipeline, tmp_path):
    study = _copy_study(pipeline, tmp_path)
    tokenizer = study / "data/checkpoints/tiny/tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace('"<|endoftext|>"', '"<|end|>"', 1))
    run = _evaluate(study)
    assert run.returncode == 1
    line = run.stderr.strip().splitlines()[-1]
    assert line.startswith("prunemem: error: data/samples/tiny: samples were tokenized with tokenizer ")
    assert line.endswith("rebuild them with `prunemem samples --model tiny`")


def test_report_is_offline_and_states_the_findings(pipeline):
    import re

    page = (pipeline / "reports" / "report.html").read_text()
    # self-contained: the charts' JavaScript is inlined, nothing is fetched (the browser test checks it live)
    markup = re.sub(r"<script[^>]*>.*?</script>", "<script></script>", page, flags=re.S)
    assert page.count("data-chart=") >= 3 and not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", markup)
    assert "The dense model extracts 25.0% of 12 members at k=32" in page
    assert "<dd>12: 6 canary, 6 train</dd>" in page and "3 held-out documents, 2016 scored tokens" in page  # methods
    assert "Every extracted member is a canary planted at least 256 times" in page
    assert "Nothing is extracted by the dense model at k = 16" in page and "Holm p" in page
    assert "<summary>k = 16</summary>" in page and "<summary>k = 32</summary>" in page
    claims = list(csv.DictReader(open(pipeline / "reports" / "claims.csv")))
    assert len(claims) == 5 and {c["status"] for c in claims} <= {"confirmed", "refuted", "inconclusive"}
    comparisons = list(csv.DictReader(open(pipeline / "reports" / "comparisons.csv")))
    assert comparisons and all(0 <= float(c["p"]) <= float(c["p_holm"]) <= 1 for c in comparisons)
    assert {p.name for p in (pipeline / "reports" / "figures").iterdir()} >= {"pareto-tiny.svg", "mia-tiny.svg"}
    with open(pipeline / "reports" / "layer_sparsity.csv") as fh:
        layers = list(csv.DictReader(fh))
    sleb = [float(r["sparsity"]) for r in layers if r["method"] == "sleb" and r["level"] == "0.5"]
    assert sorted(sleb) == [0.0, 1.0]  # one of two blocks removed whole
    assert all(float(r["sparsity"]) == pytest.approx(0.5, abs=1e-9) for r in layers if r["method"] == "wanda-2of4")


def test_evop_mem_searches_on_a_split_that_evaluation_never_sees(pipeline):
    import polars as pl

    from prunemem.prune import masks

    samples = pipeline / "data/samples/tiny"
    members, search = pl.read_parquet(samples / "members.parquet"), pl.read_parquet(samples / "search.parquet")
    assert search.height == 4 and not set(search["sample_id"]) & set(members["sample_id"])
    assert set(search["copies"]) <= set(members["copies"])  # stratified by duplication
    evaluated = set(pl.read_parquet(pipeline / "data/metrics/tiny/evop-mem/0.5/memorization.parquet")["sample_id"])
    assert set(members["sample_id"]) <= evaluated and not set(search["sample_id"]) & evaluated
    meta = masks.header(pipeline / "data/masks/tiny/evop-mem/0.5.safetensors")
    found = meta["info"]["search"]
    assert found["granularity"] == "sublayer" and len(found["removed"]) == 2 == len(meta["removed_sublayers"])
    assert [row["generation"] for row in found["history"]] == [0, 1, 2]
    assert all(row["best_extraction"] is not None for row in found["history"])
    assert meta["info"]["calibration"]["sampling"] == "cluster" and len(meta["info"]["calibration"]["indices"]) == 8
    assert masks.header(pipeline / "data/masks/tiny/wanda/0.5.safetensors")["info"]["calibration"]["sampling"] == \
        "random"
    history = pl.read_csv(pipeline / "reports/search_history.csv")
    assert history.height == 2 * 3 and set(history["method"]) == {"evop-mem"}
    best = history.sort("level", "generation")["best_fitness"].to_list()
    assert best[:3] == sorted(best[:3], reverse=True) and best[3:] == sorted(best[3:], reverse=True)
    page = (pipeline / "reports/report.html").read_text()
    assert "EvoP search history" in page and "Calibration sampling: random against cluster-based" in page
    assert "Structured removal" in page


def test_a_second_run_does_nothing_and_leaves_no_temporary_files(pipeline):
    # two clean builds giving the same bytes, by either entry point: tests/test_dvc.py
    before = md5s(pipeline)
    assert len(before) >= 35 and not [p for p in before if p.endswith(".tmp") or "/.partial/" in p]
    again = snakemake(pipeline)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    assert md5s(pipeline) == before


def test_snakemake_report_has_the_report_and_its_captions(pipeline, tmp_path):
    import zipfile

    out = tmp_path / "snakemake-report.zip"
    run = snakemake(pipeline, "--report", str(out))
    assert run.returncode == 0, run.stderr[-2000:]
    with zipfile.ZipFile(out) as archive:
        names = archive.namelist()
        text = "".join(archive.read(n).decode("utf-8", "replace") for n in names if n.endswith((".html", ".js")))
    assert sum(n.endswith(("report.html", "results.csv", "layer_sparsity.csv")) for n in names) >= 3, names
    assert "re-derives every row" in text  # a caption, from workflow/report/results.rst
