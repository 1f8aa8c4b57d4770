"""Export a compressed variant as a standard Hugging Face checkpoint that any tool can load.

    prunemem export --model tiny --method global --level 0.5 --out exported/tiny-global-0.5

The variant is built exactly as evaluation builds it (``prunemem.evaluate.run.load_variant``: the
checkpoint, then its mask or transform, each verified against its recorded hashes), so a variant
whose artifact fails verification is refused before anything is written. What our own modules
do is then written in the architecture's standard form, so ``from_pretrained(out)`` needs
nothing of prunemem and gives the very logits we evaluated:

- masks: the pruned weights are zeros (SparseGPT's updated weights included);
- removed blocks (SLEB, EvoP at block granularity): dropped, and ``num_hidden_layers`` lowered.
  A removed block is the identity, so dropping it is exact, and the file is really smaller;
- removed sublayers (EvoP): a standard attention or MLP module whose weights and biases are all
  zero, which adds exactly nothing to the residual stream;
- removed heads and neurons (width pruning, AdaPruner): ``prunemem.prune.width.standard_form``,
  zero heads and the MLPs padded to the widest block;
- transforms (quantization, low rank): the dequantized or refactored weights, in the export
  dtype. The file is not smaller than dense: a standard checkpoint has no int4 tensor.

Beside the weights, config and tokenizer: ``provenance.json`` (the variant's artifact hashes,
the plan's params digest of the job that made it, the environment) and a ``README.md`` model card
that states the same and the variant's evaluated figures when its evaluation exists.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from prunemem.errors import PrunememError
from prunemem.plan import Plan
from prunemem.provenance import read_json, record, sha256_file, write_json

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@torch.no_grad()
def standard_form(model) -> dict[str, list]:
    """Replace prunemem's skip modules by the architecture's own: returns what was changed.

    Removed blocks are dropped (attention ``layer_idx`` renumbered so the KV cache stays dense,
    per-layer ``layer_types`` kept in step); removed sublayers become the family's own attention or
    MLP module (taken from a freshly built block of the layer map's class) with every weight and
    bias zero, which adds exactly nothing to the residual stream.
    """
    from prunemem import arch
    from prunemem.prune.calibrated import SkipBlock
    from prunemem.prune.search import _ZeroAttention, _ZeroMLP

    family, layers = arch.of(model), arch.blocks(model)
    dropped = [i for i, layer in enumerate(layers) if isinstance(layer, SkipBlock)]
    block_type = next((type(layer) for layer in layers if not isinstance(layer, SkipBlock)), None)
    zeroed = []
    for i, layer in enumerate(layers):
        if isinstance(layer, SkipBlock):
            continue
        for sub, zero_type in (("attention", _ZeroAttention), ("mlp", _ZeroMLP)):
            if isinstance(arch.sublayer(layer, family, sub), zero_type):
                module = arch.sublayer(block_type(model.config, i), family, sub)
                for p in module.parameters():
                    p.zero_()
                ref = next(model.parameters())
                arch.set_sublayer(layer, family, sub, module.to(device=ref.device, dtype=ref.dtype))
                zeroed.append(f"{i}.{sub}")
    widths = {}
    if getattr(model.config, "width_per_block", None) is not None:  # width pruning shrank the matrices
        from prunemem.prune import width

        widths = width.standard_form(model)
    if dropped:
        if len(dropped) == len(layers):
            raise PrunememError("export: every block of the variant is removed; a standard checkpoint needs one")
        kept = [layer for i, layer in enumerate(layers) if i not in dropped]
        for new_index, layer in enumerate(kept):
            arch.sublayer(layer, family, "attention").layer_idx = new_index
        arch.set_blocks(model, kept)
        if isinstance(getattr(model.config, "layer_types", None), list):  # Qwen3's per-layer attention kinds
            model.config.layer_types = [t for i, t in enumerate(model.config.layer_types) if i not in dropped]
        model.config.num_hidden_layers = len(kept)
    return {"dropped_blocks": dropped, "zeroed_sublayers": zeroed, **({"width": widths} if widths else {})}


def _card(model_name: str, method: str, level: str, prov: dict, summary: dict | None) -> str:
    lines = [f"# {model_name} / {method} / {level}", "",
             f"A compressed variant exported by prunemem {prov['environment']['prunemem']} "
             f"(`prunemem export --model {model_name} --method {method} --level {level}`). "
             "It loads with `transformers` alone (`AutoModelForCausalLM.from_pretrained`) and gives the logits "
             "prunemem evaluated.", "",
             "| what | value |", "|---|---|",
             f"| base checkpoint sha256 | `{prov['checkpoint_sha256']}` |"]
    lines += [f"| {kind} artifact sha256 | `{digest}` |" for kind, digest in prov["inputs"].items()]
    lines += [f"| params digest of the job that made it | `{prov['variant_params_digest']}` |",
              f"| dropped blocks | {prov['standard_form']['dropped_blocks'] or 'none'} |",
              f"| zeroed sublayers | {prov['standard_form']['zeroed_sublayers'] or 'none'} |",
              f"| dtype | {prov['dtype']} |"]
    if summary is not None:
        lines += [f"| perplexity (prunemem's sliding windows) | {summary['perplexity']:.4f} |"]
        lines += [f"| extraction at k={r['k']} | {r['n_extracted']}/{r['n_samples']} |" for r in summary["per_k"]]
    lines += ["", "Provenance in full: `provenance.json`."]
    return "\n".join(lines) + "\n"


def export_variant(plan: Plan, model_name: str, method: str, level: str, out: str | Path,
                   dtype: str = "float32") -> Path:
    """Write the variant to ``out`` (a new directory, written whole or not at all)."""
    from prunemem.checkpoints import load_tokenizer
    from prunemem.provenance import AtomicDir
    from prunemem.evaluate.run import load_variant

    if dtype not in DTYPES:
        raise PrunememError(f"--dtype: {dtype!r}; allowed: {', '.join(DTYPES)}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise PrunememError(f"--out: {out} exists and is not empty; allowed: a new or empty directory")
    artifact = plan.variant_artifact(model_name, method, level)
    if artifact is not None and not Path(artifact).exists():
        raise PrunememError(f"{artifact}: the variant's artifact is missing; build it first "
                            f"(`snakemake {artifact}` or `prunemem {plan.kind(method)} --model {model_name} "
                            f"--method {method} --level {level}`)")
    model, _, inputs, _ = load_variant(plan, model_name, method, level, "cpu", DTYPES[dtype])
    changed = standard_form(model)
    summary_path = plan.metrics_dir(model_name, method, level) / "summary.json"
    summary = read_json(summary_path, "evaluation summary") if summary_path.is_file() else None
    ckpt = plan.checkpoint_dir(model_name)
    kind = plan.kind(method)
    variant_digest = plan.stage_digest(kind, model_name, method, level) if kind in ("mask", "transform") else \
        plan.stage_digest("checkpoint", model_name)
    with AtomicDir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        load_tokenizer(ckpt).save_pretrained(tmp)
        prov = record("export", inputs, {"model": model_name, "method": method, "level": level, "dtype": dtype})
        prov.update(checkpoint_sha256=model.prunemem_checkpoint_sha256, variant_params_digest=variant_digest,
                    standard_form=changed, dtype=dtype, weights_sha256=sha256_file(tmp / "model.safetensors"),
                    evaluation=None if summary is None else {"summary_sha256": sha256_file(summary_path),
                                                             "perplexity": summary["perplexity"]})
        write_json(tmp / "provenance.json", prov)
        (tmp / "README.md").write_text(_card(model_name, method, level, prov, summary), encoding="utf-8")
    log.info("exported %s %s %s to %s (%s)", model_name, method, level, out, json.dumps(changed))
    return out
