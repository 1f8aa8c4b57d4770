"""One evaluation job: a checkpoint, optionally masked, scored on its samples.

    prunemem evaluate --model tiny --method global --level 0.5
    prunemem evaluate --model tiny --method dense --level 0     # the unpruned baseline

Masks are applied, compression transforms recomputed and verified against their record.
Writes ``memorization.parquet`` (one row per sample x k) and ``summary.json`` (rates with
Wilson 95% intervals, perplexity, sparsity, provenance) to ``data/metrics/{model}/{method}/{level}/``.
"""

from __future__ import annotations

import logging

import polars as pl
import torch

from prunemem.checkpoints import checkpoint_hash, load_model
from prunemem.data.samples import samples_hash
from prunemem.evaluate.memorization import score_windows
from prunemem.evaluate.perplexity import perplexity
from prunemem.evaluate.stats import wilson
from prunemem.compress.run import apply_transform, calibration_tokens
from prunemem.errors import PrunememError
from prunemem.plan import Plan
from prunemem.prune import masks as mask_io
from prunemem.prune.targets import prunable
from prunemem.provenance import read_parquet, record, sha256_file, write_json, write_parquet
from prunemem.runtime import deterministic

log = logging.getLogger(__name__)


def sparsity(model: torch.nn.Module, mask: dict[str, torch.Tensor] | None) -> dict[str, float]:
    """Share of all prunable weights removed (achieved) and of the tensors the method touched (target).

    A mask covers every prunable tensor (SLEB's removed blocks included), so it is counted from
    the mask; transforms and the dense model are counted from the weights that are zero.
    """
    if mask:
        pruned = {n: int((~m).sum()) for n, m in mask.items()}
        touched = [n for n in pruned if pruned[n]]
        touched_total = sum(mask[n].numel() for n in touched)
        return {"achieved_sparsity": sum(pruned.values()) / sum(m.numel() for m in mask.values()),
                "target_sparsity": sum(pruned[n] for n in touched) / touched_total if touched_total else 0.0}
    params = dict(model.named_parameters())
    targets = [t.name for t in prunable(list(params))]
    achieved = sum(int((params[n] == 0).sum()) for n in targets) / sum(params[n].numel() for n in targets)
    return {"achieved_sparsity": achieved, "target_sparsity": achieved}


def evaluate(plan: Plan, model_name: str, method: str, level: str, progress=None) -> dict:
    cfg = plan.params
    deterministic(cfg["evaluate"]["threads"])
    ckpt_dir, samples_dir = plan.checkpoint_dir(model_name), plan.samples_dir(model_name)
    model = load_model(ckpt_dir)
    mask, inputs, compression = None, {}, 1.0
    artifact = plan.variant_artifact(model_name, method, level)
    if plan.kind(method) == "mask":
        mask, inputs["mask"] = mask_io.apply(model, artifact), sha256_file(artifact)
    elif plan.kind(method) == "transform":
        calibration = calibration_tokens(plan, model_name, plan.transform_spec(method, level))
        record_ = apply_transform(model, artifact, calibration)
        compression, inputs["transform"] = record_["compression"], sha256_file(artifact)
    sp = sparsity(model, mask)
    if mask is not None:
        compression = 1.0 - sp["achieved_sparsity"]

    members_file = samples_dir / "members.parquet"
    samples = pl.concat([read_parquet(members_file, "member samples"),
                         read_parquet(samples_dir / "nonmembers.parquet", "non-member samples")])
    if not samples["member"].any():  # rates over zero members would read as 0% extraction
        raise PrunememError(f"{members_file}: no member samples to evaluate")
    windows = torch.tensor(samples["tokens"].to_list(), dtype=torch.long)
    suffix, batch = cfg["samples"]["suffix_tokens"], cfg["evaluate"]["batch_size"]
    frames = []
    for k in plan.ks:
        scores = score_windows(model, windows, k, suffix, batch, progress=progress)
        frames.append(samples.select("sample_id", "kind", "copies", "member").with_columns(
            pl.lit(k, pl.Int32).alias("k"),
            **{name: pl.Series(v.numpy()) for name, v in scores.items()}))
        log.info("k=%d: %d/%d members extracted", k, int(scores["extracted"][torch.tensor(samples["member"].to_list())].sum()),
                 int(samples["member"].sum()))
    per_sample = pl.concat(frames)

    ppl_docs = read_parquet(samples_dir / "perplexity.parquet", "perplexity set")["tokens"].to_list()
    ppl_tokens = torch.tensor([t for doc in ppl_docs for t in doc])
    ppl, n_scored = perplexity(model, ppl_tokens, cfg["perplexity"]["window"], cfg["perplexity"]["stride"], progress)
    log.info("perplexity %.3f over %d tokens", ppl, n_scored)

    per_k = []
    for k in plan.ks:
        members = per_sample.filter((pl.col("k") == k) & pl.col("member"))
        n, hits = members.height, int(members["extracted"].sum())
        lo, hi = wilson(hits, n)
        per_k.append({"k": k, "n_samples": n, "n_extracted": hits, "extraction_rate": hits / n if n else 0.0,
                      "ci_low": lo, "ci_high": hi,
                      "token_match_rate": float(members["token_match_rate"].mean()) if n else 0.0})

    out_dir = plan.metrics_dir(model_name, method, level)
    write_parquet(per_sample, out_dir / "memorization.parquet")
    inputs.update(checkpoint=checkpoint_hash(ckpt_dir), samples=samples_hash(samples_dir))
    summary = {
        "model": model_name, "method": method, "level": level, "perplexity": ppl, "perplexity_tokens": n_scored,
        **sp, "compression": compression, "per_k": per_k,
        "memorization_sha256": sha256_file(out_dir / "memorization.parquet"),
        "provenance": record("evaluate", inputs, plan.stage_params("evaluate")),
    }
    write_json(out_dir / "summary.json", summary)
    return summary
