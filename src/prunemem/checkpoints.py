"""Checkpoints: build the embedded one, and load any HF directory safely (safetensors only).

    prunemem checkpoint --model tiny

A checkpoint is a standard Hugging Face directory (``config.json``, ``model.safetensors``,
``tokenizer.json``) plus ``provenance.json``. Its identity is the sha256 of its weights file.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from prunemem import embedded
from prunemem.errors import PrunememError
from prunemem.provenance import (
    read_json,
    record,
    remove_stale_temps,
    sha256_file,
    temp_prefix,
    umask,
    unwritable,
    write_json,
)
from prunemem.runtime import deterministic

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
PROVENANCE = "provenance.json"


def checkpoint_hash(directory: str | Path) -> str:
    """The checkpoint's identity: the sha256 recorded in its provenance, else of its weights."""
    directory = Path(directory)
    prov = directory / PROVENANCE
    if prov.is_file():
        record_ = read_json(prov, "checkpoint provenance")
        if "checkpoint_sha256" not in record_:
            raise PrunememError(f"{prov}: corrupt checkpoint provenance (no checkpoint_sha256)")
        return record_["checkpoint_sha256"]
    return sha256_file(_weights_file(directory))


def _weights_file(directory: Path) -> Path:
    path = directory / WEIGHTS
    if not path.is_file():
        raise PrunememError(f"{path}: no safetensors weights (prunemem loads safetensors only)")
    return path


def load_model(directory: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """Load a GPT-NeoX causal LM from safetensors, never running remote code; eval mode."""
    from safetensors import SafetensorError
    from transformers import GPTNeoXForCausalLM

    directory = Path(directory)
    weights = _weights_file(directory)
    try:
        model = GPTNeoXForCausalLM.from_pretrained(directory, dtype=dtype, use_safetensors=True,
                                                   trust_remote_code=False, local_files_only=True)
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        raise PrunememError(f"{weights}: cannot load checkpoint ({str(err).splitlines()[0]})") from None
    model.prunemem_checkpoint_sha256 = checkpoint_hash(directory)
    return model.to(device).eval()


TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


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


class _AtomicDir:
    """Build a directory under a temporary name; swap it into place only when complete."""

    def __init__(self, final: Path):
        self.final = final

    def __enter__(self) -> Path:
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(self.final)
            self.tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(self.final), suffix=".tmp", dir=self.final.parent))
        except OSError as err:
            raise unwritable(self.final.parent, err) from err
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if isinstance(exc, OSError):  # read-only or full disk while writing
                raise unwritable(self.final, exc) from exc
            return False
        try:
            os.chmod(self.tmp, 0o777 & ~umask())
            for f in self.tmp.iterdir():
                os.chmod(f, 0o666 & ~umask())
            if self.final.exists():
                # a temporary name, so that a kill between the two renames leaves nothing stale
                old = self.tmp.with_name(f"{self.tmp.name[:-len('.tmp')]}.old.tmp")
                os.replace(self.final, old)
                os.replace(self.tmp, self.final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(self.tmp, self.final)
        except OSError as err:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise unwritable(self.final, err) from err
        return False


def build_embedded(out_dir: str | Path, params: dict, progress=None) -> Path:
    """Train the embedded model and write it, its tokenizer and its training stream to ``out_dir``."""
    import polars as pl
    from safetensors.torch import save_file

    cfg, seed = params["embedded"], params["embedded"]["seed"]
    deterministic(cfg["training"]["threads"])
    docs = embedded.load_corpus()
    split = embedded.split_corpus(docs, cfg["split"], seed)
    log.info("corpus: %d documents -> train %d, heldout %d, canary pool %d", len(docs), len(split["train"]),
             len(split["heldout"]), len(split["canary_pool"]))
    tokenizer = embedded.train_tokenizer([d["text"] for d in split["train"]], cfg["tokenizer"]["vocab_size"])
    eos_id = tokenizer.eos_token_id
    canaries = embedded.choose_canaries(split["canary_pool"],
                                        embedded.tokenize(tokenizer, [d["text"] for d in split["canary_pool"]]),
                                        cfg["canaries"], seed)
    train_cfg, arch = cfg["training"], cfg["architecture"]
    stream = embedded.build_training_stream(embedded.tokenize(tokenizer, [d["text"] for d in split["train"]]),
                                            canaries, eos_id, train_cfg["steps"] * train_cfg["batch_size"],
                                            arch["seq_len"], seed)
    config = embedded.model_config(arch, len(tokenizer), eos_id)
    model = embedded.train(config, stream, train_cfg, seed, progress=progress)
    log.info("trained %d parameters", sum(p.numel() for p in model.parameters()))

    out_dir = Path(out_dir)
    with _AtomicDir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        save_file({"rows": stream.rows, "row_canary": stream.row_canary,
                   "row_canary_offset": stream.row_canary_offset}, tmp / embedded.TRAINING_ROWS)
        pl.DataFrame({
            "canary_id": [c.canary_id for c in canaries], "doc_id": [c.doc_id for c in canaries],
            "offset": [c.offset for c in canaries], "copies": [c.copies for c in canaries],
            "tokens": [c.tokens for c in canaries],
        }, schema_overrides={"tokens": pl.List(pl.Int32)}).write_parquet(tmp / embedded.CANARIES)
        weights_sha = sha256_file(tmp / WEIGHTS)
        prov = record("checkpoint", {"corpus": embedded.CORPUS_SHA256}, {"source": "embedded", "embedded": cfg})
        prov.update(checkpoint_sha256=weights_sha, source="embedded",
                    training_rows_sha256=sha256_file(tmp / embedded.TRAINING_ROWS))
        write_json(tmp / PROVENANCE, prov)
    return out_dir


def _copy_hashing(src: Path, dst: Path, chunk: int = 1 << 22) -> str:
    """Copy ``src`` to ``dst`` and return its sha256, reading it once."""
    import hashlib

    digest = hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while block := fin.read(chunk):
            digest.update(block)
            fout.write(block)
    return digest.hexdigest()


def adopt_local(path: str | Path, out_dir: str | Path, params: dict, sha256: str | None = None) -> Path:
    """Adopt a checkpoint directory already on disk (``source: local``) as ``out_dir``.

        models: {pythia-12b: {source: local, path: /models/pythia-12b, revision: step143000,
                              sha256: <optional pin>, members: ..., heldout: ...}}

    The directory is what ``save_pretrained`` or ``hf download`` leaves: config.json, tokenizer
    files and ``model.safetensors`` (or safetensors shards with their index, or
    ``pytorch_model*.bin``, read with ``weights_only=True`` and converted as for the hub). The
    weights are hashed once, while they are copied; that sha256 is the checkpoint's identity, is
    recorded, and must equal ``sha256`` when the config pins one (one mechanism for a site's
    model store and for a checkpoint shipped with a known hash). Nothing is written unless every
    check passes.
    """
    from prunemem.hub import AUX_FILES, WEIGHT_FORMATS, _write_weights

    src = Path(path)
    if not src.is_dir():
        raise PrunememError(f"{src}: local checkpoint directory not found (models.*.path)")
    if not (src / "config.json").is_file():
        raise PrunememError(f"{src}: no config.json; a local checkpoint is a Hugging Face model directory "
                            "(config.json, tokenizer.json, model.safetensors)")
    if not any((src / name).is_file() for name in TOKENIZER_FILES):
        raise PrunememError(f"{src}: no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    found = next(((single, entry) for single, index in WEIGHT_FORMATS for entry in (single, index)
                  if (src / entry).is_file()), None)
    if found is None:
        raise PrunememError(f"{src}: no weights (model.safetensors, model.safetensors.index.json, pytorch_model.bin "
                            "or pytorch_model.bin.index.json)")
    fmt, entry = found
    out_dir = Path(out_dir)
    with _AtomicDir(out_dir) as tmp:
        for name in dict.fromkeys((*AUX_FILES, *TOKENIZER_FILES)):
            if (src / name).is_file():
                shutil.copyfile(src / name, tmp / name)
        if entry == WEIGHTS:
            digest, conversion = _copy_hashing(src / WEIGHTS, tmp / WEIGHTS), {"conversion": None}
        else:
            shards = [entry]
            if entry.endswith(".index.json"):
                weight_map = read_json(src / entry, "weights index").get("weight_map", {})
                shards = sorted(set(weight_map.values()))
                missing = [s for s in shards if not (src / s).is_file()]
                if missing or not shards:
                    raise PrunememError(f"{src / entry}: names {missing[0] if missing else 'no shards'}, which the "
                                        "directory does not have")
            conversion = _write_weights([src / s for s in shards], fmt, tmp / WEIGHTS, tmp / "config.json")
            digest = sha256_file(tmp / WEIGHTS)
        if sha256 is not None and digest != sha256:
            raise PrunememError(f"{src}: model.safetensors has sha256 {digest[:12]}..., not the pinned {sha256[:12]}... "
                                "(models.*.sha256); a different or damaged checkpoint")
        prov = record("checkpoint", {f"local:{src}/{entry}": digest}, params)
        prov.update(source="local", path=str(src.resolve()), weights_from=fmt, **conversion, checkpoint_sha256=digest,
                    pinned=sha256 is not None)
        write_json(tmp / PROVENANCE, prov)
    log.info("%s adopted as %s (sha256 %s)", src, out_dir, digest)
    return out_dir
