#!/usr/bin/env bash
# The rehearsal at pythia-160m's shape (hidden 768, 12 layers, vocab 50304, random weights),
# offline against a local mirror of the hub in its real layouts, every stage timed:
#   bash bench/rehearsal.sh [--members 8] [--k 50 100] [--json bench/rehearsal.json]
# See bench/rehearsal.py for what runs; figures in bench/README.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$root/.venv/bin/python}
exec "$py" "$root/bench/rehearsal.py" "$@"
