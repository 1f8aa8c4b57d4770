"""Build the sample sets a model is evaluated on.

    prunemem samples --model tiny   # -> data/samples/tiny/{members,search,nonmembers,perplexity,calibration}.parquet

Every extraction sample is one window of ``max(k) + suffix`` tokens; the suffix is its last
``suffix`` tokens and the prompt for each k is the k tokens just before it, so all k test the
same suffixes (docs/architecture.md, "Semantics the numbers depend on").

Hub models draw from their ``members`` / ``heldout`` sources (``prunemem.data.sampling``) and
also write ``manifest.parquet``. For the embedded source:
- members are canaries planted >= 1 times plus ordinary windows cut from training rows that
  carry no canary (kind ``train``; ``copies`` counts how often the window's exact tokens occur
  in the training rows: once per epoch, more where the corpus repeats itself), both taken
  from the exact training stream;
- non-members are canaries planted 0 times (same distribution, never trained on) plus
  ``samples.nonmembers`` windows of held-out text (kind ``heldout``) of the same length;
- perplexity text is the held-out split, which training never saw;
- calibration windows (a pool of ``samples.calibration.pool``, default ``sequences``, from which
  calibrated methods draw ``sequences``) are held-out text the perplexity set does not use;
- the *search split* (``samples.search_members``, default 0) holds members that EvoP's
  memorization-aware search may score and final evaluation never sees. Hub models draw them in
  addition to the evaluation members (from other documents); the embedded model carves them
  out of its fixed member pool, stratified by kind and copy count.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import polars as pl

from prunemem import embedded
from prunemem.data.layout import hf_specs
from prunemem.errors import PrunememError
from prunemem.data.windows import SAMPLE_SCHEMA, _calibration_windows, _perplexity_docs  # noqa: F401 (shared with sampling)
from prunemem.data.windows import calibration_pool_size  # noqa: F401
from prunemem.identity import read_fetch_record, samples_hash  # noqa: F401 (samples_hash: torch-free, for freshness)
from prunemem.plan import SAMPLE_FILES as FILES, SAMPLE_PROVENANCE as PROVENANCE  # noqa: F401 (the artifact contract)
from prunemem.provenance import digest_json, read_parquet, record, sha256_file, write_json, write_parquet

log = logging.getLogger(__name__)


def embedded_sets(checkpoint_dir: Path, params: dict) -> dict[str, pl.DataFrame]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from prunemem.checkpoints import load_tokenizer

    samples, cfg = params["samples"], params["embedded"]
    window = max(samples["k"]) + samples["suffix_tokens"]
    canaries = read_parquet(checkpoint_dir / embedded.CANARIES, "canary table")
    canary_rows = [
        {"sample_id": f"canary-{r['canary_id']:05d}", "kind": "canary", "copies": r["copies"],
         "member": r["copies"] > 0, "source": r["doc_id"], "position": r["offset"] + len(r["tokens"]) - window,
         "tokens": r["tokens"][-window:]}
        for r in canaries.iter_rows(named=True)
    ]
    rows_file = checkpoint_dir / embedded.TRAINING_ROWS
    try:
        stream = load_file(rows_file)
    except (OSError, SafetensorError) as err:
        raise PrunememError(f"{rows_file}: missing or corrupt training rows ({err})") from None
    rows, row_canary = stream["rows"], stream["row_canary"]
    plain = (row_canary < 0).nonzero().flatten().tolist()
    n = samples["training_members"]
    if n > len(plain):
        raise PrunememError(f"samples.training_members: {n} exceeds the {len(plain)} canary-free training rows")
    rng = random.Random(samples["seed"])
    seq_len = rows.shape[1]
    picked = []
    for r in sorted(rng.sample(plain, n)):
        offset = rng.randrange(seq_len - window + 1)
        picked.append((r, offset, rows[r, offset : offset + window].tolist()))
    seen = occurrences(rows, [tokens for _, _, tokens in picked])
    train_rows = [{"sample_id": f"train-{i:05d}", "kind": "train", "copies": times, "member": True,
                   "source": f"training_rows[{r}]", "position": offset, "tokens": tokens}
                  for i, ((r, offset, tokens), times) in enumerate(zip(picked, seen))]
    members, search = split_search([r for r in canary_rows if r["member"]] + train_rows,
                                   samples.get("search_members", 0), samples["seed"])

    split = embedded.split_corpus(embedded.load_corpus(), cfg["split"], cfg["seed"])
    tokenizer = load_tokenizer(checkpoint_dir)
    heldout = list(zip((d["id"] for d in split["heldout"]),
                       embedded.tokenize(tokenizer, [d["text"] for d in split["heldout"]])))
    ppl, used = _perplexity_docs(heldout, tokenizer.eos_token_id, samples["perplexity_tokens"])
    calibration = _calibration_windows(heldout[used:], tokenizer.eos_token_id, samples["calibration"])
    last_calibration_doc = calibration[-1]["doc_ids"].split(",")[-1]
    used += 1 + [doc_id for doc_id, _ in heldout[used:]].index(last_calibration_doc)
    nonmembers = [r for r in canary_rows if not r["member"]] + heldout_windows(
        heldout[used:], window, samples.get("nonmembers", samples["training_members"]), samples["seed"])
    return {
        "members.parquet": pl.DataFrame(members, schema=SAMPLE_SCHEMA),
        "search.parquet": pl.DataFrame(search, schema=SAMPLE_SCHEMA),
        "nonmembers.parquet": pl.DataFrame(nonmembers, schema=SAMPLE_SCHEMA),
        "perplexity.parquet": pl.DataFrame(ppl, schema={"doc_id": pl.String, "tokens": pl.List(pl.Int32)}),
        "calibration.parquet": pl.DataFrame(calibration, schema={"doc_ids": pl.String, "tokens": pl.List(pl.Int32)}),
    }


def heldout_windows(docs: list[tuple[str, list[int]]], window: int, n: int, seed: int) -> list[dict]:
    """``n`` non-member windows of held-out text, cut as canaries are (``embedded.spaced_windows``).

    ``docs`` are the held-out documents neither the perplexity set nor the calibration pool uses.
    """
    rng = random.Random(seed * 7919 + 29)
    cuts = embedded.spaced_windows(docs, window, rng)
    if n > len(cuts):
        raise PrunememError(f"samples.nonmembers: asks for {n} held-out windows of {window} tokens but the held-out "
                            f"split can supply {len(cuts)} after the perplexity and calibration sets")
    chosen = sorted(rng.sample(range(len(cuts)), n))
    return [{"sample_id": f"heldout-{i:05d}", "kind": "heldout", "copies": 0, "member": False, "source": cuts[j][0],
             "position": cuts[j][1], "tokens": cuts[j][2]} for i, j in enumerate(chosen)]


def occurrences(rows, windows: list[list[int]]) -> list[int]:
    """How many times each window's exact tokens occur inside one training row.

    A rolling polynomial hash (mod 2**64) of every ``len(window)``-token span of every row,
    vectorized over the rows; a hash match is confirmed token by token, so collisions cannot
    inflate a count.
    """
    import numpy as np

    if not windows:
        return []
    rows = rows.numpy().astype(np.uint64)
    width = len(windows[0])
    span = rows.shape[1] - width + 1
    if span < 1:
        return [0] * len(windows)
    base = np.uint64(1_000_003)
    with np.errstate(over="ignore"):
        hashes = np.zeros((rows.shape[0], span), dtype=np.uint64)
        for j in range(width):
            hashes = hashes * base + rows[:, j : j + span]
        wanted = np.zeros(len(windows), dtype=np.uint64)
        arr = np.array(windows, dtype=np.uint64)
        for j in range(width):
            wanted = wanted * base + arr[:, j]
    counts = []
    for w, h in zip(arr, wanted):
        r, c = np.nonzero(hashes == h)
        counts.append(int(sum(np.array_equal(rows[i, j : j + width], w) for i, j in zip(r, c))))
    return counts


def split_search(members: list[dict], n: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(evaluation members, search split): ``n`` members drawn stratified by (kind, copies), seeded.

    Each stratum gives its share of ``n`` (largest remainders first, ties by stratum order), so
    the search split has the evaluation set's mix of duplication counts.
    """
    if not n:
        return members, []
    if n >= len(members):
        raise PrunememError(f"samples.search_members: {n} leaves no member for evaluation; allowed: < {len(members)}")
    strata: dict[tuple, list[dict]] = {}
    for row in members:
        strata.setdefault((row["kind"], row["copies"]), []).append(row)
    keys = sorted(strata, key=lambda key: (key[0], key[1] if key[1] is not None else -1))
    # largest remainders in integers (n * size mod total), so exact ties really break by stratum order
    share = {key: n * len(strata[key]) // len(members) for key in keys}
    remainder = {key: n * len(strata[key]) % len(members) for key in keys}
    for key in sorted(keys, key=lambda key: (-remainder[key], keys.index(key)))[: n - sum(share.values())]:
        share[key] += 1
    rng = random.Random(seed * 7919 + 17)  # its own stream: the member draw above is unchanged
    chosen = {id(row) for key in keys for row in rng.sample(strata[key], share[key])}
    return [r for r in members if id(r) not in chosen], [r for r in members if id(r) in chosen]


def build(checkpoint_dir: str | Path, out_dir: str | Path, params: dict, model_name: str,
          prov_params: dict | None = None, fetch_record: str | Path | None = None,
          fetch_command: str = "prunemem fetch") -> dict:
    """Write the sample sets; ``prov_params`` (``Plan.stage_params("samples", model)``) is what the record keeps.

    ``fetch_record`` is the fetch stage's record (``data/fetched/<model>.json``) when a source is kind hf.
    """
    from prunemem.checkpoints import checkpoint_hash, tokenizer_hash

    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    if not checkpoint_dir.is_dir():
        raise PrunememError(f"{checkpoint_dir}: checkpoint not found; build it (prunemem checkpoint --model "
                            f"{model_name}) or fetch it (dvc pull)")
    source = params["models"][model_name]["source"]
    sources = {}
    inputs = {"checkpoint": checkpoint_hash(checkpoint_dir)}
    if source == "embedded":
        sets = embedded_sets(checkpoint_dir, params)
    else:  # hub: members / heldout sources, plus manifest.parquet tracing every sample to its document
        from prunemem.data.sampling import hub_sets

        if hf_specs(params["models"][model_name]):
            fetched = read_fetch_record(fetch_record, fetch_command)
            inputs["fetch"] = fetched["sources_sha256"]
            sets, sources = hub_sets(checkpoint_dir, params, model_name, fetched["sources"], fetch_command)
        else:
            sets, sources = hub_sets(checkpoint_dir, params, model_name)
    for name, frame in sets.items():
        write_parquet(frame, out_dir / name)
        log.info("%s: %d rows", name, frame.height)
    hashes = {name: sha256_file(out_dir / name) for name in sets}
    if prov_params is None:
        prov_params = {"samples": params["samples"], "source": source}
        if sources:
            prov_params.update({role: params["models"][model_name][role] for role in ("members", "heldout")})
    prov = record("samples", inputs, prov_params)
    prov.update(files=hashes, samples_sha256=digest_json(hashes), tokenizer_sha256=tokenizer_hash(checkpoint_dir),
                **({"sources": sources} if sources else {}))
    write_json(out_dir / PROVENANCE, prov)
    return prov


def load_calibration_pool(samples_dir: str | Path):
    """Every calibration window as a LongTensor [pool, tokens]."""
    import torch

    path = Path(samples_dir) / "calibration.parquet"
    return torch.tensor(read_parquet(path, "calibration set")["tokens"].to_list(), dtype=torch.long)


def load_calibration(samples_dir: str | Path, cfg: dict, seed: int):
    """The randomly drawn calibration sequences [sequences, tokens] (``cfg`` = params samples.calibration)."""
    from prunemem.prune.ccds import random_indices

    pool = load_calibration_pool(samples_dir)
    return pool[random_indices(pool.shape[0], cfg["sequences"], seed)]


def load_search_split(samples_dir: str | Path, suffix: int):
    """The search split's windows as a LongTensor, refused when a suffix it tests is also tested in evaluation.

    Comparing suffixes (not sample ids) also catches the same text drawn twice, e.g. from a
    duplicated document: tuning on it would tune on an evaluated sample.
    """
    import torch

    samples_dir = Path(samples_dir)
    search = read_parquet(samples_dir / "search.parquet", "search split")
    if search.height == 0:
        raise PrunememError(f"{samples_dir / 'search.parquet'}: the search split is empty; evop-mem needs "
                            "samples.search_members >= 1")
    members = read_parquet(samples_dir / "members.parquet", "members")
    evaluated = {tuple(t[-suffix:]): sid for sid, t in zip(members["sample_id"], members["tokens"].to_list())}
    shared = [(sid, evaluated[tuple(t[-suffix:])]) for sid, t in zip(search["sample_id"], search["tokens"].to_list())
              if tuple(t[-suffix:]) in evaluated]
    if shared:
        raise PrunememError(f"{samples_dir / 'search.parquet'}: the search split overlaps the evaluation members: "
                            f"{len(shared)} shared suffixes (e.g. {shared[0][0]} = {shared[0][1]}); allowed: disjoint "
                            "splits (rebuild with prunemem samples)")
    return torch.tensor(search["tokens"].to_list(), dtype=torch.long)

