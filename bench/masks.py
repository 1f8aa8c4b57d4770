"""Global magnitude mask: ``prunemem.prune.magnitude.global_masks`` vs ``torch.nn.utils.prune``.

Run from the repository root:

    .venv/bin/python bench/masks.py --level 0.5

What it does and measures:

1. Builds a randomly initialised Pythia-410M-shaped ``GPTNeoXForCausalLM`` (hidden 1024,
   24 layers, 16 heads, intermediate 4096, vocab 50304, 25% rotary, parallel residual,
   untied embeddings) in fp32 on CPU with a fixed seed and saves it with
   ``save_pretrained(dir, safe_serialization=True)`` into ``--workdir`` (default: a fresh
   temporary directory, removed at the end unless ``--keep``).  The prunable tensors are the
   4 nn.Linear weights of each block: 96 tensors, 301,989,888 weights.
2. Runs each method in its own fresh subprocess:
   * ``ours``:  ``global_masks(source.names, lambda n: source[n].abs(), level)`` over a
     memory-mapped ``WeightSource(model.safetensors)``;
   * ``torch``: ``GPTNeoXForCausalLM.from_pretrained(dir)``, then
     ``prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=k)``
     over the same 96 weights, with the integer ``k = floor(level * total)``.  Note that
     this call also re-parametrises the modules (``weight_orig`` parameter, float
     ``weight_mask`` buffer, masked ``weight``); that is part of what torch's API costs and
     is included in its figures.
   For each it measures, around the mask computation only (model loading / opening the
   file are excluded):
   * wall time (``time.perf_counter``), and the process's CPU time (``time.process_time``,
     all threads, user + system) with the 1-minute load average before and after, because
     wall time on a shared machine depends on what else runs;
   * peak extra resident memory = VmHWM after - VmRSS before, from /proc/self/status, with
     the high-water mark reset to the current RSS just before the computation by writing
     "5" to /proc/self/clear_refs (``ru_maxrss`` cannot be reset, and loading the model can
     leave it above anything the computation reaches).  VmHWM counts all resident pages,
     anonymous and file-backed (e.g. pages of the memory-mapped safetensors file);
   * the peak of RssAnon and RssFile above their starting values, sampled every 10 ms by a
     background thread (approximate: a sampler can miss short peaks);
   * the number of pruned weights, and (ours) the bytes of the bit-packed masks it returns.
3. Each subprocess saves its keep-masks (uint8, 1 = kept) with ``safetensors.torch.save_file``;
   the parent compares them element by element and prints whether they are identical.  When
   they differ it reports where, and whether every differing weight has the same magnitude
   as the pruning threshold (i.e. a tie, which torch's ``topk`` breaks in an unspecified
   order while ``global_masks`` prunes ties in (tensor order, flat index) order).
4. Prints a table (method, seconds, peak extra MB, pruned), the ratios torch/ours, and the
   machine, torch version and thread count.  Torch's thread count is left at its default.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MB = 1024 * 1024

ARCH = dict(
    hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
    vocab_size=50304, max_position_embeddings=2048, rotary_pct=0.25,
    use_parallel_residual=True, tie_word_embeddings=False,
)


# ---------------------------------------------------------------------------- memory


def _status() -> dict[str, int]:
    """Selected /proc/self/status fields, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


class Sampler(threading.Thread):
    """Samples RssAnon / RssFile every ``interval`` seconds; keeps the maxima."""

    def __init__(self, interval: float = 0.01):
        super().__init__(daemon=True)
        self.interval = interval
        self.stop = threading.Event()
        self.peak = {"RssAnon": 0, "RssFile": 0}

    def run(self) -> None:
        while not self.stop.is_set():
            s = _status()
            for k in self.peak:
                self.peak[k] = max(self.peak[k], s[k])
            self.stop.wait(self.interval)


def measure(fn):
    """Run ``fn()``; return (result, seconds, memory figures in bytes)."""
    gc.collect()
    _reset_hwm()
    before = _status()
    sampler = Sampler()
    sampler.start()
    load_before = os.getloadavg()[0]
    c0 = time.process_time()
    t0 = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t0
    cpu_seconds = time.process_time() - c0
    load_after = os.getloadavg()[0]
    sampler.stop.set()
    sampler.join()
    after = _status()
    for k in sampler.peak:
        sampler.peak[k] = max(sampler.peak[k], after[k])
    mem = {
        "rss_before": before["VmRSS"],
        "hwm_after": after["VmHWM"],
        "peak_extra": after["VmHWM"] - before["VmRSS"],
        "peak_extra_anon_sampled": sampler.peak["RssAnon"] - before["RssAnon"],
        "peak_extra_file_sampled": sampler.peak["RssFile"] - before["RssFile"],
        "rss_after": after["VmRSS"],
        "rss_file_after": after["RssFile"],
        "cpu_seconds": cpu_seconds,
        "loadavg_1min": [load_before, load_after],
    }
    return result, seconds, mem


# ---------------------------------------------------------------------------- children


def child_ours(model_dir: Path, level: float, out: Path) -> dict:
    import torch
    from safetensors.torch import save_file

    from prunemem.prune.magnitude import global_masks
    from prunemem.prune.targets import WeightSource

    source = WeightSource(model_dir / "model.safetensors")
    names = source.names
    masks, seconds, mem = measure(lambda: global_masks(names, lambda n: source[n].abs(), level))
    pruned = sum(m.numel() - m.kept for m in masks.values())  # bit-packed per tensor as each is made
    total = sum(m.numel() for m in masks.values())
    mem["result_bytes"] = sum(m.bits.numel() for m in masks.values())
    save_file({n: masks[n].bool().to(torch.uint8).contiguous() for n in names}, str(out))
    return dict(method="ours", seconds=seconds, pruned=pruned, total=total, tensors=len(names), k=None,
                threads=torch.get_num_threads(), **mem)


def child_torch(model_dir: Path, level: float, out: Path) -> dict:
    import torch
    from safetensors.torch import save_file
    from torch.nn.utils import prune
    from transformers import GPTNeoXForCausalLM

    from prunemem.prune.targets import prunable

    model = GPTNeoXForCausalLM.from_pretrained(str(model_dir))
    model.eval()
    names = [t.name for t in prunable(list(model.state_dict()))]
    modules = [model.get_submodule(n.rsplit(".", 1)[0]) for n in names]
    params = [(m, "weight") for m in modules]
    total = sum(m.weight.numel() for m in modules)
    k = math.floor(level * total)
    _, seconds, mem = measure(
        lambda: prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=k)
    )
    masks = {n: m.weight_mask for n, m in zip(names, modules)}
    pruned = sum(int((mk == 0).sum()) for mk in masks.values())
    save_file({n: (masks[n] != 0).to(torch.uint8).contiguous() for n in names}, str(out))
    return dict(method="torch", seconds=seconds, pruned=pruned, total=total, tensors=len(names), k=k,
                threads=torch.get_num_threads(), **mem)


# ---------------------------------------------------------------------------- parent


def build_model(model_dir: Path, seed: int) -> None:
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    config = GPTNeoXConfig(**ARCH)
    model = GPTNeoXForCausalLM(config).float()
    model.save_pretrained(str(model_dir), safe_serialization=True)
    del model
    gc.collect()


def run_child(method: str, model_dir: Path, level: float, out: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", method,
           "--model-dir", str(model_dir), "--level", repr(level), "--out", str(out)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        raise SystemExit(f"{method} subprocess failed with exit status {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(model_dir: Path, ours_file: Path, torch_file: Path) -> dict:
    """Element-wise comparison of the two keep-masks; diagnose differences against ties."""
    from safetensors import safe_open

    from prunemem.prune.targets import WeightSource

    source = WeightSource(model_dir / "model.safetensors")
    fo = safe_open(str(ours_file), framework="pt")
    ft = safe_open(str(torch_file), framework="pt")
    if set(fo.keys()) != set(ft.keys()):
        return {"identical": False, "reason": "different tensor names"}
    # the threshold magnitude: the largest |w| pruned by ours
    thr = 0.0
    for n in source.names:
        pruned = source[n].abs()[fo.get_tensor(n) == 0]
        if pruned.numel():
            thr = max(thr, float(pruned.max()))
    differing = 0
    tensors_differing = 0
    all_ties = True
    n_at_threshold = 0
    for n in source.names:
        a, b = fo.get_tensor(n), ft.get_tensor(n)
        w = source[n].abs()
        n_at_threshold += int((w == thr).sum())
        diff = a != b
        d = int(diff.sum())
        if d:
            differing += d
            tensors_differing += 1
            all_ties &= bool((w[diff] == thr).all())
    return {"identical": differing == 0, "differing": differing,
            "tensors_differing": tensors_differing, "differences_all_ties": all_ties,
            "threshold": thr, "weights_at_threshold": n_at_threshold}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--level", type=float, default=0.5)
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where the model and masks are written (default: a temporary dir)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep --workdir contents afterwards")
    ap.add_argument("--child", choices=["ours", "torch"], help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        fn = child_ours if args.child == "ours" else child_torch
        print(json.dumps(fn(args.model_dir, args.level, args.out)))
        return

    import torch
    import transformers

    temp = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="prunemem-bench-")) if temp else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir = workdir / "pythia-410m-random"
    try:
        print(f"machine: {platform.machine()}, os.cpu_count()={os.cpu_count()}, "
              f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
              f"transformers {transformers.__version__}, python {platform.python_version()}")
        t0 = time.perf_counter()
        build_model(model_dir, args.seed)
        size = (model_dir / "model.safetensors").stat().st_size
        print(f"built and saved the model in {time.perf_counter() - t0:.1f} s "
              f"({size / MB:.0f} MB safetensors) under {model_dir}")

        results = {}
        for method in ("ours", "torch"):
            print(f"running {method} ...", flush=True)
            results[method] = run_child(method, model_dir, args.level, workdir / f"masks_{method}.safetensors")
        cmp = compare(model_dir, workdir / "masks_ours.safetensors", workdir / "masks_torch.safetensors")
    finally:
        if temp and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    o, t = results["ours"], results["torch"]
    print()
    print(f"level {args.level}: {o['total']:,} prunable weights in {o['tensors']} tensors; "
          f"torch amount k = floor(level * total) = {t['k']:,}; threads: ours {o['threads']}, torch {t['threads']}")
    print(f"{'method':<8} {'seconds':>9} {'cpu s':>8} {'peak extra MB':>14} {'(anon, sampled)':>16} {'(file, sampled)':>16} {'pruned':>13}  load 1-min before/after")
    for r in (o, t):
        print(f"{r['method']:<8} {r['seconds']:>9.2f} {r['cpu_seconds']:>8.2f} {r['peak_extra'] / MB:>14.0f} "
              f"{r['peak_extra_anon_sampled'] / MB:>16.0f} {r['peak_extra_file_sampled'] / MB:>16.0f} {r['pruned']:>13,}  {r['loadavg_1min'][0]:.2f} / {r['loadavg_1min'][1]:.2f}")
    print(f"ratios torch/ours: time {t['seconds'] / o['seconds']:.2f}x (cpu {t['cpu_seconds'] / o['cpu_seconds']:.2f}x), "
          f"peak extra memory {t['peak_extra'] / o['peak_extra']:.2f}x "
          f"(anon, sampled: {t['peak_extra_anon_sampled'] / max(o['peak_extra_anon_sampled'], 1):.2f}x)")
    print("peak extra MB = VmHWM after (reset via /proc/self/clear_refs just before) - VmRSS before")
    weight_bytes = o["total"] * 4  # the prunable weights in fp32
    print(f"ours against the {weight_bytes / MB:,.0f} MB of prunable fp32 weights: peak extra anonymous memory "
          f"{o['peak_extra_anon_sampled'] / MB:.0f} MB ({o['peak_extra_anon_sampled'] / weight_bytes:.1%}; target <= 10%), "
          f"the packed masks themselves {o['result_bytes'] / MB:.0f} MB ({o['result_bytes'] / weight_bytes:.1%}); "
          f"VmHWM also counts the memory-mapped weights' file pages")
    print(f"RSS before: ours {o['rss_before'] / MB:.0f} MB, torch {t['rss_before'] / MB:.0f} MB")
    if cmp["identical"]:
        print(f"masks identical: yes (pruned: ours {o['pruned']:,}, torch {t['pruned']:,}); "
              f"threshold |w| = {cmp['threshold']!r}, {cmp['weights_at_threshold']:,} weights have that magnitude")
    else:
        print(f"masks identical: NO - {cmp.get('differing', '?'):,} weights differ in "
              f"{cmp.get('tensors_differing', '?')} tensors; all differences at the threshold "
              f"|w| = {cmp.get('threshold')!r} (ties): {cmp.get('differences_all_ties')}; "
              f"{cmp.get('weights_at_threshold', '?'):,} weights have that magnitude "
              f"(pruned: ours {o['pruned']:,}, torch {t['pruned']:,})")


if __name__ == "__main__":
    main()
