"""Teacher-forced extraction against greedy ``generate()``: same model, same samples, same run.

    .venv/bin/python bench/memorization.py --study .                       # the embedded model, CPU fp32
    python bench/memorization.py --config pythia-1.4b --device cuda --dtype bfloat16 --samples 512
    python bench/memorization.py --config pythia-12b  --device cuda --dtype bfloat16 --samples 256

With ``--study`` it scores the members and non-members of a built study (``data/samples/{model}``)
with the trained checkpoint, so both verdicts occur; with ``--config`` it builds a randomly
initialised Pythia-shaped model (speed does not depend on weight values) and random tokens.

For each k it prints: samples/s of each path, the speed ratio, per-sample agreement, the
achieved FLOP/s of teacher forcing (2 * N * tokens, N = parameters that take part in matmuls,
i.e. all but the input embedding) and, on CUDA, the MFU against ``--peak-tflops`` (H100 SXM
dense bf16: 989). It ends with the predicted GPU-hours of the paper's grid from the measured
throughput, for teacher forcing and for a generate()-based evaluation.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from prunemem.evaluate.memorization import score_windows

# (hidden, layers, heads) of the Pythia suite; intermediate = 4 * hidden, vocab 50304, 25% rotary
PYTHIA = {"pythia-160m": (768, 12, 12), "pythia-410m": (1024, 24, 16), "pythia-1.4b": (2048, 24, 16),
          "pythia-2.8b": (2560, 32, 32), "pythia-6.9b": (4096, 32, 32), "pythia-12b": (5120, 36, 40)}


def pythia_config(name: str):
    from transformers import GPTNeoXConfig

    hidden, layers, heads = PYTHIA[name]
    return GPTNeoXConfig(vocab_size=50304, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         intermediate_size=4 * hidden, max_position_embeddings=2048, rotary_pct=0.25,
                         use_parallel_residual=True, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)


def matmul_params(config) -> int:
    """Parameters that take part in matmuls: the blocks and the output head (not the input embedding)."""
    h, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    per_block = 4 * h * h + 2 * h * config.intermediate_size
    return layers * per_block + vocab * h


@torch.inference_mode()
def generate_verdicts(model, windows: torch.Tensor, k: int, suffix: int, batch: int) -> torch.Tensor:
    """Batched greedy ``generate()``: every prompt has length k, so no padding; never stops early."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(windows), batch):
        w = windows[start : start + batch, -(k + suffix):].to(device)
        prompt = w[:, :k]
        gen = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=suffix,
                             do_sample=False, pad_token_id=0, eos_token_id=[])  # as greedy_extracted
        out.append((gen[:, k:] == w[:, k:]).all(dim=1).cpu())
    return torch.cat(out)


def _timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - t0


def load(args):
    if args.study:
        import polars as pl

        from prunemem.checkpoints import load_model

        study = Path(args.study)
        model = load_model(study / "data/checkpoints" / args.model, dtype=getattr(torch, args.dtype),
                           device=args.device)
        frames = [pl.read_parquet(study / "data/samples" / args.model / f) for f in ("members.parquet",
                                                                                     "nonmembers.parquet")]
        windows = torch.tensor(pl.concat(frames)["tokens"].to_list(), dtype=torch.long)[: args.samples]
        return model, windows
    from transformers import GPTNeoXForCausalLM

    torch.manual_seed(0)
    config = pythia_config(args.config)
    with torch.device(args.device):
        model = GPTNeoXForCausalLM(config).to(getattr(torch, args.dtype)).eval()
    windows = torch.randint(1, config.vocab_size, (args.samples, max(args.k) + args.suffix),
                            generator=torch.Generator().manual_seed(0))
    return model, windows


def paper_grid_hours(flops_per_s: float, ratio: float, args) -> None:
    """GPU-hours of the paper grid on Pythia 160M-12B from a throughput measured on one model.

    Assumes the same MFU for every size (bigger models usually do better), ``--grid-variants``
    variants per model (dense included), members plus as many non-members per k, and
    ``--grid-ppl-tokens`` perplexity tokens per variant scored with stride = window.
    """
    tokens = sum(k + 50 - 1 for k in (50, 100, 200, 500)) * 2 * args.grid_samples + args.grid_ppl_tokens
    total = sum(2 * matmul_params(pythia_config(name)) * tokens for name in PYTHIA) * args.grid_variants
    hours = total / flops_per_s / 3600
    print(f"paper grid: {total:.3g} FLOPs -> {hours:.1f} h with teacher forcing at the measured rate, "
          f"~{hours * ratio:.1f} h with generate() at the measured ratio; "
          f"{total / (0.5 * args.peak_tflops * 1e12) / 3600:.1f} h at 50% MFU of {args.peak_tflops:g} TFLOP/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", help="a built study directory (uses its checkpoint and samples)")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--config", choices=sorted(PYTHIA), default="pythia-160m")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--k", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--suffix", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--grid-samples", type=int, default=5000)
    parser.add_argument("--grid-variants", type=int, default=21)
    parser.add_argument("--grid-ppl-tokens", type=int, default=1_000_000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, windows = load(args)
    n_matmul = matmul_params(model.config)
    where = f"{args.device} {args.dtype}, {torch.get_num_threads()} threads" if args.device == "cpu" else \
        f"{torch.cuda.get_device_name()} {args.dtype}"
    print(f"model: {args.study or args.config} ({n_matmul / 1e6:.1f}M matmul params), {len(windows)} samples, "
          f"suffix {args.suffix}, batch {args.batch}, {where}")
    print("| k | teacher-forced samples/s | generate() samples/s | speed ratio | agreement | TF TFLOP/s | MFU |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    worst_ratio, work, seconds = float("inf"), 0.0, 0.0
    for k in args.k:
        score_windows(model, windows[: args.batch], k, args.suffix, args.batch)  # warm-up
        tf, tf_s = _timed(lambda: score_windows(model, windows, k, args.suffix, args.batch)["extracted"])
        gen, gen_s = _timed(lambda: generate_verdicts(model, windows, k, args.suffix, args.batch))
        agree = float((tf == gen).float().mean())
        flops = 2 * n_matmul * (k + args.suffix - 1) * len(windows) / tf_s
        mfu = f"{100 * flops / (args.peak_tflops * 1e12):.1f}%" if args.device == "cuda" else "n/a (CPU)"
        print(f"| {k} | {len(windows) / tf_s:.1f} | {len(windows) / gen_s:.1f} | {gen_s / tf_s:.2f}x | "
              f"{100 * agree:.1f}% ({int(tf.sum())} extracted) | {flops / 1e12:.3f} | {mfu} |")
        worst_ratio, work, seconds = min(worst_ratio, gen_s / tf_s), work + flops * tf_s, seconds + tf_s
    paper_grid_hours(work / seconds, worst_ratio, args)


if __name__ == "__main__":
    main()
