#!/usr/bin/env bash
# The device check of bench/gpu.py (see its docstring), then bench/width.py, a zero-out localization and one
# timed lm-eval run (bench/downstream.py): one H100/H200, no network, <= 10.5 minutes.
#   bash bench/gpu.sh                 # writes bench/results/gpu.json, gpu.md, width.json, width.md, localize.jsonl,
#                                     # downstream.json
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
timeout --signal=INT "${GPU_CHECK_TIMEOUT:-420}" python bench/gpu.py "$@"
# then width pruning's real speed (bench/width.py, issue 22) into the same --out: Pythia-1.4B's shape
# on the device; with --tiny the same code on the embedded shape in seconds
out=bench/results tiny=0 prev=
for arg in "$@"; do
  [ "$prev" = --out ] && out=$arg
  [ "$arg" = --tiny ] && tiny=1
  prev=$arg
done
if [ "$tiny" = 1 ]; then
  width=(--shape embedded --levels 0.5 --batches 1 --tokens 64 --repeats 1 --threads 1)
  zeroout=(--shape embedded --threads 1)
  downstream=(--shape embedded --device cpu --limit 8 --context 160)
else
  width=(--shape 1.4b --device cuda --dtype bfloat16 --levels 0.25 0.5 --batches 1 8 --tokens 512 --repeats 3)
  zeroout=(--shape pythia-1.4b --device cuda --dtype bfloat16)
  downstream=(--shape 1.4b --device cuda --dtype bfloat16 --limit 200)
fi
timeout --signal=INT "${WIDTH_CHECK_TIMEOUT:-90}" python bench/width.py "${width[@]}" --out "$out"
# and one zero-out localization (bench/localize.py, issue 23), a JSON line into $out/localize.jsonl
timeout --signal=INT "${LOCALIZE_CHECK_TIMEOUT:-60}" python bench/localize.py --methods zeroout "${zeroout[@]}" \
  > "$out/localize.jsonl"
# and the downstream stage's lm-eval run on Pythia-1.4B's shape, its batch fitted as the stage fits it (issue 21)
timeout --signal=INT "${DOWNSTREAM_CHECK_TIMEOUT:-90}" python bench/downstream.py "${downstream[@]}" --out "$out" \
  > /dev/null
