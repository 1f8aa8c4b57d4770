"""Benchmark: draw 5,000 member windows from a local 1 GB jsonl, streaming, in bounded memory.

    .venv/bin/python bench/sampling.py                 # 1 GB corpus in /tmp, 5,000 windows of 550 tokens
    .venv/bin/python bench/sampling.py --gb 0.1 --naive  # also the obvious alternative, on a small corpus

The corpus is synthetic English-like text (Zipf-distributed pseudo-words, log-normal document
lengths, about 10% of documents too short to qualify), written once to --corpus and reused.
The tokenizer is a byte-level BPE (the embedded recipe) trained on a slice of it; Pythia's own
tokenizer cannot be fetched offline and is of the same kind. Each measurement runs in a fresh
subprocess and reports wall time, CPU time and peak RSS (ru_maxrss of that child).

``--naive`` also times the obvious alternative: read every document into memory, tokenize them
all, keep those long enough, and ``random.sample`` 5,000.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # as the CLI runs it


def make_corpus(path: Path, gb: float, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlucmfwypvbgkjqxz"))
    vocab = ["".join(rng.choice(letters, size=rng.integers(1, 10))) for _ in range(20000)]
    ranks = np.arange(1, len(vocab) + 1)
    p = 1 / ranks / (1 / ranks).sum()
    pool = " ".join(np.array(vocab)[rng.choice(len(vocab), size=4_000_000, p=p)])  # ~20 MB of text
    target = int(gb * 1e9)
    tmp = path.with_suffix(".tmp")
    written = 0
    with open(tmp, "w") as fh:
        while written < target:
            lengths = np.clip(rng.lognormal(7.3, 1.0, size=10000), 20, 200_000).astype(int)
            starts = rng.integers(0, len(pool) - 200_000, size=10000)
            lines = "".join(json.dumps({"text": pool[s:s + n], "meta": {"pile_set_name": "Synthetic"}}) + "\n"
                            for s, n in zip(starts, lengths))
            fh.write(lines)
            written += len(lines)
    tmp.rename(path)


def tokenizer_dir(corpus: Path, out: Path) -> Path:
    if not (out / "tokenizer.json").is_file():
        from prunemem import embedded

        with open(corpus) as fh:
            texts = [json.loads(next(fh))["text"] for _ in range(2000)]
        embedded.train_tokenizer(texts, 8192).save_pretrained(out)
    return out


def run_streaming(corpus: Path, tok_dir: Path, n: int, window: int) -> dict:
    from prunemem.checkpoints import load_tokenizer
    from prunemem.data.sampling import WindowSelector, scan
    from prunemem.data.sources import LocalSource

    tok = load_tokenizer(tok_dir)
    sel = WindowSelector("members", n, window)
    scan(LocalSource({"kind": "local", "path": str(corpus), "text_field": "text"}, "bench"), 0, [sel], tok, "bench")
    return {"drawn": len(sel.items()), "read": sel.seen, "qualified_seen": sel.qualified}


def run_naive(corpus: Path, tok_dir: Path, n: int, window: int) -> dict:
    import random

    from prunemem.checkpoints import load_tokenizer

    tok = load_tokenizer(tok_dir)
    with open(corpus) as fh:
        texts = [json.loads(line)["text"] for line in fh]
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    long_enough = [x[:window] for x in ids if len(x) >= window]
    return {"drawn": len(random.Random(0).sample(long_enough, n)), "read": len(texts), "qualified_seen": len(long_enough)}


def child(kind: str, corpus: Path, tok_dir: Path, n: int, window: int) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    out = (run_streaming if kind == "streaming" else run_naive)(corpus, tok_dir, n, window)
    out.update(wall_s=round(time.perf_counter() - t0, 2), cpu_s=round(time.process_time() - c0, 2),
               peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--corpus", type=Path, default=None)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--window", type=int, default=550, help="max(k) + suffix = 500 + 50")
    ap.add_argument("--naive", action="store_true")
    ap.add_argument("--child", choices=["streaming", "naive"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    corpus = args.corpus or Path(f"/tmp/prunemem-bench-{args.gb:g}gb.jsonl")
    tok_dir = corpus.with_suffix(".tokenizer")
    if args.child:
        print(json.dumps(child(args.child, corpus, tok_dir, args.n, args.window)))
        return
    if not corpus.is_file():
        t = time.perf_counter()
        make_corpus(corpus, args.gb)
        print(f"wrote {corpus} ({corpus.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t:.0f} s")
    tokenizer_dir(corpus, tok_dir)
    print(f"corpus {corpus.stat().st_size / 1e9:.3f} GB, {os.cpu_count()} CPUs, n={args.n}, window={args.window}")
    for kind in ["streaming"] + (["naive"] if args.naive else []):
        cmd = [sys.executable, __file__, "--child", kind, "--corpus", str(corpus), "--n", str(args.n),
               "--window", str(args.window)]
        result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        print(f"{kind:9s} {json.dumps(result)}")


if __name__ == "__main__":
    main()
