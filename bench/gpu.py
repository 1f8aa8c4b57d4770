"""A ready device check: every method at Pythia scale on one GPU, in minutes, with no network.

    bash bench/gpu.sh                       # one H100/H200: random Pythia-1.4B and -12B configs, <= 8 min
    bash bench/gpu.sh --tiny --out /tmp/g   # CPU, seconds: the same code end to end on stand-in shapes

Timings do not depend on weight values, so the models are randomly initialised. It measures:

1. the 12B global magnitude mask (``magnitude.global_masks``, scores on the device): time and
   peak extra device memory against the prunable weights' bytes;
2. Wanda, SparseGPT and GPTQ on the 12B shape through the real method code
   (``prune.compute`` / ``compress.run.transform_model``) on a two-block model with the full
   calibration set (128 x 2048): time, extrapolated to the 36 blocks, peak device memory beside
   the memory plan's figure (``prunemem.memplan``) and the FLOP count;
3. evaluation (``score_windows``, teacher forcing) at k = 500 + 50 in bf16 with the batch size
   ``evaluate.batch_size: auto`` picks (``fit_batch_size``), for 1.4B and 12B: MFU;
4. teacher forcing against greedy ``generate()`` on 1.4B: speed ratio and agreement;
5. the predicted GPU-hours of the paper grid (workflow/configs/pythia.yaml) and of the grid
   with workflow/configs/pythia-sota.yaml, from those rates.

It writes ``gpu.json`` and ``gpu.md`` (one table) under ``--out``. Peak memory is
``torch.cuda.max_memory_allocated`` on a GPU and the tracked tensor bytes
(``blockwise.LiveBytes``) on the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from memorization import generate_verdicts, matmul_params  # noqa: E402  (bench/memorization.py)

REPO = Path(__file__).resolve().parents[1]
PYTHIA = {"1.4b": (2048, 24, 16), "12b": (5120, 36, 40)}
TINY = {"1.4b": (16, 2, 2), "12b": (32, 3, 4)}  # stand-ins with the same code paths


def config_of(size: str, tiny: bool, layers: int | None = None):
    from transformers import GPTNeoXConfig

    hidden, n_layers, heads = (TINY if tiny else PYTHIA)[size]
    vocab = 128 if tiny else (50688 if size == "12b" else 50304)
    return GPTNeoXConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers or n_layers,
                         num_attention_heads=heads, intermediate_size=4 * hidden, max_position_embeddings=2048,
                         rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False,
                         bos_token_id=0, eos_token_id=0, pad_token_id=0)


def build(config, device: str, dtype: torch.dtype):
    from transformers import GPTNeoXForCausalLM

    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialised in bf16 directly: no fp32 copy of 12B on the device
    try:
        with torch.device(device):
            return GPTNeoXForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(default)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def measured(device: str):
    """{'seconds', 'peak_bytes'}: wall time and the peak of memory allocated above the start."""
    from prunemem.blockwise import LiveBytes

    out: dict = {}
    sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        start, tracker = torch.cuda.memory_allocated(), contextlib.nullcontext()
    else:
        tracker = LiveBytes()
    t0 = time.perf_counter()
    with tracker:
        yield out
        sync(device)
    out["seconds"] = time.perf_counter() - t0
    out["peak_bytes"] = torch.cuda.max_memory_allocated() - start if device == "cuda" else tracker.peak


def global_mask(model, device: str) -> dict:
    from prunemem.prune import magnitude
    from prunemem.prune.targets import prunable

    params = dict(model.named_parameters())
    names = [t.name for t in prunable(list(params))]
    weight_bytes = sum(params[n].numel() * params[n].element_size() for n in names)
    with torch.no_grad(), measured(device) as m:
        masks = magnitude.global_masks(names, lambda n: params[n].detach().abs(), 0.5)
    pruned = sum(x.numel() - x.kept for x in masks.values())
    return {**m, "weight_bytes": weight_bytes, "extra_fraction": m["peak_bytes"] / weight_bytes, "pruned": pruned}


# what the check runs: the grid names of pythia-sota.yaml (GPTQ is its int4-gptq transform)
CHECKED = {"wanda": "wanda", "sparsegpt": "sparsegpt", "gptq": "int4-gptq"}


def sota_params(tiny: bool) -> dict:
    """pythia.yaml + pythia-sota.yaml as the grid runs them; the tiny shapes need a smaller GPTQ group."""
    from prunemem.plan import Plan

    params = Plan.load([REPO / "workflow/configs" / f for f in ("pythia.yaml", "pythia-sota.yaml")]).params
    if tiny:
        params["compress"]["quantize"]["int4-gptq"]["group_size"] = 16
    return params


def calibrated(label: str, config, device: str, dtype: torch.dtype, calibration: torch.Tensor,
               blocks_total: int, params: dict) -> dict:
    from prunemem import memplan
    from prunemem.compress.run import transform_model
    from prunemem.prune.methods import MaskContext, compute
    from prunemem.prune.registry import resolve
    from prunemem.prune.targets import DictSource

    method = resolve(CHECKED[label], params)
    model = build(config, device, dtype)
    cfg = {**params["prune"], "batch_size": params["prune"].get("batch_size", 8)}
    with torch.no_grad(), measured(device) as m:
        if method.kind == "transform":
            transform_model(model, params["compress"]["quantize"][method.name], "bench", calibration,
                            batch_size=cfg["batch_size"])
        else:
            compute(method, MaskContext(DictSource({}), cfg, load_model=lambda: model, calibration=lambda: calibration),
                    0.5)
    del model
    shapes = memplan.Shapes.from_config(config)
    sequences, seq_len = calibration.shape
    name = str(dtype).removeprefix("torch.")
    plan_here = memplan.plan(method, shapes, sequences, seq_len, 8, name)
    full = memplan.Shapes(**{**shapes.__dict__, "layers": blocks_total})
    flops_here = memplan.calibration_flops(method, shapes, sequences, seq_len)
    return {**m, "blocks": config.num_hidden_layers, "blocks_total": blocks_total,
            "seconds_total": m["seconds"] * blocks_total / config.num_hidden_layers,
            "plan_peak_bytes": plan_here["device"] - plan_here["weights"],
            "plan_device_bytes_total": memplan.plan(method, full, sequences, seq_len, 8, name)["device"],
            "flops": flops_here, "flops_total": memplan.calibration_flops(method, full, sequences, seq_len),
            "flop_rate": flops_here / m["seconds"], "workload": method.workload}


def scoring_flops(config, k: int, suffix: int, samples: int) -> float:
    """Useful FLOPs of teacher-forced scoring: every block over the k + suffix - 1 input positions
    (matmuls, plus causal attention: QK^T and AV, 2 T^2 hidden per block), and the output head over
    only the ``suffix`` positions it is computed for (``logits_to_keep``)."""
    t, h = k + suffix - 1, config.hidden_size
    blocks = matmul_params(config) - config.vocab_size * h
    return samples * (2 * blocks * t + 2 * config.num_hidden_layers * t * t * h + 2 * config.vocab_size * h * suffix)


def evaluation(model, device: str, dtype: torch.dtype, k: int, suffix: int, batches: int, peak: float) -> dict:
    from prunemem.evaluate.memorization import score_windows
    from prunemem.evaluate.run import fit_batch_size

    config = model.config
    batch = fit_batch_size(config, k + suffix, suffix, dtype, device, cap=256 if device == "cuda" else 8)
    windows = torch.randint(1, config.vocab_size, (batch * batches, k + suffix),
                            generator=torch.Generator().manual_seed(0))
    score_windows(model, windows[:batch], k, suffix, batch)  # warm-up (kernels, allocator)
    with measured(device) as m:
        score_windows(model, windows, k, suffix, batch)
    rate = scoring_flops(config, k, suffix, len(windows)) / m["seconds"]
    return {**m, "batch_size": batch, "samples": len(windows), "flop_rate": rate,
            "mfu": rate / peak if device == "cuda" else None}


def teacher_vs_generate(model, device: str, k: int, suffix: int, samples: int, batch: int) -> dict:
    from prunemem.evaluate.memorization import score_windows

    windows = torch.randint(1, model.config.vocab_size, (samples, k + suffix),
                            generator=torch.Generator().manual_seed(1))
    with measured(device) as tf:
        verdict = score_windows(model, windows, k, suffix, batch)["extracted"]
    with measured(device) as gen:
        greedy = generate_verdicts(model, windows, k, suffix, batch)
    return {"teacher_seconds": tf["seconds"], "generate_seconds": gen["seconds"],
            "speed_ratio": gen["seconds"] / tf["seconds"], "agreement": float((verdict == greedy).float().mean()),
            "samples": samples}


def predicted_hours(eval_rate: float, method_rates: dict) -> dict:
    """GPU-hours of the paper grid and of the SOTA overlay: evaluation FLOPs of every variant at the
    measured evaluation rate, plus every calibrated job's FLOPs at its method's measured rate."""
    from prunemem import memplan
    from prunemem.plan import Plan
    from prunemem.cluster import _evaluation_tokens, _shapes, parameter_count

    out = {}
    for name, files in (("paper", ["pythia.yaml"]), ("sota", ["pythia.yaml", "pythia-sota.yaml"])):
        plan = Plan.load([REPO / "workflow/configs" / f for f in files])
        tokens, calib = _evaluation_tokens(plan), plan.params["samples"]["calibration"]
        seconds = 0.0
        for model in plan.models:
            shapes = _shapes(plan, model, parameter_count(plan, model))
            n_matmul = shapes.layers * sum(o * i for o, i in shapes.linears) + shapes.vocab * shapes.hidden
            for method, level in plan.variants(model):
                seconds += 2 * n_matmul * tokens / eval_rate
                resolved = plan.method(method)
                if resolved.calibrated:  # at the rate measured for its memory-plan class (OWL: Wanda's)
                    rate = method_rates.get(resolved.workload, min(method_rates.values()))
                    seconds += memplan.calibration_flops(resolved, shapes, calib["sequences"], calib["tokens"],
                                                         float(level)) / rate
        out[name] = seconds / 3600
    return out


def table(r: dict) -> str:
    gb = 1e9
    rows = ["| figure | value | target |", "|---|---:|---|"]
    g = r["global_mask"]
    rows.append(f"| 12B global mask | {g['seconds']:.1f} s, +{g['peak_bytes'] / gb:.2f} GB "
                f"({100 * g['extra_fraction']:.1f}% of {g['weight_bytes'] / gb:.1f} GB weights) | <= 60 s, <= 10% |")
    for method, m in r["methods"].items():
        target = "<= 5 min" if method == "wanda" else "<= 30 min"
        rows.append(f"| 12B {method}: {m['blocks']} blocks -> {m['blocks_total']} | {m['seconds']:.1f} s -> "
                    f"{m['seconds_total'] / 60:.1f} min; peak +{m['peak_bytes'] / gb:.2f} GB (plan "
                    f"{m['plan_peak_bytes'] / gb:.2f} GB; whole job {m['plan_device_bytes_total'] / gb:.1f} GB); "
                    f"{m['flops_total']:.3g} FLOP at {m['flop_rate'] / 1e12:.1f} TFLOP/s | {target} |")
    for size, e in r["evaluation"].items():
        mfu = f"{100 * e['mfu']:.1f}% MFU" if e["mfu"] is not None else "MFU n/a (CPU)"
        rows.append(f"| evaluation {size}, k = {r['k']} + {r['suffix']}, batch {e['batch_size']} | "
                    f"{e['flop_rate'] / 1e12:.2f} TFLOP/s, {mfu} | >= 50% MFU |")
    t = r["teacher_forcing"]
    rows.append(f"| teacher forcing vs generate() (1.4B) | {t['speed_ratio']:.1f}x faster, "
                f"{100 * t['agreement']:.1f}% agreement on {t['samples']} | agreement 100% |")
    h = r["predicted_gpu_hours"]
    rows.append(f"| predicted GPU-hours | paper grid {h['paper']:.1f} h; with pythia-sota.yaml {h['sota']:.1f} h | "
                "paper grid <= 5 h |")
    rows.append(f"| this check's wall time | {r['elapsed_s']['total']:.0f} s | <= 480 s |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="CPU, stand-in shapes, seconds (the suite runs this)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)")
    args = ap.parse_args(argv)
    if args.tiny:
        device, dtype, sequences, seq_len, k, suffix, batches = "cpu", torch.float32, 2, 16, 12, 4, 2
    else:
        if not torch.cuda.is_available():
            print("bench/gpu.sh: no CUDA device is visible; run it on a GPU node, or --tiny on a CPU", file=sys.stderr)
            return 1
        device, dtype, sequences, seq_len, k, suffix, batches = "cuda", torch.bfloat16, 128, 2048, 500, 50, 2
    from prunemem.runtime import deterministic

    deterministic(2 if args.tiny else 8)
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)

    def done(section: str) -> None:
        """Elapsed time so far, and the JSON as it stands: a run stopped at its time limit keeps what it measured."""
        r.setdefault("elapsed_s", {})[section] = round(time.perf_counter() - started, 1)
        (args.out / "gpu.json").write_text(json.dumps(r, indent=1, sort_keys=True) + "\n")
        print(f"bench/gpu: {section} done at {r['elapsed_s'][section]:.0f} s", file=sys.stderr, flush=True)

    r: dict = {"mode": "tiny" if args.tiny else "full", "device": torch.cuda.get_device_name() if device == "cuda"
               else f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)", "torch": torch.__version__,
               "dtype": str(dtype).removeprefix("torch."), "k": k, "suffix": suffix, "calibration": [sequences, seq_len]}
    large = build(config_of("12b", args.tiny), device, dtype)
    done("build 12b")
    r["global_mask"] = global_mask(large, device)
    done("global mask")
    r["evaluation"] = {"12b": evaluation(large, device, dtype, k, suffix, batches, args.peak_tflops * 1e12)}
    done("evaluation 12b")
    blocks_total = large.config.num_hidden_layers
    del large
    if device == "cuda":
        torch.cuda.empty_cache()
    calibration = torch.randint(1, config_of("12b", args.tiny).vocab_size, (sequences, seq_len),
                                generator=torch.Generator().manual_seed(2))
    two = config_of("12b", args.tiny, layers=2)
    params = sota_params(args.tiny)
    r["methods"] = {}
    for label in CHECKED:
        r["methods"][label] = calibrated(label, two, device, dtype, calibration, blocks_total, params)
        done(label)
        if device == "cuda":
            torch.cuda.empty_cache()
    small = build(config_of("1.4b", args.tiny), device, dtype)
    r["evaluation"]["1.4b"] = evaluation(small, device, dtype, k, suffix, batches, args.peak_tflops * 1e12)
    done("evaluation 1.4b")
    r["teacher_forcing"] = teacher_vs_generate(small, device, k, suffix, 8 if args.tiny else 64, 8 if args.tiny else 32)
    del small
    eval_rate = min(e["flop_rate"] for e in r["evaluation"].values())
    rates = {v["workload"]: v["flop_rate"] for v in r["methods"].values()}  # by memory-plan class (registry trait)
    r["predicted_gpu_hours"] = predicted_hours(eval_rate, rates)
    done("total")
    (args.out / "gpu.md").write_text(table(r) + "\n")
    print(table(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
