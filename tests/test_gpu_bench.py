"""bench/gpu.sh --tiny: the device check runs end to end on the CPU, so it is not dead code on the day a GPU appears."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_gpu_check_tiny_writes_json_and_table(tmp_path):
    """Through bench/gpu.sh itself (its preflight, environment and time limit), as a GPU node runs it."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(REPO / "bench" / "gpu.sh"), "--tiny", "--out", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["mode"] == "tiny" and set(result["methods"]) == {"wanda", "sparsegpt", "gptq"}
    mask = result["global_mask"]
    assert mask["pruned"] == mask["weight_bytes"] // 4 // 2  # fp32 weights, level 0.5, exact count
    for method, m in result["methods"].items():
        assert 0 < m["peak_bytes"] <= m["plan_peak_bytes"], method  # the memory plan bounds what was allocated
        assert m["seconds_total"] == m["seconds"] * m["blocks_total"] / m["blocks"] and m["flops_total"] > m["flops"]
    assert {m["workload"] for m in result["methods"].values()} == {"scores", "hessian", "gptq"}  # registry traits
    assert result["teacher_forcing"]["agreement"] == 1.0
    elapsed = result["elapsed_s"]  # gpu.json is rewritten after every section, so a stopped run keeps its figures
    assert list(elapsed)[0] == "build 12b" and elapsed["total"] == max(elapsed.values())
    width = json.loads((tmp_path / "width.json").read_text())  # then width pruning's real speed, same --out
    assert [(r["level"], r["batch"]) for r in width["rows"]] == [(0.0, 1), (0.5, 1)]
    assert width["rows"][1]["params"] < width["rows"][0]["params"]
    zeroout = [json.loads(line) for line in (tmp_path / "localize.jsonl").read_text().splitlines()]
    assert [z["method"] for z in zeroout] == ["zeroout"] and zeroout[0]["seconds"] > 0
    downstream = json.loads((tmp_path / "downstream.json").read_text())  # one timed lm-eval run, same --out
    assert downstream["documents"] == {"prunemem_nextline": 8, "prunemem_completeline": 8}
    assert downstream["seconds"] > 0 and downstream["batch"] >= 1
    hours = result["predicted_gpu_hours"]
    assert hours["sota"] > hours["paper"] > 0
    table = (tmp_path / "gpu.md").read_text()
    assert table.startswith("| figure | value | target |") and table.count("\n") == 11


def test_cpu_stand_in_table_from_a_recorded_run():
    """bench/cpu_methods.py's figures from a run's JSON: FLOPs from the shapes, the sweep's column steps."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cpu_methods", REPO / "bench" / "cpu_methods.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    job = {"wall_s": 100.0, "cpu_s": 50.0, "peak_rss_mb": 1000.0, "load_mean": 1.0, "load_max": 2.0}
    table = bench.table({"calibration": [16, 512], "jobs": {m: job for m in bench.METHODS}})
    measured, estimates = table.split("\n\n")
    assert measured.count("\n") == 4 and estimates.count("\n") == 7
    from prunemem import memplan

    twelve = memplan.Shapes.pythia("12b")
    assert bench.column_steps("sparsegpt", twelve) == bench.column_steps("int4-gptq", twelve) == 36 * (3 * 5120 + 20480)
    assert bench.column_steps("wanda", twelve) == 0
    wanda, sgpt = (bench.gpu_seconds(bench.flop_parts(m, twelve, 128, 2048), "bf16") for m in ("wanda", "sparsegpt"))
    assert 10 < wanda < 20 and sgpt > 10 * wanda  # SparseGPT's float64 Hessians run at fp64's rate
