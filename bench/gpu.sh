#!/usr/bin/env bash
# The device check of bench/gpu.py (see its docstring): one H100/H200, no network, <= 8 minutes.
#   bash bench/gpu.sh                 # writes bench/results/gpu.json and gpu.md
#   bash bench/gpu.sh --tiny          # the same code on the CPU in seconds
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# cuBLAS reads its workspace size when it starts; deterministic kernels (prunemem.runtime) need a fixed one
export CUBLAS_WORKSPACE_CONFIG="${CUBLAS_WORKSPACE_CONFIG:-:4096:8}"
# this checkout's code, whether or not the package is installed in the python found here
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
# a bare GPU machine: say in one line what the python found here lacks, rather than fail halfway
python - <<'PY'
import importlib.util, sys
need = ("torch", "transformers", "safetensors", "numpy", "polars", "yaml", "jsonschema", "tqdm", "psutil", "dill")
missing = [m for m in need if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"bench/gpu.sh: {sys.executable} cannot import {', '.join(missing)}; run it with the project's venv "
             "(make venv; .venv/bin/python on PATH) or a python that has them")
PY
# under the device budget: a run stopped at the limit still leaves gpu.json with what it measured so far
exec timeout --signal=INT "${GPU_CHECK_TIMEOUT:-540}" python bench/gpu.py "$@"
