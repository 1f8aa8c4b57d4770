"""Files in the hub's real layouts, for the fake hub (tests/fakehub.py) to publish.

- ``pile_shard``: a ``.jsonl.zst`` of several zstd frames (as the Pile's shards are), lines
  ``{"text", "meta": {"pile_set_name"}}``;
- ``pile_dataset``: monology/pile-uncopyrighted's layout, ``train/NN.jsonl.zst`` plus
  ``val.jsonl.zst`` and ``test.jsonl.zst`` at the root, a README and no dataset card config.
"""

from __future__ import annotations

import json

PILE_SPLIT_FILES = {"train": "train/*.jsonl.zst", "validation": "val.jsonl.zst", "test": "test.jsonl.zst"}


def pile_shard(texts: list[str], frames: int = 3) -> bytes:
    import zstandard

    lines = [json.dumps({"text": t, "meta": {"pile_set_name": "Pile-CC"}}) + "\n" for t in texts]
    step = max(1, -(-len(lines) // frames))
    cctx = zstandard.ZstdCompressor(level=3)
    return b"".join(cctx.compress("".join(lines[i:i + step]).encode()) for i in range(0, len(lines), step))


def pile_dataset(train: list[list[str]], val: list[str], test: list[str]) -> dict[str, bytes]:
    files = {f"train/{i:02d}.jsonl.zst": pile_shard(texts) for i, texts in enumerate(train)}
    files.update({"val.jsonl.zst": pile_shard(val), "test.jsonl.zst": pile_shard(test),
                  "README.md": b"---\nlicense: other\n---\n# A miniature pile-uncopyrighted\n",
                  ".gitattributes": b"*.zst filter=lfs diff=lfs merge=lfs -text\n"})
    return files


def point_hub_at(monkeypatch, server) -> None:
    """Point huggingface_hub's endpoint constants at the fake hub (in this process)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        server.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def pythia_model_files(texts: list[str], vocab: int = 512, hidden: int = 32, layers: int = 2, heads: int = 4,
                       ctx: int = 256, seed: int = 0) -> dict[str, bytes]:
    """A Pythia-architecture checkpoint as the hub serves one: config.json, model.safetensors, tokenizer.

    Random weights; a byte-level BPE (GPT-NeoX's kind) trained on ``texts``. At ``hidden=768,
    layers=12, heads=12, vocab=50304, ctx=2048`` this is pythia-160m's shape.
    """
    import tempfile
    from pathlib import Path

    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from prunemem import embedded

    tok = embedded.train_tokenizer(texts, min(vocab, 4096))
    config = GPTNeoXConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                           intermediate_size=4 * hidden, max_position_embeddings=ctx, rotary_pct=0.25,
                           rotary_emb_base=10000, use_parallel_residual=True, tie_word_embeddings=False,
                           bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}


def prefill_cache(server, cache_dir, model_repo: str, revision: str, params: dict, model: str) -> None:
    """What a login node does before an offline run: the model snapshot and the data files, into ``cache_dir``.

    The real huggingface_hub download code fills the cache (refs/, blobs by hash, symlinked
    snapshots); ``prunemem.data.fetch`` picks the data files exactly as the fetch stage does.
    """
    import tempfile
    from pathlib import Path

    from huggingface_hub import HfApi, constants, hf_hub_download

    from prunemem.data import fetch

    saved = constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE, constants.HF_HUB_OFFLINE
    constants.ENDPOINT, constants.HF_HUB_OFFLINE = server.url, False
    constants.HUGGINGFACE_CO_URL_TEMPLATE = server.url + "/{repo_id}/resolve/{revision}/{filename}"
    try:
        # file by file, as `hf download` does (the fake hub has no tree listing for snapshot_download)
        for sibling in HfApi().model_info(model_repo, revision=revision).siblings:
            hf_hub_download(model_repo, sibling.rfilename, revision=revision, cache_dir=str(cache_dir))
        with tempfile.TemporaryDirectory() as tmp:
            fetch.fetch(params, model, Path(tmp) / "fetched.json", "prunemem fetch", cache_dir=str(cache_dir))
    finally:
        constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE, constants.HF_HUB_OFFLINE = saved


def shrink_pythia_preset(preset: dict, model: str = "pythia-160m", max_documents: int = 150) -> dict:
    """The shipped preset cut to one model, one mask, k in {50, 100} and a tiny evaluation: the rehearsal's grid.

    Everything not cut (sources, split_files, revisions, methods' settings) is the preset's own.
    """
    import copy

    p = copy.deepcopy(preset)
    spec = p["models"][model]
    p["models"] = {model: {**spec, "levels": spec["levels"][:1],
                           "members": {**spec["members"], "max_documents": max_documents}}}
    p["samples"].update(k=[50, 100], training_members=8, nonmembers=8, perplexity_tokens=2000,
                        calibration={"sequences": 2, "tokens": 128})
    p["perplexity"] = {"window": 128, "stride": 128}
    p["prune"]["methods"] = p["prune"]["methods"][1:2]  # global
    p["evaluate"].update(batch_size=8, max_batch_size=8, threads=1, device="cpu", dtype="float32",
                         near_tie_margin=0.01, cross_check=2, mia={"min_k_fraction": 0.2, "bootstrap": 100})
    return p
