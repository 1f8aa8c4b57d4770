"""Per-job cost of each CLI verb: CPU and wall of one `prunemem <verb>` process, as a job pays it.

    .venv/bin/python bench/startup.py --study DIR                      # this tree's src/
    .venv/bin/python bench/startup.py --study DIR --src OLD/src --src src   # two trees, run alternately

DIR is a built study with its environment (HF_HOME, HF_HUB_OFFLINE=1 for a hub study), e.g. the
rehearsal's (`tests/test_rehearsal.py` leaves one under pytest's
basetemp, or any `snakemake --cores all` result). Each verb reruns one job there (the first
model, its dense evaluation and first mask variant), which rewrites the same bytes. Prints a
markdown table: CPU is the child's user+system time, and whether the process imported torch.
Figures in bench/README.md ("Per-job overhead").
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def verbs(study: Path, src: Path) -> list[str]:
    """The verbs to time, with the arguments of one job of each stage in ``study``."""
    code = ("from prunemem.plan import Plan; p = Plan.load(['params.yaml']); m = p.models[0]; "
            "v = [x for x in p.variants(m) if x[0] != 'dense']; print(m, *(v[0] if v else ('', '')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=study, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(src)}).stdout.split()
    model, method, level = (out + ["", ""])[:3]
    found = ["validate", f"fetch --model {model}", f"checkpoint --model {model}", f"samples --model {model}"]
    if method:
        found.append(f"mask --model {model} --method {method} --level {level}")
    found.append(f"evaluate --model {model} --method dense --level 0")
    if method:
        found.append(f"evaluate --model {model} --method {method} --level {level}")
    return [*found, "report", "audit --no-dvc"]


def run(study: Path, src: Path, verb: str) -> tuple[float, float, bool]:
    """(wall s, CPU s, torch imported) of one `python -m prunemem.cli VERB` in ``study``."""
    probe = "import atexit, sys; atexit.register(lambda: print('torch' in sys.modules, file=sys.__stderr__))"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", f"{probe}\nimport sys; sys.argv = ['prunemem', *sys.argv[1:]]\n"
                           "from prunemem.cli import main; raise SystemExit(main())", *verb.split()],
                          cwd=study, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(src)})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"{verb} ({src}): exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.stderr.strip().splitlines()[-1] == "True"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--study", type=Path, required=True)
    ap.add_argument("--src", type=Path, action="append", help="a tree's src/ (repeatable; default this tree's)")
    args = ap.parse_args()
    srcs = [s.resolve() for s in (args.src or [REPO / "src"])]
    study = args.study.resolve()
    print(f"load average {os.getloadavg()[0]:.1f}")
    print("| verb | " + " | ".join(f"{s.parent.name}: wall s | CPU s | torch" for s in srcs) + " |")
    print("|---|" + "---:|---:|---|" * len(srcs))
    for verb in verbs(study, srcs[-1]):
        cells = []
        for src in srcs:  # alternately, so that both trees see the same load
            wall, cpu, torch = run(study, src, verb)
            cells.append(f"{wall:.1f} | {cpu:.2f} | {'yes' if torch else 'no'}")
        print(f"| {verb.split()[0]}{' ' + verb.split()[4] if verb.startswith('evaluate') else ''} | "
              + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
