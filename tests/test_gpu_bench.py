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
    hours = result["predicted_gpu_hours"]
    assert hours["sota"] > hours["paper"] > 0
    table = (tmp_path / "gpu.md").read_text()
    assert table.startswith("| figure | value | target |") and table.count("\n") == 11
