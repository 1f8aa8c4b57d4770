"""One evaluation job: a checkpoint, optionally masked or transformed, scored on its samples.

    prunemem evaluate --model tiny --method global --level 0.5
    prunemem evaluate --model tiny --method dense --level 0     # the unpruned baseline

Writes to ``data/metrics/{model}/{method}/{level}/``:

- ``memorization.parquet``: one row per (sample, k): exact extraction by one teacher-forced
  pass, near-ties re-checked with fp32 greedy ``generate()`` (``rechecked``, ``flipped``);
- ``mia.parquet``: one row per sample: the four membership scores of ``prunemem.evaluate.mia``;
- ``perplexity_windows.parquet``: one row per scored window: its summed NLL, scored tokens and the
  perplexity document its first scored token lies in, so the report can bootstrap over documents;
- ``summary.json``: per-k rates over all members with Wilson 95% intervals, the same per
  (k, kind, copies) in ``per_kind`` (canaries by copy count, ordinary training windows and
  held-out windows apart), re-check and cross-check counts,
  perplexity (and, for dense, ``reference_perplexity``: unigram, bigram, no blocks), sparsity,
  MIA AUCs with bootstrap CIs and TPR at 1% FPR, device, provenance.

Runs in fp32 on CPU and bf16 on CUDA by default (``evaluate.device``/``evaluate.dtype``); the
batch size is fitted to free memory (``evaluate.batch_size: auto``). Every finished batch is
kept under ``.partial/`` so a preempted job resumes where it stopped; the directory is
removed once the final files are written.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import torch

from prunemem.checkpoints import checkpoint_hash, load_model, load_tokenizer, tokenizer_hash
from prunemem.compress.run import apply_transform
from prunemem.data.samples import samples_hash
from prunemem.errors import PrunememError
from prunemem.evaluate import mia
from prunemem.evaluate.memorization import FIELDS, greedy_extracted, score_batch
from prunemem.evaluate.perplexity import combine, layout as perplexity_layout, span_nll
from prunemem.evaluate.reference import reference_perplexity
from prunemem.evaluate.stats import kind_rates, rate_row
from prunemem.plan import Plan
from prunemem.prune import masks as mask_io
from prunemem.prune.targets import prunable
from prunemem.provenance import atomic_path, digest_json, read_json, read_parquet, record, sha256_file, write_json, write_parquet
from prunemem.runtime import deterministic, resolve_device

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


def check_inputs(plan: Plan, model_name: str) -> None:
    """Refuse, before any weights are loaded, windows the model cannot see and samples from another tokenizer."""
    ckpt_dir, samples_dir = plan.checkpoint_dir(model_name), plan.samples_dir(model_name)
    config_path = ckpt_dir / "config.json"
    from prunemem.arch import context_length

    context = context_length(read_json(config_path, "model config"))
    if not isinstance(context, int):
        raise PrunememError(f"{config_path}: no max_position_embeddings (the model's context length)")
    needed = {"samples.k + samples.suffix_tokens": max(plan.ks) + plan.params["samples"]["suffix_tokens"],
              "perplexity.window": plan.params["perplexity"]["window"]}
    for key, tokens in needed.items():
        if tokens > context:
            raise PrunememError(f"{key}: {tokens} tokens exceed {model_name}'s context of {context} "
                                f"({config_path})")
    recorded = read_json(samples_dir / "provenance.json", "samples provenance").get("tokenizer_sha256")
    actual = tokenizer_hash(ckpt_dir)
    if recorded != actual:
        raise PrunememError(f"{samples_dir}: samples were tokenized with tokenizer {str(recorded)[:12]}..., "
                            f"not {model_name}'s {actual[:12]}...; rebuild them with `prunemem samples --model "
                            f"{model_name}`")


def load_variant(plan: Plan, model_name: str, method: str, level: str, device: str, dtype: torch.dtype):
    """The model as evaluated: checkpoint, then mask or transform, then cast to ``dtype`` on ``device``.

    Transforms are read from their stored weights (codes and scales, or factors) onto the
    checkpoint loaded on the host, verified against the record's hashes, then cast; masks zero
    weights, which commutes with casting.
    """
    ckpt_dir = plan.checkpoint_dir(model_name)
    artifact = plan.variant_artifact(model_name, method, level)
    kind = plan.kind(method)
    model = load_model(ckpt_dir) if kind == "transform" else load_model(ckpt_dir, dtype=dtype, device=device)
    mask, inputs, compression = None, {}, 1.0
    if kind == "mask":
        mask, inputs["mask"] = mask_io.apply(model, artifact), sha256_file(artifact)
    elif kind == "transform":
        compression = apply_transform(model, artifact)["compression"]  # stored weights, verified, not recomputed
        inputs["transform"] = sha256_file(artifact)
        model = model.to(device=device, dtype=dtype)
    return model, mask, inputs, compression


def fit_batch_size(config, tokens: int, logits_kept: int, dtype: torch.dtype, device: str, cap: int) -> int:
    """The largest batch (at most ``cap``) whose activations fit in 70% of the free memory.

    A deliberately generous per-sample estimate: the residual stream and MLP activations of one
    block, unfused attention scores (the worst case of SDPA's fallback), and the fp32 logits
    with the few temporaries the scoring makes of them.
    """
    import psutil

    width = torch.finfo(dtype).bits // 8
    per_sample = (tokens * config.hidden_size * 14 * width
                  + tokens * tokens * config.num_attention_heads * (width + 4)
                  + logits_kept * config.vocab_size * (width + 6 * 4))
    free = torch.cuda.mem_get_info()[0] if device == "cuda" else psutil.virtual_memory().available
    return max(1, min(cap, int(0.7 * free) // per_sample))


class PartialResults:
    """Finished batches of an interrupted job, kept under ``.partial/`` so a rerun continues.

    The directory is keyed by everything that shapes the numbers; a different key wipes it.
    Each batch is one safetensors file, written atomically, named by its phase and first row.
    """

    def __init__(self, out_dir: Path, key: dict):
        self.dir = out_dir / ".partial"
        key_file, digest = self.dir / "key.json", digest_json(key)
        try:
            valid = json.loads(key_file.read_text())["digest"] == digest
        except (OSError, ValueError, KeyError):
            valid = False
        if not valid:
            shutil.rmtree(self.dir, ignore_errors=True)
            write_json(key_file, {"digest": digest, "key": key})
        self.resumed = 0

    def run(self, name: str, compute) -> dict[str, torch.Tensor]:
        from safetensors import SafetensorError
        from safetensors.torch import load_file, save_file

        path = self.dir / f"{name}.safetensors"
        if path.is_file():
            try:
                result = load_file(path)
                self.resumed += 1
                return result
            except (SafetensorError, OSError):
                path.unlink()
        result = {key: value.contiguous() for key, value in compute().items()}
        with atomic_path(path) as tmp:
            try:
                save_file(result, tmp)
            except SafetensorError as err:  # safetensors reports a full disk or quota as its own error
                raise PrunememError(f"{path}: cannot write output ({err})") from None
        return result

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def batched(store: PartialResults, phase: str, n: int, batch: int, compute, progress=None) -> dict[str, torch.Tensor]:
    """``compute(lo, hi)`` over ``range(n)`` in resumable batches; halves the batch on CUDA out-of-memory."""
    parts, lo = [], 0
    bar = progress(total=n) if progress else None
    try:
        while lo < n:
            hi = min(n, lo + batch)
            try:
                parts.append(store.run(f"{phase}-{lo:08d}-{hi:08d}", lambda: compute(lo, hi)))
            except torch.OutOfMemoryError:
                if batch == 1:
                    raise PrunememError(f"evaluate: a single sample of {phase} does not fit in device memory") from None
                batch //= 2
                torch.cuda.empty_cache()
                log.warning("%s: out of memory, batch size lowered to %d", phase, batch)
                continue
            if bar is not None:
                bar.update(hi - lo)
            lo = hi
    finally:  # also on an error, so its one line does not share the bar's
        if bar is not None:
            bar.close()
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


def evaluate(plan: Plan, model_name: str, method: str, level: str, progress=None) -> dict:
    cfg = plan.params
    ev = cfg["evaluate"]
    check_inputs(plan, model_name)
    device, dtype = resolve_device(ev["device"], ev["dtype"], "evaluate")
    deterministic(ev["threads"])
    ckpt_dir, samples_dir = plan.checkpoint_dir(model_name), plan.samples_dir(model_name)
    model, mask, inputs, compression = load_variant(plan, model_name, method, level, device, dtype)
    sp = sparsity(model, mask)
    if mask is not None:
        compression = 1.0 - sp["achieved_sparsity"]
    inputs.update(checkpoint=checkpoint_hash(ckpt_dir), samples=samples_hash(samples_dir))

    members_file = samples_dir / "members.parquet"
    samples = pl.concat([read_parquet(members_file, "member samples"),
                         read_parquet(samples_dir / "nonmembers.parquet", "non-member samples")])
    if not samples["member"].any():  # rates over zero members would read as 0% extraction
        raise PrunememError(f"{members_file}: no member samples to evaluate")
    windows = torch.tensor(samples["tokens"].to_list(), dtype=torch.long)
    suffix, top_k = cfg["samples"]["suffix_tokens"], max(plan.ks)
    fraction = ev["mia"]["min_k_fraction"]
    window = cfg["perplexity"]["window"]
    if ev["batch_size"] == "auto":
        batch = fit_batch_size(model.config, top_k + suffix, top_k + suffix, dtype, device, ev["max_batch_size"])
        ppl_batch = fit_batch_size(model.config, window, window, dtype, device, ev["max_batch_size"])
    else:
        batch = ppl_batch = ev["batch_size"]
    out_dir = plan.metrics_dir(model_name, method, level)
    store = PartialResults(out_dir, {"inputs": inputs, "params": plan.stage_params("evaluate"),
                                     "device": device, "dtype": str(dtype)})
    log.info("evaluating %s/%s/%s on %s in %s, batch %d (perplexity %d)", model_name, method, level, device, dtype,
             batch, ppl_batch)

    per_k = {}
    for k in sorted(plan.ks, reverse=True):  # the largest k also yields the membership scores
        with_mia = fraction if k == top_k else None
        per_k[k] = batched(store, f"k{k}", len(windows), batch,
                           lambda lo, hi: score_batch(model, windows[lo:hi], k, suffix, with_mia), progress)
        log.info("k=%d: %d samples extracted", k, int(per_k[k]["extracted"].sum()))

    ppl_docs = read_parquet(samples_dir / "perplexity.parquet", "perplexity set")["tokens"].to_list()
    tokenizer = load_tokenizer(ckpt_dir)
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    ppl_tokens, todo, span_doc = perplexity_layout(ppl_docs, cfg["perplexity"], prefix, tokenizer.eos_token_id)
    nll = batched(store, "perplexity", len(todo), ppl_batch,
                  lambda lo, hi: {"nll": span_nll(model, ppl_tokens, todo[lo:hi])}, progress)["nll"]
    ppl, n_scored = combine(float(nll.sum()), todo)
    ppl_frame = pl.DataFrame({"document": np.array(span_doc, np.int32), "nll": nll.double().numpy(),
                              "tokens": np.array([s.end - s.first_scored for s in todo], np.int32)})
    log.info("perplexity %.3f over %d tokens (%d batches resumed)", ppl, n_scored, store.resumed)
    references = {}
    if plan.method(method).kind == "dense":  # the quality regime: unigram, bigram and no blocks beside dense
        references = {"reference_perplexity": reference_perplexity(model, ckpt_dir, ppl_tokens, todo, ppl_batch)}
        log.info("reference perplexity: %s",
                 ", ".join(f"{k} {v:.2f}" for k, v in references["reference_perplexity"].items()))

    reference = model if dtype == torch.float32 else None
    if reference is None and (ev["cross_check"] or any(
            (v["decision_margin"] < ev["near_tie_margin"]).any() for v in per_k.values())):
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
        reference = load_variant(plan, model_name, method, level, device, torch.float32)[0]
    checks = {k: _recheck_and_cross_check(reference, windows, samples, k, suffix, per_k[k], ev, tokenizer.eos_token_id)
              for k in plan.ks}

    frames = [samples.select("sample_id", "kind", "copies", "member").with_columns(
        pl.lit(k, pl.Int32).alias("k"), **{name: pl.Series(per_k[k][name].numpy()) for name in FIELDS},
        rechecked=pl.Series(checks[k]["rechecked"].numpy()), flipped=pl.Series(checks[k]["flipped"].numpy()))
        for k in plan.ks]
    per_sample = pl.concat(frames)
    mia_frame = _mia_frame(samples, per_k[top_k], windows[:, -(top_k + suffix):], tokenizer)
    member = samples["member"].to_numpy()
    mia_rows = mia.summarize({s: mia_frame[s].to_numpy() for s in mia.SCORES}, member,
                             ev["mia"]["bootstrap"], ev["seed"])

    rates = [{**rate_row(per_sample, k), "n_rechecked": int(checks[k]["rechecked"].sum()),
              "n_flipped": int(checks[k]["flipped"].sum()), "n_cross_checked": checks[k]["cross_checked"]}
             for k in plan.ks]

    write_parquet(per_sample, out_dir / "memorization.parquet")
    write_parquet(mia_frame, out_dir / "mia.parquet")
    write_parquet(ppl_frame, out_dir / "perplexity_windows.parquet")
    summary = {
        "model": model_name, "method": method, "level": level, "perplexity": ppl, "perplexity_tokens": n_scored,
        **references, **sp, "compression": compression, "per_k": rates,
        "per_kind": kind_rates(per_sample), "mia": mia_rows,
        "device": device, "dtype": str(dtype).removeprefix("torch."), "batch_size": batch,
        "perplexity_batch_size": ppl_batch,
        "memorization_sha256": sha256_file(out_dir / "memorization.parquet"),
        "mia_sha256": sha256_file(out_dir / "mia.parquet"),
        "perplexity_sha256": sha256_file(out_dir / "perplexity_windows.parquet"),
        "provenance": record("evaluate", inputs, plan.stage_params("evaluate")),
    }
    write_json(out_dir / "summary.json", summary)
    store.clear()
    return summary


def _recheck_and_cross_check(reference, windows, samples: pl.DataFrame, k: int, suffix: int,
                             scores: dict[str, torch.Tensor], ev: dict, pad: int) -> dict:
    """Settle near-ties with fp32 greedy ``generate()``; then assert agreement on a seeded subset.

    A verdict whose decision margin is under ``evaluate.near_tie_margin`` could flip under a
    different summation order, so it is replaced by what fp32 greedy decoding does. The
    cross-check then runs ``generate()`` on ``evaluate.cross_check`` random samples and stops
    the job on any disagreement.
    """
    near = (scores["decision_margin"] < ev["near_tie_margin"]).nonzero().flatten()
    flipped = torch.zeros(len(windows), dtype=torch.bool)
    if near.numel():
        verdict = greedy_extracted(reference, windows[near], k, suffix, pad)
        flipped[near] = verdict != scores["extracted"][near]
        scores["extracted"][near] = verdict
        log.info("k=%d: %d near-ties re-checked in fp32, %d flipped", k, near.numel(), int(flipped.sum()))
    rechecked = torch.zeros(len(windows), dtype=torch.bool)
    rechecked[near] = True
    n_check = min(ev["cross_check"], len(windows))
    if n_check:
        chosen = torch.randperm(len(windows), generator=torch.Generator().manual_seed(ev["seed"] + k))[:n_check]
        chosen = chosen.sort().values
        reference_verdict = greedy_extracted(reference, windows[chosen], k, suffix, pad)
        disagree = chosen[reference_verdict != scores["extracted"][chosen]].tolist()
        if disagree:
            ids = ", ".join(samples["sample_id"][i] for i in disagree[:5])
            raise PrunememError(f"evaluate.cross_check: teacher forcing and generate() disagree at k={k} on "
                                f"{len(disagree)} of {n_check} samples ({ids})")
        log.info("k=%d: cross-check agrees on all %d samples", k, n_check)
    return {"rechecked": rechecked, "flipped": flipped, "cross_checked": n_check}


def _mia_frame(samples: pl.DataFrame, scores: dict[str, torch.Tensor], windows: torch.Tensor,
               tokenizer) -> pl.DataFrame:
    """Per-sample membership scores, higher = more member-like (see ``prunemem.evaluate.mia``)."""
    texts = tokenizer.batch_decode(windows.tolist())
    zlib_size = np.array([mia.zlib_bytes(text) for text in texts], dtype=np.float64)
    loss = scores["loss"].double().numpy()  # mean token log-probability (higher = member-like)
    return samples.select("sample_id", "kind", "copies", "member").with_columns(
        loss=pl.Series(loss), zlib=pl.Series(loss / zlib_size),
        mink=pl.Series(scores["mink"].double().numpy()), minkpp=pl.Series(scores["minkpp"].double().numpy()),
        zlib_bytes=pl.Series(zlib_size.astype(np.int64)))
