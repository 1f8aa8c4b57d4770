"""Checkpoints: build the embedded one, and load any HF directory safely (safetensors only).

    prunemem checkpoint --model tiny

A checkpoint is a standard Hugging Face directory (``config.json``, ``model.safetensors``,
``tokenizer.json``) plus ``provenance.json``. Its identity is the sha256 of its weights file.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from prunemem import embedded
from prunemem.errors import PrunememError
from prunemem.identity import CHECKPOINT_PROVENANCE as PROVENANCE, WEIGHTS  # noqa: F401 (torch-free identity)
from prunemem.identity import TOKENIZER_FILES, checkpoint_hash, weights_file as _weights_file  # noqa: F401
from prunemem.provenance import AtomicDir, read_json, record, sha256_file, write_json
from prunemem.runtime import deterministic

log = logging.getLogger(__name__)


def load_model(directory: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """Load a causal LM of a family in the layer map (``prunemem.arch``: GPT-NeoX, Llama, Qwen2,
    Qwen3, GPT-2) from safetensors, with that family's own transformers class, never running
    remote code; eval mode."""
    from safetensors import SafetensorError

    from prunemem import arch

    directory = Path(directory)
    weights = _weights_file(directory)
    config = read_json(directory / "config.json", "checkpoint config")
    cls = arch.model_class(arch.for_type(config.get("model_type"), str(directory / "config.json")))
    try:
        model = cls.from_pretrained(directory, dtype=dtype, use_safetensors=True,
                                    trust_remote_code=False, local_files_only=True)
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        raise PrunememError(f"{weights}: cannot load checkpoint ({str(err).splitlines()[0]})") from None
    model.prunemem_checkpoint_sha256 = checkpoint_hash(directory)
    return model.to(device).eval()




def tokenizer_hash(directory: str | Path) -> str:
    """Identity of a checkpoint's tokenizer: the digest of whichever tokenizer files it ships."""
    from prunemem.provenance import digest_json

    directory = Path(directory)
    files = {name: sha256_file(directory / name) for name in TOKENIZER_FILES if (directory / name).is_file()}
    if not files:
        raise PrunememError(f"{directory}: no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    return digest_json(files)


def load_tokenizer(directory: str | Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(directory, trust_remote_code=False, local_files_only=True)
    except (OSError, ValueError) as err:  # a missing or corrupt tokenizer.json (JSONDecodeError is a ValueError)
        raise PrunememError(f"{Path(directory) / 'tokenizer.json'}: cannot load tokenizer "
                            f"({str(err).splitlines()[0]})") from None


def embedded_recipe(params: dict) -> dict:
    """What an embedded checkpoint is a function of: the ``embedded:`` recipe (whatever the model is named)."""
    return {"embedded": params["embedded"]}


def _training_stream(tokenizer, split: dict, canaries: list, cfg: dict):
    train_cfg, arch = cfg["training"], cfg["architecture"]
    return embedded.build_training_stream(embedded.tokenize(tokenizer, [d["text"] for d in split["train"]]),
                                          canaries, tokenizer.eos_token_id,
                                          train_cfg["steps"] * train_cfg["batch_size"], arch["seq_len"], cfg["seed"])


def _save_training_rows(stream, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"rows": stream.rows, "row_canary": stream.row_canary,
               "row_canary_offset": stream.row_canary_offset}, path)


def copy_shipped(pins: dict, out_dir: Path, params: dict, prov_params: dict) -> Path:
    """Check every shipped file against its pin, copy them, rebuild the training rows and check those too.

    The copy gets a provenance record of its own (this job's ``prov_params``), which keeps the
    training run's record under ``shipped``: a copy named ``small`` is not the run that trained ``tiny``.
    """
    import polars as pl

    from prunemem import shipped

    source = shipped.shipped_dir()
    for name, expected in pins["files"].items():
        shipped.verify_pinned(source / name, expected, shipped.restore_hint(source / name))
    cfg = params["embedded"]
    with AtomicDir(out_dir) as tmp:
        for name in pins["files"]:
            shutil.copyfile(source / name, tmp / name)
        tokenizer = load_tokenizer(tmp)
        split = embedded.split_corpus(embedded.load_corpus(), cfg["split"], cfg["seed"])
        canaries = [embedded.Canary(r["canary_id"], r["doc_id"], r["offset"], r["copies"], r["tokens"])
                    for r in pl.read_parquet(tmp / embedded.CANARIES).iter_rows(named=True)]
        _save_training_rows(_training_stream(tokenizer, split, canaries, cfg), tmp / embedded.TRAINING_ROWS)
        rows = tmp / embedded.TRAINING_ROWS
        if (actual := sha256_file(rows)) != pins["training_rows_sha256"]:
            raise PrunememError(f"{source}: the rebuilt training rows hash to {actual}, not the pinned "
                                f"{pins['training_rows_sha256']}: the corpus or the stream code changed since the "
                                f"checkpoint was shipped; retrain it (`{shipped.RETRAIN}`)")
        trained = read_json(tmp / PROVENANCE, "shipped checkpoint provenance")
        prov = record("checkpoint", {"corpus": embedded.CORPUS_SHA256}, prov_params)
        prov.update(checkpoint_sha256=sha256_file(tmp / WEIGHTS), source="embedded", training_rows_sha256=actual,
                    training=trained.get("training", {}),
                    shipped={"pins": shipped.PINS, "trained": pins["trained"], "training_record": trained})
        write_json(tmp / PROVENANCE, prov)
    log.info("verified copy of the shipped checkpoint (%s, trained %s)", source, pins["trained"].get("time"))
    return out_dir


def build_embedded(out_dir: str | Path, params: dict, progress=None, prov_params: dict | None = None,
                   retrain: bool = False) -> Path:
    """The embedded model, its tokenizer and its training stream in ``out_dir``.

    When the shipped checkpoint (``prunemem.shipped``) was trained from exactly this recipe, it
    is copied after every file is checked against its pinned sha256 (a verified copy, seconds);
    otherwise, or with ``retrain``, the model is trained here. ``prov_params``
    (``Plan.stage_params("checkpoint", model)``) is what the provenance record keeps.
    """
    import polars as pl

    from prunemem import shipped

    out_dir = Path(out_dir)
    if not retrain and (pins := shipped.matching_pins(embedded_recipe(params))) is not None:
        return copy_shipped(pins, out_dir, params, prov_params or embedded_recipe(params))
    cfg, seed = params["embedded"], params["embedded"]["seed"]
    deterministic(cfg["training"]["threads"])
    docs = embedded.load_corpus()
    split = embedded.split_corpus(docs, cfg["split"], seed)
    log.info("corpus: %d documents -> train %d, heldout %d, canary pool %d", len(docs), len(split["train"]),
             len(split["heldout"]), len(split["canary_pool"]))
    tokenizer = embedded.train_tokenizer([d["text"] for d in split["train"]], cfg["tokenizer"]["vocab_size"])
    canaries = embedded.choose_canaries(split["canary_pool"],
                                        embedded.tokenize(tokenizer, [d["text"] for d in split["canary_pool"]]),
                                        cfg["canaries"], seed)
    stream = _training_stream(tokenizer, split, canaries, cfg)
    planted = embedded.planted_tokens(cfg["canaries"])
    log.info("training stream: %d tokens, %.2f passes over the training split, canaries %d tokens (%.2f%%)",
             stream.rows.numel(), stream.epochs, planted, 100 * planted / stream.rows.numel())
    config = embedded.model_config(cfg["architecture"], len(tokenizer), tokenizer.eos_token_id)
    heldout = embedded.heldout_windows_tensor(embedded.tokenize(tokenizer, [d["text"] for d in split["heldout"]]),
                                              tokenizer.eos_token_id, cfg["architecture"]["seq_len"], 32)
    model = embedded.train(config, stream, cfg["training"], seed, progress=progress, heldout=heldout)
    log.info("trained %d parameters", sum(p.numel() for p in model.parameters()))

    # trained in float32, stored in architecture.dtype (float16 halves the shipped file, as on the hub)
    model.to(getattr(torch, cfg["architecture"].get("dtype", "float32")))
    with AtomicDir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _save_training_rows(stream, tmp / embedded.TRAINING_ROWS)
        pl.DataFrame({
            "canary_id": [c.canary_id for c in canaries], "doc_id": [c.doc_id for c in canaries],
            "offset": [c.offset for c in canaries], "copies": [c.copies for c in canaries],
            "tokens": [c.tokens for c in canaries],
        }, schema_overrides={"tokens": pl.List(pl.Int32)}).write_parquet(tmp / embedded.CANARIES)
        weights_sha = sha256_file(tmp / WEIGHTS)
        prov = record("checkpoint", {"corpus": embedded.CORPUS_SHA256}, prov_params or embedded_recipe(params))
        prov.update(checkpoint_sha256=weights_sha, source="embedded",
                    training_rows_sha256=sha256_file(tmp / embedded.TRAINING_ROWS),
                    training={"tokens": stream.rows.numel(), "epochs": round(stream.epochs, 4),
                              "canary_tokens": planted, "canary_fraction": round(planted / stream.rows.numel(), 6)})
        write_json(tmp / PROVENANCE, prov)
    return out_dir
