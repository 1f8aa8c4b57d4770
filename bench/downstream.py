"""One timed lm-eval run, as the downstream stage runs it, at Pythia scale (issue 21's device target).

    python bench/downstream.py --shape 1.4b --device cuda --dtype bfloat16    # on the device (bench/gpu.sh)
    python bench/downstream.py --shape embedded --limit 8                     # the same code on the CPU, seconds

A randomly initialised GPT-NeoX of the shape (speed does not depend on the weights; accuracy
does, so none is reported) scores the embedded default's two held-out tasks
(``prunemem.downstream.local``: multiple choice and greedy generation) through lm-eval's
``simple_evaluate(model=HFLM(pretrained=<the model in memory>))``, the batch fitted to free
memory by ``prunemem.evaluate.run.fit_batch_size`` as the stage fits it. It writes one JSON
object, ``downstream.json`` under ``--out``: the shape, device, batch, documents and requests per
task, and the seconds of the run and of the model build.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from gpu import build, sync  # noqa: E402  (bench/gpu.py: one model builder)
from width import SHAPES, config_of  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1.4b")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--limit", type=int, default=200, help="documents per task")
    ap.add_argument("--context", type=int, default=2048, help="the model's max length (Pythia: 2048)")
    ap.add_argument("--max-batch", type=int, default=256)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args(argv)

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from prunemem.checkpoints import load_tokenizer
    from prunemem.downstream import local
    from prunemem.evaluate.run import fit_batch_size

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    dtype = getattr(torch, args.dtype) if args.device == "cuda" else torch.float32
    t0 = time.perf_counter()
    config = config_of(args.shape, args.context)
    model = build(config, args.device, dtype)
    sync(args.device)
    built = time.perf_counter() - t0
    tokenizer = load_tokenizer(REPO / "src" / "prunemem" / "resources" / "embedded-tiny")
    batch = fit_batch_size(config, args.context, args.context, dtype, args.device, args.max_batch)
    names = list(local.TASKS)
    with tempfile.TemporaryDirectory(prefix="bench-downstream-") as tmp:
        include, _ = local.include_dir(params, Path(tmp) / "tasks", cache_dir=Path(tmp) / "cache")
        manager = TaskManager(include_path=str(include), include_defaults=False)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch, max_length=args.context)
        sync(args.device)
        t0 = time.perf_counter()
        results = lm_eval.simple_evaluate(model=lm, tasks=names, limit=args.limit, task_manager=manager,
                                          log_samples=False, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                                          fewshot_random_seed=0)
        sync(args.device)
        seconds = time.perf_counter() - t0
    out = {"shape": args.shape, "params": sum(p.numel() for p in model.parameters()), "device": args.device,
           "dtype": str(dtype).removeprefix("torch."), "batch": batch, "limit": args.limit,
           "documents": {n: results["n-samples"][n]["effective"] for n in names},
           "seconds": round(seconds, 3), "build_seconds": round(built, 3),
           "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "downstream.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
