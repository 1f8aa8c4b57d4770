"""Time one localization mask per method (``prunemem.prune.localize``) on random weights of a given shape.

    python bench/localize.py                                    # the embedded default's shape, every method, CPU
    python bench/localize.py --methods zeroout --shape pythia-1.4b --device cuda --dtype bfloat16

The cost of a localization does not depend on what the weights memorized, only on the shape, the
forget set (``--forget`` windows of k + suffix tokens), the retain signal (calibration windows and
search-split members) and the step budgets in params (``prune.localize``), so random weights time
it faithfully. Sizes default to params.yaml's; prints one JSON line per method (seconds, units).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
SHAPES = {  # hidden, layers, heads, vocab, context
    "embedded": None,  # from params.yaml embedded.architecture
    "pythia-160m": (768, 12, 12, 50304, 2048),
    "pythia-1.4b": (2048, 24, 16, 50304, 2048),
}


def model_of(shape: str, params: dict):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    if SHAPES[shape] is None:
        arch = params["embedded"]["architecture"]
        hidden, layers, heads = arch["hidden_size"], arch["num_layers"], arch["num_heads"]
        vocab, ctx = params["embedded"]["tokenizer"]["vocab_size"], arch["seq_len"]
    else:
        hidden, layers, heads, vocab, ctx = SHAPES[shape]
    config = GPTNeoXConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                           intermediate_size=4 * hidden, max_position_embeddings=ctx, rotary_pct=0.25,
                           tie_word_embeddings=False)
    torch.manual_seed(0)
    return GPTNeoXForCausalLM(config).eval(), vocab


def main(argv=None) -> int:
    from prunemem.prune import localize

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--shape", default="embedded", choices=sorted(SHAPES))
    ap.add_argument("--methods", default=",".join(m for m in localize.METHODS if m != "random"))
    ap.add_argument("--forget", type=int, default=None, help="forget windows (default prune.localize.forget.size)")
    ap.add_argument("--level", type=float, default=0.01)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    params = yaml.safe_load(Path(args.params).read_text())
    spec, samples = params["prune"]["localize"], params["samples"]
    torch.set_num_threads(args.threads)
    model, vocab = model_of(args.shape, params)
    model = model.to(device=args.device, dtype=getattr(torch, args.dtype))
    k, suffix = max(samples["k"]), samples["suffix_tokens"]
    gen = torch.Generator().manual_seed(1)
    n_forget = args.forget or spec["forget"].get("size", 8)
    calib = samples["calibration"]
    sets = localize.Sets([f"f{i}" for i in range(n_forget)], [],
                         torch.randint(vocab, (n_forget, k + suffix), generator=gen).to(args.device),
                         torch.randint(vocab, (calib["sequences"], calib["tokens"]), generator=gen).to(args.device),
                         torch.randint(vocab, (samples.get("search_members", 0), k + suffix),
                                       generator=gen).to(args.device))
    for method in args.methods.split(","):
        start, cpu = time.perf_counter(), time.process_time()
        chosen, _, record = localize.localize(method, model, sets, args.level, k, suffix, spec, 0)
        if args.device == "cuda":
            torch.cuda.synchronize()
        print(json.dumps({"method": method, "shape": args.shape, "device": args.device, "dtype": args.dtype,
                          "threads": args.threads, "seconds": round(time.perf_counter() - start, 2),
                          "cpu_seconds": round(time.process_time() - cpu, 2),
                          "units": record["units"], "chosen": len(chosen), "forget": n_forget,
                          "steps": spec.get("steps"), "ig_steps": spec.get("ig_steps")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
