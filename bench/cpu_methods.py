"""CPU stand-ins at the Pythia-160M shape: Wanda, SparseGPT and GPTQ through the real `prunemem` jobs, timed.

    .venv/bin/python bench/cpu_methods.py --sequences 16 --tokens 512 --json bench/results/cpu_methods.json
    .venv/bin/python bench/cpu_methods.py --from-json bench/results/cpu_methods.json    # the table again

A random-weight checkpoint of EleutherAI/pythia-160m's shape (hidden 768, 12 layers, 12 heads,
intermediate 3072, vocab 50304, context 2048, 25% rotary, parallel residual; the byte-level BPE
of ``tests/mirror.py``) is saved to ``--workdir/models/pythia-160m`` and adopted with
``source: local``; members and held-out text are jsonl files of the bundled corpus (``kind: local``).
The params are the shipped ``workflow/configs/pythia.yaml`` + ``pythia-sota.yaml`` cut to this one
model, the three methods and a tiny evaluation set. Then, each in its own process as Snakemake
runs them: ``prunemem checkpoint``, ``prunemem samples``, and the timed jobs
``prunemem mask --method wanda``, ``prunemem mask --method sparsegpt`` and
``prunemem transform --method int4-gptq``.

Per job: wall time, CPU time (user + system of that child, from ``os.wait4``: less sensitive to
other processes sharing the cores than wall time), peak RSS (``ru_maxrss``, interpreter and torch
included) and the load average sampled every 2 s while it ran. From the shapes
(``memplan.calibration_flop_parts``): each method's FLOPs, split into the weight-dtype matmuls
(block forwards) and the float64 work (Hessians, factorisations, OBS/GPTQ sweeps, norms), at the
calibration run here and at the issue's 128 x 2048, and at 160M and 12B; and a GPU time bound
at an H100 SXM's peak rates (bf16 dense 989 TFLOP/s, fp32 and fp64 67 TFLOP/s).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "src"))

MODEL = "pythia-160m"
METHODS = {"wanda": "mask", "sparsegpt": "mask", "int4-gptq": "transform"}
H100 = {"bf16": 989e12, "fp32": 67e12, "fp64": 67e12}  # SXM, dense; fp64 on the tensor cores


def write_inputs(work: Path, sequences: int, tokens: int, threads: int) -> Path:
    """The checkpoint directory, the two jsonl corpora and params.yaml under ``work``; returns params.yaml."""
    import yaml
    from mirror import pythia_model_files

    from prunemem import embedded
    from prunemem.plan import Plan

    docs = [d["text"] for d in embedded.load_corpus()]
    model_dir = work / "models" / MODEL
    if not (model_dir / "model.safetensors").is_file():
        files = pythia_model_files(docs[400:1400], vocab=50304, hidden=768, layers=12, heads=12, ctx=2048)
        model_dir.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (model_dir / name).write_bytes(data)
    for name, texts in (("members.jsonl", docs[:400]), ("heldout.jsonl", docs[1400:])):
        (work / name).write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    preset = Plan.load([REPO / "workflow/configs/pythia.yaml", REPO / "workflow/configs/pythia-sota.yaml"]).params
    p = copy.deepcopy(preset)
    p["models"] = {MODEL: {"source": "local", "path": str(model_dir), "levels": preset["models"][MODEL]["levels"][:1],
                           "members": {"kind": "local", "path": str(work / "members.jsonl"), "text_field": "text"},
                           "heldout": {"kind": "local", "path": str(work / "heldout.jsonl"), "text_field": "text"}}}
    p["samples"].update(k=[50], training_members=8, nonmembers=8, perplexity_tokens=2048,
                        calibration={"sequences": sequences, "tokens": tokens, "pool": sequences})
    p["prune"].update(methods=[m for m, kind in METHODS.items() if kind == "mask"], device="cpu", dtype="float32")
    p["compress"] = {"quantize": {m: preset["compress"]["quantize"][m] for m, k in METHODS.items() if k == "transform"}}
    p["evaluate"]["threads"] = threads  # the mask and transform jobs' thread count
    (work / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    return work / "params.yaml"


def run_job(argv: list[str], work: Path, env: dict) -> dict:
    """One `prunemem` process: wall, CPU (user + sys) and peak RSS of that child, the load while it ran."""
    loads, done = [], threading.Event()

    def sample():
        while not done.wait(2.0):
            loads.append(os.getloadavg()[0])

    log = (work / "logs").joinpath("-".join(argv[0:1] + argv[2:5:2]) + ".log")
    log.parent.mkdir(exist_ok=True)
    watcher = threading.Thread(target=sample, daemon=True)
    start_load = os.getloadavg()[0]
    with log.open("w") as err:
        t0 = time.perf_counter()
        child = subprocess.Popen(["prunemem", "--params", "params.yaml", *argv], cwd=work, env=env,
                                 stdout=subprocess.DEVNULL, stderr=err)
        watcher.start()
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - t0
    done.set()
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        sys.exit(f"{' '.join(argv)} failed ({child.returncode}):\n{log.read_text()[-3000:]}")
    loads = loads or [start_load]
    return {"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "user_s": round(usage.ru_utime, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "load_start": round(start_load, 2), "load_mean": round(sum(loads) / len(loads), 2),
            "load_max": round(max(loads), 2)}


def measure(args) -> dict:
    """Runs the jobs; the result (so far) is written to ``--json`` after each one."""
    work = args.workdir or Path(tempfile.mkdtemp(prefix="prunemem-cpu-methods-"))
    work.mkdir(parents=True, exist_ok=True)
    write_inputs(work, args.sequences, args.tokens, args.threads)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    from prunemem.plan import Plan

    import torch

    level = Plan.load([work / "params.yaml"], root=work).model_levels(MODEL)[0]
    result = {"machine": f"{os.uname().machine}, {os.cpu_count()} cores (shared), no GPU",
              "torch": torch.__version__, "threads": args.threads, "calibration": [args.sequences, args.tokens],
              "level": level, "setup": {}, "jobs": {}, "workdir": str(work)}
    runs = [(stage, result["setup"], [stage, "--model", MODEL]) for stage in ("checkpoint", "samples")]
    runs += [(method, result["jobs"], [verb, "--model", MODEL, "--method", method, "--level",
                                       level if verb == "mask" else "0"]) for method, verb in METHODS.items()]
    for name, into, argv in runs:
        into[name] = run_job(argv, work, env)
        print(f"{name:12s} {into[name]}", flush=True)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


GPTQ_PARAMS = {"prune": {}, "compress": {"quantize": {"int4-gptq": {"algorithm": "gptq"}}}}
STEP_S = 35e-6  # assumed GPU cost of one column step of the OBS/GPTQ sweep: ~7 small kernels at ~5 us each


def flop_parts(method: str, shapes, sequences: int, seq_len: int) -> dict[str, float]:
    from prunemem import memplan
    from prunemem.prune.registry import resolve

    return memplan.calibration_flop_parts(resolve(method, GPTQ_PARAMS), shapes, sequences, seq_len)


def column_steps(method: str, shapes) -> int:
    """Sequential column steps of the SparseGPT / GPTQ sweep (one per input column of every linear): on a GPU
    each is a handful of small kernels, so the sweep is launch-bound, not FLOP-bound."""
    from prunemem.prune.registry import resolve

    sweeps = resolve(method, GPTQ_PARAMS).workload in ("hessian", "gptq")
    return shapes.layers * sum(n for _, n in shapes.linears) if sweeps else 0


def gpu_seconds(parts: dict[str, float], weights: str) -> float:
    """A lower bound: the weight-dtype matmuls at that dtype's peak, the float64 work at fp64's."""
    return parts["matmul"] / H100[weights] + parts["float64"] / H100["fp64"]


def table(r: dict) -> str:
    """Two Markdown tables: what was measured here, and the FLOPs and GPU bounds at 128 x 2048."""
    from prunemem import memplan
    from prunemem.prune.registry import resolve

    s, t = r["calibration"]
    small, big = memplan.Shapes.pythia("160m"), memplan.Shapes.pythia("12b")
    rows = [f"| method (job) | wall s | CPU s | peak RSS MB | plan MB (fp32, CPU) | load avg mean / max | "
            f"FLOPs at {s} x {t}: matmul + float64 | FLOPs / CPU s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for method, m in r["jobs"].items():
        here = flop_parts(method, small, s, t)
        figures = memplan.plan(resolve(method, GPTQ_PARAMS), small, s, t, 8, "float32")
        # on the CPU the device is the host: the working set plus what the artifact carries, the weights once
        plan_mb = (figures["device"] + figures["host"] - small.params * 4) / 2**20
        rows.append(f"| {method} ({METHODS[method]}) | {m['wall_s']:.1f} | {m['cpu_s']:.1f} | "
                    f"{m['peak_rss_mb']:,.0f} | {plan_mb:,.0f} | {m['load_mean']:.1f} / {m['load_max']:.1f} | {here['matmul']:.2e} + "
                    f"{here['float64']:.2e} | {sum(here.values()) / m['cpu_s'] / 1e9:.1f} GFLOP/s |")
    rows += ["", "| method | size | FLOPs at 128 x 2048: matmul + float64 | H100 bound, bf16 weights | "
             "H100 bound, fp32 weights | sweep column steps (at 35 us each) |", "|---|---|---:|---:|---:|---:|"]
    for method in r["jobs"]:
        for size, shapes in (("160m", small), ("12b", big)):
            full = flop_parts(method, shapes, 128, 2048)
            steps = column_steps(method, shapes)
            rows.append(f"| {method} | {size} | {full['matmul']:.2e} + {full['float64']:.2e} | "
                        f"{gpu_seconds(full, 'bf16'):,.1f} s | {gpu_seconds(full, 'fp32'):,.1f} s | "
                        + (f"{steps:,} ({steps * STEP_S:,.0f} s) |" if steps else "none |"))
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, help="kept (default: a fresh temporary directory)")
    ap.add_argument("--sequences", type=int, default=16, help="calibration sequences (the issue's target: 128)")
    ap.add_argument("--tokens", type=int, default=512, help="tokens per sequence (the issue's target: 2048)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write the measurements here")
    ap.add_argument("--from-json", type=Path, help="print the table of an earlier run, measure nothing")
    args = ap.parse_args(argv)
    if args.from_json:
        result = json.loads(args.from_json.read_text())
    else:
        result = measure(args)
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
