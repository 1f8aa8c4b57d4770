#!/usr/bin/env bash
# The device check of bench/gpu.py (see its docstring): one H100/H200, no network, <= 8 minutes.
#   bash bench/gpu.sh                 # writes bench/results/gpu.json and gpu.md
#   bash bench/gpu.sh --tiny          # the same code on the CPU in seconds
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec python bench/gpu.py "$@"
