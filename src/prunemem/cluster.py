"""Cluster resources per job, scaled from the model's parameter count (Snakemake `resources:`).

    snakemake -n --profile workflow/profiles/slurm --configfile workflow/configs/pythia.yaml

The names are those of snakemake-executor-plugin-slurm: ``gpu`` (count), ``cpus_per_gpu``,
``mem_mb`` (host memory) and ``runtime`` (minutes). The estimates are deliberately generous:
a job killed at its time limit costs more than a few idle minutes.

- Evaluation runs on one GPU once a model has 100M parameters. Its runtime is the forward
  FLOPs of every sample window and perplexity token (2 * N * tokens) at an assumed 25% of an
  H100's bf16 peak, doubled for the fp32 near-tie re-checks and the cross-check, plus 20 minutes
  of loading; host memory holds the fp32 copy a transform is recomputed in.
- Calibrated masks and transforms (Wanda, SparseGPT, OWL, SLEB, GPTQ, low-rank) run on one GPU
  block by block; magnitude masks are a CPU pass over the memory-mapped weights. Calibrated
  methods' runtime scales with their FLOP count (``memplan.calibration_flops``: d^3 per layer
  for SparseGPT and GPTQ, whole-model forwards for SLEB) and their host memory with the memory
  plan (``memplan.plan``). An EvoP search
  adds one forward pass over the calibration set (and, for evop-mem, the search split) per
  candidate, population x generations candidates at most, at the same assumed rate.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from prunemem.plan import Job, Plan, lookup
from prunemem.prune.registry import Method

GPU_FROM_PARAMS = 100e6
ASSUMED_FLOPS = 0.25 * 989e12  # 25% of an H100's dense bf16 peak


def parameter_count(plan: Plan, model: str) -> float:
    """Parameters of ``model``: from the embedded architecture, or from the size in a hub repo's name."""
    spec = plan.params["models"][model]
    if spec["source"] == "embedded":
        arch, vocab = plan.params["embedded"]["architecture"], plan.params["embedded"]["tokenizer"]["vocab_size"]
        return 12 * arch["num_layers"] * arch["hidden_size"] ** 2 + 2 * vocab * arch["hidden_size"]
    name = spec.get("repo") or Path(spec["path"]).name  # source: local names its directory
    match = re.search(r"(\d+(?:\.\d+)?)([mb])\b", name.lower().replace("-deduped", ""))
    if not match:
        return 12e9  # unknown size: plan for the largest Pythia
    return float(match.group(1)) * (1e6 if match.group(2) == "m" else 1e9)


def _evaluation_tokens(plan: Plan) -> int:
    samples = plan.params["samples"]
    n = samples.get("training_members", 0) + samples.get("nonmembers", samples.get("training_members", 0))
    per_sample = sum(k + samples["suffix_tokens"] for k in plan.ks)
    window, stride = plan.params["perplexity"]["window"], plan.params["perplexity"]["stride"]
    return n * per_sample + samples["perplexity_tokens"] * window // stride


def _calibrated_cost(plan: Plan, model: str, method: Method, n: float, minutes: float,
                     mem_gb: float) -> tuple[float, float]:
    """Runtime from the method's FLOP count (``memplan.calibration_flops``: SparseGPT's and GPTQ's
    d^3 per layer, SLEB's forward passes) at a tenth of the assumed rate (float64 Hessians, the
    sequential OBS sweeps; half the rate for forward passes) plus loading, and host memory from
    the memory plan."""
    from prunemem import memplan

    shapes = _shapes(plan, model, n)
    calib = plan.params["samples"]["calibration"]
    level = float(max(plan.mask_levels(method.name, model), key=float)) if method.kind == "mask" else 0.5
    flops = memplan.calibration_flops(method, shapes, calib["sequences"], calib["tokens"], level,
                                      plan.params["prune"].get("sleb", {}).get("protect_ends", True))
    if method.kind == "mask" and method.calibration == "cluster":  # CCDS embeds the pool first
        flops += memplan.calibration_flops("embed", shapes, calib["sequences"], calib["tokens"],
                                           pool=calib.get("pool", calib["sequences"]))
    host = memplan.plan(method, shapes, calib["sequences"], calib["tokens"], dtype="float32")["host"] / 1e9
    slowdown = 10 if method.workload in ("hessian", "gptq") else 2  # float64 and sequential sweeps, or bf16
    return 30 + 2 * n / 1e9 + slowdown * flops / ASSUMED_FLOPS / 60, max(mem_gb, 4 + host)


def _shapes(plan: Plan, model: str, n: float):
    """The model's shapes: the embedded architecture, the Pythia size in a hub repo's name, or 12B."""
    from prunemem import memplan

    spec = plan.params["models"][model]
    if spec["source"] == "embedded":
        arch, vocab = plan.params["embedded"]["architecture"], plan.params["embedded"]["tokenizer"]["vocab_size"]
        h = arch["hidden_size"]
        heads = arch.get("num_heads", arch.get("num_attention_heads", 4))
        return memplan.Shapes(h, 4 * h, arch["num_layers"], vocab, heads, h // heads // 4)
    name = spec.get("repo") or Path(spec["path"]).name  # source: local names its directory
    match = re.search(r"pythia-(\d+(?:\.\d+)?[mb])", name.lower())
    return memplan.Shapes.pythia(match.group(1) if match and match.group(1) in memplan.PYTHIA else "12b")


def _downstream_documents(plan: Plan) -> int:
    """Documents scored per variant: downstream.limit per task (an unlimited task counted as 5,000)."""
    limit = plan.params["downstream"].get("limit") or 5000
    return len(plan.params["downstream"]["tasks"]) * limit


def job_resources(plan: Plan, job: Job) -> dict[str, int]:
    """{gpu, cpus_per_gpu, mem_mb, runtime} for one job of the job table."""
    if job.model is None:  # the report
        return {"gpu": 0, "cpus_per_gpu": 0, "mem_mb": 8000, "runtime": 30}
    n = parameter_count(plan, job.model)
    weights_gb = 4 * n / 1e9  # fp32
    big = n >= GPU_FROM_PARAMS
    gpu = 0
    if job.stage == "checkpoint":
        mem_gb, minutes = 4 + 2 * weights_gb, 30 + 2 * n / 50e6 / 60  # a download at 50 MB/s, then a conversion
    elif job.stage == "samples":
        mem_gb, minutes = 8, 120
    elif job.stage == "fetch":  # a download (the login node runs it: localrules) and one decompressing count
        mem_gb, minutes = 4, 240
    elif job.stage in ("mask", "transform"):
        method = plan.method(job.method)
        heavy = method.loads_model  # block by block on the whole model (calibrated methods, low-rank SVD)
        gpu = int(big and heavy)
        mem_gb = 4 + (weights_gb if heavy else 0.5 * weights_gb)
        minutes = 30 + (6 if heavy else 1) * n / 1e9
        if method.calibrated and not method.search:  # the method's own cost: d^3 per layer, or forwards
            minutes, mem_gb = _calibrated_cost(plan, job.model, method, n, minutes, mem_gb)
        if method.search:  # every candidate pattern is a forward pass over its data
            evop, samples = plan.params["prune"]["evop"], plan.params["samples"]
            tokens = samples["calibration"]["sequences"] * samples["calibration"]["tokens"]
            if method.search_split:
                tokens += samples.get("search_members", 0) * (max(plan.ks) + samples["suffix_tokens"])
            minutes += 2 * n * tokens * evop["population"] * evop["generations"] / ASSUMED_FLOPS / 60
    elif job.stage == "downstream":  # the variant loaded as evaluation loads it, then lm-eval's requests
        gpu = int(big)
        mem_gb = 8 + 1.5 * weights_gb
        minutes = 30 + 2 * n / 1e9 * _downstream_documents(plan) / 100
    else:  # evaluate
        gpu = int(big)
        mem_gb = 8 + 1.5 * weights_gb
        minutes = 20 + 2 * 2 * n * _evaluation_tokens(plan) / ASSUMED_FLOPS / 60
    return {"gpu": gpu, "cpus_per_gpu": 8 if gpu else 0, "mem_mb": int(math.ceil(mem_gb) * 1000),
            "runtime": int(math.ceil(minutes))}


def job_threads(plan: Plan, job: Job) -> int:
    """The job's CPU threads: the params key its registry entry or stage names (1 for I/O-bound jobs)."""
    return lookup(plan.params, job.threads_key) if job.threads_key else 1


def batch_resources(plan: Plan, batch) -> dict[str, int]:
    """A batch's resources (``plan.Batch``): its jobs run one after another in one process, so the
    largest of their GPU, CPU and memory asks and the sum of their runtimes."""
    each = [job_resources(plan, job) for job in batch.jobs]
    return {key: (sum if key == "runtime" else max)(r[key] for r in each) for key in each[0]}


def batch_threads(plan: Plan, batch) -> int:
    return max(job_threads(plan, job) for job in batch.jobs)


def batch_priority(plan: Plan, batch) -> int:
    """Snakemake's priority of a batch, the critical path first: the searched masks (EvoP, AdaPruner:
    every candidate is forward passes, the longest masks of any grid) 2, every other mask and
    transform 1 (a model's downstream batch waits for all of them), evaluations 0."""
    if batch.stage not in ("mask", "transform"):
        return 0
    method = plan.method(batch.method)
    return 1 + int(method.search or method.trial_search)
