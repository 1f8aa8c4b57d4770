"""EvoP's batched candidate evaluation against scoring one candidate at a time; GPU time of a search.

Run from the repository root:

    .venv/bin/python bench/evop.py                # both configs, CPU, fp32, 2 threads (about 3 minutes)
    .venv/bin/python bench/evop.py --skip-large   # the embedded-size config only (seconds)

What it measures, per candidate pattern (a set of removed blocks or sublayers):

- **batched**: ``prunemem.prune.search.Evaluator``, what ``evop`` / ``evop-mem`` run. It stacks the
  calibration rows of several candidates in one forward pass (``batch_rows`` rows per pass) and
  multiplies each sublayer's output by a per-row 0/1 gate, so every block is computed for every
  candidate, removed or not.
- **one at a time**: the obvious alternative, as SLEB scores its candidates: physically replace the
  removed blocks by ``calibrated.SkipBlock`` (or removed sublayers by ``search.skip_sublayers``'
  zero modules), run ``calibrated.calibration_loss`` (batches of 8 rows), put the modules back.
  Removed blocks cost nothing here.

on two randomly initialised GPT-NeoX models (speed does not depend on the weights; random tokens):

- (a) the embedded default's shape: hidden 256, 4 layers, 4 heads, vocab 4096, context 160; 32
  calibration rows of 128 tokens; level 0.5. Block granularity: all C(4, 2) = 6 patterns.
  Sublayer granularity (the default ``prune.evop.granularity``): 16 random patterns of C(8, 4).
- (b) Pythia-1.4B's shape (hidden 2048, 24 layers, 16 heads, intermediate 8192, vocab 50304, 25%
  rotary, parallel residual); 2 rows of 128 tokens; 3 random patterns removing 6 of 24 blocks
  (level 0.275, the middle Pythia-1.4B level of workflow/configs/pythia.yaml).

For each it prints seconds per candidate, the ratio, the FLOP rate each way (2 * N * tokens, N =
parameters in matmuls: every block the path actually runs plus the output head), and the largest
relative difference between the two paths' perplexities. Timings exclude model construction and
follow one warm-up pass. fp32, ``torch.set_num_threads(--threads)``.

It ends with the FLOPs of a whole EvoP search on Pythia-1.4B and the time they take on one H100 at
an assumed MFU (``--mfu``, default 40% of ``--peak-tflops`` 989, the dense bf16 peak). With CUDA
visible it measures the batched path on the GPU instead (bf16, 16 rows of 2,048 tokens), prints the
MFU it reached and estimates from that.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import platform
import random
import time

import torch

from prunemem.prune import search
from prunemem.prune.calibrated import SkipBlock, calibration_loss


def gpt_neox(hidden: int, layers: int, heads: int, vocab: int, context: int, seed: int = 0, dtype=torch.float32,
             device: str = "cpu"):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                           intermediate_size=4 * hidden, max_position_embeddings=context, rotary_pct=0.25,
                           use_parallel_residual=True, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
                           hidden_dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(seed)
    with torch.device(device):
        model = GPTNeoXForCausalLM(config).to(dtype)
    return model.eval()


def matmul_params(config, blocks: int | None = None) -> int:
    """Parameters in matmuls of ``blocks`` blocks (default all) plus the output head (not the input embedding)."""
    h = config.hidden_size
    per_block = 4 * h * h + 2 * h * config.intermediate_size
    return (config.num_hidden_layers if blocks is None else blocks) * per_block + config.vocab_size * h


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn):
    _sync()
    start = time.perf_counter()
    result = fn()
    _sync()
    return result, time.perf_counter() - start


@torch.no_grad()
def one_at_a_time(model, calibration: torch.Tensor, patterns: list[tuple], granularity: str) -> list[float]:
    """Perplexity of each pattern with its units physically removed, then restored."""
    layers = model.gpt_neox.layers
    out = []
    for pattern in patterns:
        if granularity == "block":
            originals = {b: layers[b] for b in pattern}
            for b in pattern:
                layers[b] = SkipBlock()
        else:
            originals = {(b, s): getattr(layers[b], s) for b, s in search.removed_sublayers(pattern, granularity)}
            search.skip_sublayers(model, [f"{b}.{s}" for b, s in originals])
        out.append(math.exp(calibration_loss(model, calibration)))
        for key, module in originals.items():
            if granularity == "block":
                layers[key] = module
            else:
                setattr(layers[key[0]], key[1], module)
    return out


def compare(name: str, model, calibration: torch.Tensor, patterns: list[tuple], granularity: str,
            batch_rows: int, repeats: int = 1) -> dict:
    """Time both paths on the same patterns (the best of ``repeats``), the batched one on a fresh Evaluator
    each time (no cache)."""
    warm = calibration[:1, :8].to(next(model.parameters()).device)
    with torch.no_grad():
        model(input_ids=warm)
    batched_s = single_s = math.inf
    for _ in range(repeats):
        evaluator = search.Evaluator(model, calibration, granularity, batch_rows=batch_rows)
        scores, took = _timed(lambda: evaluator(patterns))
        batched_s = min(batched_s, took)
        ppl, took = _timed(lambda: one_at_a_time(model, calibration, patterns, granularity))
        single_s = min(single_s, took)
    n_blocks = len(model.gpt_neox.layers)
    tokens = calibration.numel()

    def computed_blocks(pattern) -> int:  # the batched path skips a block only for rows that remove all of it
        removed = set(search.removed_sublayers(pattern, granularity))
        return n_blocks - sum((b, "attention") in removed and (b, "mlp") in removed for b in range(n_blocks))

    batched_flops = sum(2 * matmul_params(model.config, computed_blocks(p)) * tokens for p in patterns) / len(patterns)
    if granularity == "block":
        kept = [n_blocks - len(p) for p in patterns]
        single_flops = sum(2 * matmul_params(model.config, k) * tokens for k in kept) / len(patterns)
    else:  # a removed attention is ~1/3 of a block's matmul parameters, an MLP ~2/3
        h, inter = model.config.hidden_size, model.config.intermediate_size
        cut = [sum(4 * h * h if sub == "attention" else 2 * h * inter
                   for _, sub in search.removed_sublayers(p, granularity)) for p in patterns]
        single_flops = sum(2 * (matmul_params(model.config) - c) * tokens for c in cut) / len(patterns)
    diff = max(abs(s.perplexity / p - 1) for s, p in zip(scores, ppl))
    return {"config": name, "granularity": granularity, "candidates": len(patterns),
            "rows": f"{calibration.shape[0]} × {calibration.shape[1]}", "batch_rows": batch_rows,
            "batched_s": batched_s / len(patterns), "single_s": single_s / len(patterns),
            "batched_gflops": batched_flops / (batched_s / len(patterns)) / 1e9,
            "single_gflops": single_flops / (single_s / len(patterns)) / 1e9,
            "batched_flops": batched_flops, "rel_diff": diff, "ppl": [s.perplexity for s in scores]}


def random_patterns(n_units: int, n_remove: int, count: int, seed: int) -> list[tuple]:
    rng = random.Random(seed)
    out: list[tuple] = []
    while len(out) < count:
        pattern = search.random_pattern(n_units, n_remove, rng)
        if pattern not in out:
            out.append(pattern)
    return out


def print_table(rows: list[dict]) -> None:
    print("| config | granularity | candidates | rows × tokens | batch rows | batched s/cand. | one-at-a-time s/cand. "
          "| one-at-a-time / batched | batched GFLOP/s | one-at-a-time GFLOP/s | max rel. ppl diff |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['config']} | {r['granularity']} | {r['candidates']} | {r['rows']} | {r['batch_rows']} | "
              f"{r['batched_s']:.4g} | "
              f"{r['single_s']:.4g} | {r['single_s'] / r['batched_s']:.2f}× | {r['batched_gflops']:.1f} | "
              f"{r['single_gflops']:.1f} | {r['rel_diff']:.1e} |")


def pythia_1_4b():
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(vocab_size=50304, hidden_size=2048, num_hidden_layers=24, num_attention_heads=16,
                         intermediate_size=8192)


def search_estimate(args, rate_flops: float, rate_label: str) -> None:
    """FLOPs and time of one EvoP search on Pythia-1.4B at block granularity."""
    config = pythia_1_4b()
    n = matmul_params(config)
    blocks_only = n - config.vocab_size * config.hidden_size
    removed = search.removed_count(args.level, config.num_hidden_layers)
    skipped = removed * blocks_only / config.num_hidden_layers  # what one-at-a-time scoring would not compute
    evaluations = args.population * args.generations  # the bound cluster.py plans for
    unique = args.population + (args.generations - 1) * (args.population - args.elite)  # elites come from the cache
    # evop-mem's search split: score_batch runs max(k) + suffix - 1 positions through the blocks, the head on suffix
    window = args.k + args.suffix
    split = args.search_windows * (2 * blocks_only * (window - 1) + 2 * config.vocab_size * config.hidden_size
                                   * args.suffix)
    print(f"\nEvoP search on Pythia-1.4B (N = {n / 1e9:.3f} B matmul parameters, block granularity; "
          f"{evaluations} candidate evaluations = population {args.population} × {args.generations} generations, "
          f"of which at most {unique} are new with elite {args.elite}; attention-score FLOPs (4 * h * T / 2 per "
          f"token and layer, causal) not counted: +{100 * 4 * 24 * 2048 * 1024 / (2 * n):.0f}% at 2,048 tokens):")
    print(f"| calibration | method | FLOPs per candidate | search FLOPs ({evaluations} cand.) | {rate_label} | "
          f"at 25% MFU (cluster.py) | removed blocks skipped ({removed} of 24, level {args.level:g}), "
          f"{rate_label} |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for rows, tokens, note in ((128, 2048, "pythia-evop.yaml"), (32, 512, "smaller set")):
        calib = 2 * n * rows * tokens
        calib_skip = 2 * (n - skipped) * rows * tokens
        split_skip = split - args.search_windows * 2 * skipped * (window - 1)
        for method, per, per_skip in (("evop", calib, calib_skip),
                                      ("evop-mem", calib + split, calib_skip + split_skip)):
            total = per * evaluations
            print(f"| {rows} × {tokens} ({note}) | {method} | {per:.3g} | {total:.3g} | "
                  f"{total / rate_flops / 60:.1f} min | {total / (0.25 * args.peak_tflops * 1e12) / 60:.1f} min | "
                  f"{per_skip * evaluations / rate_flops / 60:.1f} min |")
    print(f"evop-mem's split: {args.search_windows} windows of k {args.k} + suffix {args.suffix} tokens "
          f"({split:.3g} FLOPs per candidate).")


def measure_gpu(device: str, shape=(2048, 24, 16, 50304), rows: int = 16, tokens: int = 2048) -> dict:
    """Both paths on a Pythia-1.4B-shaped model in bf16 on ``device``: 16 rows of 2,048 tokens, 4 candidates
    removing a quarter of the blocks, one 16-row pass at a time (pythia-evop.yaml's batch_size)."""
    hidden, layers, heads, vocab = shape
    name = torch.cuda.get_device_name() if device == "cuda" else device
    model = gpt_neox(hidden, layers, heads, vocab, tokens, dtype=torch.bfloat16, device=device)
    calibration = torch.randint(0, vocab, (rows, tokens), generator=torch.Generator().manual_seed(1)).to(device)
    patterns = random_patterns(layers, layers // 4, 4, seed=1)
    return compare(f"Pythia-1.4B shape on {name}, bf16", model, calibration, patterns, "block", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-large", action="store_true", help="only the embedded-size config")
    parser.add_argument("--large-rows", type=int, default=2)
    parser.add_argument("--large-tokens", type=int, default=128)
    parser.add_argument("--large-candidates", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="H100 SXM dense bf16")
    parser.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOP utilisation on the GPU")
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--generations", type=int, default=20)
    parser.add_argument("--elite", type=int, default=2)
    parser.add_argument("--search-windows", type=int, default=500, help="evop-mem's search split (pythia-evop.yaml)")
    parser.add_argument("--k", type=int, default=500, help="max(samples.k) of pythia.yaml")
    parser.add_argument("--suffix", type=int, default=50)
    parser.add_argument("--level", type=float, default=0.275, help="the Pythia-1.4B level of the estimate")
    parser.add_argument("--repeats", type=int, default=2, help="timings of the small config: best of this many")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads, fp32 on CPU; load average {load:.2f} at start")

    rows = []
    gen = torch.Generator().manual_seed(0)
    model = gpt_neox(256, 4, 4, 4096, 160)
    calibration = torch.randint(0, 4096, (32, 128), generator=gen)
    blocks = list(itertools.combinations(range(4), 2))
    for batch_rows in (64, 8):  # 64 = params.yaml's prune.evop.batch_size; 8 = calibration_loss's batches
        rows.append(compare("embedded (4 × 256)", model, calibration, blocks, "block", batch_rows, args.repeats))
    rows.append(compare("embedded (4 × 256)", model, calibration, random_patterns(8, 4, 16, seed=0), "sublayer", 64,
                        args.repeats))
    del model

    if not args.skip_large:
        start = time.perf_counter()
        model = gpt_neox(2048, 24, 16, 50304, 2048)
        print(f"Pythia-1.4B-shaped model built in {time.perf_counter() - start:.0f} s "
              f"({sum(p.numel() for p in model.parameters()) / 1e9:.3f} B parameters)")
        calibration = torch.randint(0, 50304, (args.large_rows, args.large_tokens), generator=gen)
        patterns = random_patterns(24, search.removed_count(0.275, 24), args.large_candidates, seed=0)
        rows.append(compare("Pythia-1.4B shape", model, calibration, patterns, "block", 64))
        del model
    print()
    print_table(rows)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")

    if torch.cuda.is_available():
        gpu = measure_gpu("cuda")
        print_table([gpu])
        rate = gpu["batched_gflops"] * 1e9
        print(f"MFU of the batched path: {100 * rate / (args.peak_tflops * 1e12):.1f}% of {args.peak_tflops:g} TFLOP/s")
        search_estimate(args, rate, f"at the measured {rate / 1e12:.0f} TFLOP/s")
    else:
        search_estimate(args, args.mfu * args.peak_tflops * 1e12,
                        f"H100 at {100 * args.mfu:.0f}% MFU ({args.mfu * args.peak_tflops:.0f} TFLOP/s)")
        cpu = rows[-1]["batched_gflops"] * 1e9  # the Pythia-1.4B row unless --skip-large
        total = 2 * matmul_params(pythia_1_4b()) * 128 * 2048 * args.population * args.generations
        print(f"On this CPU at the measured {cpu / 1e9:.0f} GFLOP/s ({rows[-1]['config']}, batched) the evop search "
              f"(128 × 2,048) would take "
              f"{total / cpu / 86400:.0f} days: not an option.")


if __name__ == "__main__":
    main()
