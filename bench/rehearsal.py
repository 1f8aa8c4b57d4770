"""The rehearsal at pythia-160m's shape: the shipped preset, shrunk, run offline stage by stage and timed.

    .venv/bin/python bench/rehearsal.py [--workdir DIR] [--members 8] [--k 50 100] [--json out.json]
    bash bench/rehearsal.sh                       # the same, with defaults

Same mirror as tests/test_rehearsal.py (a loopback fake hub in the real layouts, the real
huggingface_hub download code filling an HF cache, then HF_HUB_OFFLINE=1), but the checkpoint
is EleutherAI/pythia-160m's shape: hidden 768, 12 layers, 12 heads, vocab 50304, context 2048,
random weights. Each CLI verb runs in its own process, as Snakemake and DVC run it, and is timed
(wall and CPU of the child). From the evaluation's measured throughput and each model's
FLOPs (``prunemem.cluster``), it predicts the cost of the full paper grid on this machine and
on GPUs at the profile's assumed throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "src"))


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--members", type=int, default=8, help="members = non-members (the paper: 5000)")
    ap.add_argument("--k", type=int, nargs="+", default=[50, 100])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import yaml
    from fakehub import FakeHub
    from mirror import pile_dataset, prefill_cache, pythia_model_files, shrink_pythia_preset

    from prunemem import embedded
    from prunemem.plan import Plan
    from prunemem.cluster import ASSUMED_FLOPS, _evaluation_tokens, parameter_count

    work = args.workdir or Path(tempfile.mkdtemp(prefix="prunemem-rehearsal-"))
    work.mkdir(parents=True, exist_ok=True)
    docs = [d["text"] for d in embedded.load_corpus()]
    t0 = time.perf_counter()
    server = FakeHub()
    server.add("EleutherAI/pythia-160m", "step143000",
               pythia_model_files(docs[400:1400], vocab=50304, hidden=768, layers=12, heads=12, ctx=2048))
    server.add("monology/pile-uncopyrighted", "main",
               pile_dataset([docs[:150], docs[150:300], docs[300:400]], docs[1400:1600], docs[1600:1650]),
               repo_type="dataset")
    preset = yaml.safe_load((REPO / "workflow/configs/pythia.yaml").read_text())
    params = shrink_pythia_preset(preset, "pythia-160m", max_documents=200)
    params["samples"].update(k=sorted(args.k), training_members=args.members, nonmembers=args.members)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    prefill_cache(server, work / "hf" / "hub", "EleutherAI/pythia-160m", "step143000", params, "pythia-160m")
    server.close()
    mirror_s = time.perf_counter() - t0

    env = {**os.environ, "HF_HOME": str(work / "hf"), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    plan = Plan.load([work / "params.yaml"], root=work)
    model = "pythia-160m"
    level = plan.model_levels(model)[0]
    stages = [("fetch", ["fetch", "--model", model]), ("checkpoint", ["checkpoint", "--model", model]),
              ("samples", ["samples", "--model", model]),
              ("mask", ["mask", "--model", model, "--method", "global", "--level", level]),
              ("evaluate dense", ["evaluate", "--model", model, "--method", "dense", "--level", "0"]),
              ("evaluate global", ["evaluate", "--model", model, "--method", "global", "--level", level]),
              ("report", ["report"]), ("audit", ["audit", "--no-dvc"])]
    times = {}
    for name, argv in stages:
        start, cpu = time.perf_counter(), child_cpu()
        done = subprocess.run(["prunemem", "--params", "params.yaml", *argv], cwd=work, env=env,
                              capture_output=True, text=True, check=False)
        times[name] = {"wall_s": round(time.perf_counter() - start, 1), "cpu_s": round(child_cpu() - cpu, 1)}
        print(f"{name:16s} {times[name]['wall_s']:8.1f} s wall {times[name]['cpu_s']:8.1f} s CPU", flush=True)
        if done.returncode:
            sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")

    # The full grid from the measured evaluation throughput: FLOPs = 2 x params x evaluated tokens.
    n160 = parameter_count(plan, model)
    flops_run = 2 * n160 * _evaluation_tokens(plan)
    rate = flops_run / times["evaluate dense"]["wall_s"]
    full = Plan.load([REPO / "workflow/configs/pythia.yaml"])
    grid_flops = sum(2 * parameter_count(full, m) * _evaluation_tokens(full) * len(full.variants(m))
                     for m in full.models)
    prediction = {"evaluation_flops_per_s_here": rate, "grid_evaluations": sum(len(full.variants(m)) for m in full.models),
                  "grid_evaluation_flops": grid_flops, "grid_hours_here": grid_flops / rate / 3600,
                  "grid_gpu_hours_at_assumed_flops": grid_flops / ASSUMED_FLOPS / 3600}
    print(f"mirror + prefill {mirror_s:.0f} s; evaluation throughput here {rate / 1e9:.1f} GFLOP/s")
    print(f"paper grid: {prediction['grid_evaluations']} evaluations, {grid_flops:.3g} FLOPs -> "
          f"{prediction['grid_hours_here']:.0f} h on this machine, "
          f"{prediction['grid_gpu_hours_at_assumed_flops']:.1f} GPU-hours at {ASSUMED_FLOPS:.3g} FLOP/s")
    out = {"machine": f"{os.uname().machine}, {os.cpu_count()} cores", "load_average": os.getloadavg(),
           "members": args.members, "k": args.k, "stages": times, "mirror_s": round(mirror_s, 1), **prediction}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
