"""Real speed of width pruning: a width-pruned (physically shrunk) model against the dense one.

    python bench/width.py                                   # embedded and Pythia-160M shapes, CPU, 2 threads
    python bench/width.py --shape 1.4b --device cuda        # on the device, when one is lent
    python bench/width.py --scope both --levels 0.25 0.5    # heads and neurons

For each shape (randomly initialised: timings do not depend on weight values) and each level
(the share of MLP neurons, or of heads and neurons, removed from every block by L1 importance,
``prunemem.prune.importance``, then ``prunemem.prune.width.shrink``), it measures

- the parameter count, and the share of the block (prunable) parameters removed;
- the latency of one forward over 512 tokens at batch 1 and 8 (``torch.no_grad``, median of
  ``--repeats`` after one warm-up; ``--threads`` CPU threads); dense and pruned models take turns
  within each repeat, so drifting load on a shared machine hits them alike;
- the speed-up bound: multiply-adds per token, dense over pruned (``macs_per_token``);
- the peak memory of that forward: ``torch.cuda.max_memory_allocated`` above the start on a GPU,
  the tracked tensor bytes (``prunemem.blockwise.LiveBytes``) on the CPU, plus the weights.

It prints one markdown table and writes ``width.json`` and ``width.md`` under ``--out``. On a
shared machine the latencies are noisy: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from gpu import build, measured, sync  # noqa: E402  (bench/gpu.py: one model builder, one meter)

# hidden, layers, heads, vocab: the embedded default (params.yaml embedded.architecture), the previous
# embedded model (bench/README.md's width figures were measured on it) and Pythia
SHAPES = {"embedded": (192, 4, 3, 512), "embedded-256": (256, 4, 4, 4096), "160m": (768, 12, 12, 50304),
          "410m": (1024, 24, 16, 50304),
          "1.4b": (2048, 24, 16, 50304)}
SCOPES = {"mlp": ("neuron",), "attention": ("head",), "both": ("head", "neuron")}


def config_of(shape: str, tokens: int):
    from transformers import GPTNeoXConfig

    hidden, layers, heads, vocab = SHAPES[shape]
    return GPTNeoXConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         intermediate_size=4 * hidden, max_position_embeddings=max(2048, tokens), rotary_pct=0.25,
                         use_parallel_residual=True, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
                         pad_token_id=0)


def pruned(model, level: float, kinds: tuple[str, ...]):
    from prunemem.prune import importance, width

    if level == 0:
        return model
    units = importance.choose(model, importance.collect(model, None), "l1", "uniform", level, kinds)
    return width.shrink(copy.deepcopy(model), units)


def timed_forwards(models: list, batch: int, tokens: int, repeats: int, device: str) -> list[dict]:
    """Latency and peak memory of each model's forward. The models take turns within every repeat, so a
    change in the machine's load hits dense and pruned alike (a shared machine drifts over minutes)."""
    ids = torch.randint(1, models[0].config.vocab_size, (batch, tokens), generator=torch.Generator().manual_seed(0))
    ids = ids.to(device)
    times: list[list[float]] = [[] for _ in models]
    out = []
    with torch.no_grad():
        for model in models:
            model(input_ids=ids)  # warm-up
        for _ in range(repeats):
            for i, model in enumerate(models):
                sync(device)
                t0 = time.perf_counter()
                model(input_ids=ids)
                sync(device)
                times[i].append(time.perf_counter() - t0)
        for i, model in enumerate(models):
            with measured(device) as peak:
                model(input_ids=ids)
            weights = sum(p.numel() * p.element_size() for p in model.parameters())
            out.append({"seconds": statistics.median(times[i]), "all_seconds": times[i],
                        "peak_bytes": peak["peak_bytes"] + weights, "activation_peak_bytes": peak["peak_bytes"]})
    return out


def macs_per_token(model, tokens: int) -> int:
    """Multiply-adds per token of a forward: every Linear (unembedding included) plus causal attention's
    QK^T and AV (on average tokens / 2 keys per query, over the kept heads). The bound on the speed-up."""
    linears = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    attention = sum(2 * (tokens // 2) * layer.attention.query_key_value.out_features // 3
                    for layer in model.gpt_neox.layers if hasattr(layer.attention, "query_key_value"))
    return linears + attention


def block_params(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if ".layers." in n)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", action="append", choices=sorted(SHAPES), help="repeatable (default: embedded, 160m)")
    ap.add_argument("--levels", type=float, nargs="+", default=[0.25, 0.5])
    ap.add_argument("--scope", choices=sorted(SCOPES), default="mlp")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    rows = []
    for shape in args.shape or ["embedded", "160m"]:
        dense = build(config_of(shape, args.tokens), args.device, dtype)
        levels = [0.0, *args.levels]
        models = [pruned(dense, level, SCOPES[args.scope]) for level in levels]
        for batch in args.batches:
            figures = timed_forwards(models, batch, args.tokens, args.repeats, args.device)
            for level, model, fig in zip(levels, models, figures):
                rows.append({"shape": shape, "scope": args.scope, "level": level, "batch": batch,
                             "params": sum(p.numel() for p in model.parameters()),
                             "block_params_removed": 1 - block_params(model) / block_params(dense),
                             **fig, "speedup": figures[0]["seconds"] / fig["seconds"],
                             "macs_speedup": macs_per_token(models[0], args.tokens) / macs_per_token(model, args.tokens),
                             "loadavg_1min": os.getloadavg()[0]})
                r = rows[-1]
                print(f"{shape} level {level:g} batch {batch}: {r['seconds'] * 1e3:.1f} ms "
                      f"(x{r['speedup']:.2f}), {r['params']:,} params, peak {r['peak_bytes'] / 2**20:.0f} MiB, "
                      f"load {r['loadavg_1min']:.1f}", flush=True)
        del models, dense
    table = ["| shape | removed (scope) | block params removed | params | batch | forward ms | speed-up | "
             "MACs bound | peak MiB | load avg |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['shape']} | {r['level']:.0%} ({r['scope']}) | {r['block_params_removed']:.1%} | "
                     f"{r['params']:,} | {r['batch']} | {r['seconds'] * 1e3:.1f} | {r['speedup']:.2f}x | {r['macs_speedup']:.2f}x | "
                     f"{r['peak_bytes'] / 2**20:.0f} | {r['loadavg_1min']:.1f} |")
    md = "\n".join(table)
    print(md)
    result = {"device": args.device, "dtype": args.dtype, "threads": args.threads, "tokens": args.tokens,
              "cpu_count": os.cpu_count(), "rows": rows}
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "width.json").write_text(json.dumps(result, indent=1))
        (args.out / "width.md").write_text(md + "\n")
    return result


if __name__ == "__main__":
    main()
