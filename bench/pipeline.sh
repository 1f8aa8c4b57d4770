#!/usr/bin/env bash
# Time the walking skeleton's targets on this machine, from a fresh clone:
#   venv creation, `make run` (cold), `make run` again (must rebuild nothing).
#   bash bench/pipeline.sh [/tmp/prunemem-bench]
set -euo pipefail
src=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
dest=${1:-/tmp/prunemem-bench}
rm -rf "$dest" && git clone -q "$src" "$dest" && cd "$dest"
t0=$(date +%s.%N); make .venv/bin/.installed >/dev/null; t1=$(date +%s.%N)
make run >run1.log 2>&1; t2=$(date +%s.%N)
make run >run2.log 2>&1; t3=$(date +%s.%N)
grep -q "Nothing to be done" run2.log || { echo "second run rebuilt something" >&2; exit 1; }
printf 'machine: %s, %s cores\nvenv: %.0f s\nmake run (cold): %.0f s\nmake run (again): %.1f s\n' \
  "$(uname -m)" "$(nproc)" "$(echo "$t1-$t0" | bc)" "$(echo "$t2-$t1" | bc)" "$(echo "$t3-$t2" | bc)"
