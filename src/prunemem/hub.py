"""Hub checkpoints: a model id at a revision -> a pinned, hash-verified safetensors checkpoint.

    prunemem --params workflow/configs/pythia.yaml checkpoint --model pythia-1_4b
    # offline machines: pre-fetch into the cache they will use, then run with HF_HUB_OFFLINE=1
    HF_HOME=/shared/hf hf download EleutherAI/pythia-1.4b --revision step143000

- The revision (e.g. ``step143000``) is resolved to its commit sha, which is recorded; every
  file is then fetched at that revision into the Hugging Face cache (``HF_HOME`` /
  ``HF_HUB_CACHE``), and the snapshot it landed in must be that sha.
- Only what the checkpoint needs is fetched: config, tokenizer files and one weights format,
  safetensors when the revision has it, else ``pytorch_model*.bin``.
- Every file is verified: LFS files against the sha256 in the hub's LFS metadata (offline: the
  cache names an LFS blob by that sha256), small files against their git blob id. A mismatch
  removes the bad blob from the cache and stops with one line.
- ``.bin`` weights are read with ``torch.load(weights_only=True)`` (no pickled code runs) and
  written as ``model.safetensors``; shards are merged into one file, which is what
  ``prunemem.checkpoints.load_model`` and the mask code read.
- Resuming: a transfer cut mid-way is resumed by huggingface_hub with a Range request, and a
  rerun fetches only the files not yet in the cache (huggingface_hub 2.4 discards the partial
  file of a killed process, so that one file starts over; on Xet-backed repos hf_xet's chunk
  cache keeps what arrived).
- With ``HF_HUB_OFFLINE=1`` everything comes from the cache; when it is not there, one line says
  which ``hf download`` to run where the hub is reachable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from prunemem.errors import PrunememError
from prunemem.provenance import read_json, record, sha256_file, write_json

log = logging.getLogger(__name__)

def _transport_errors() -> tuple[type[Exception], ...]:
    """Failures to reach the hub: OS errors and the HTTP client's transport errors.

    huggingface_hub ~=2.4 (pinned) talks through httpx2, whose errors are not OSErrors.
    """
    import httpx2

    return (OSError, httpx2.TransportError)


_TRANSPORT_ERRORS = _transport_errors()
AUX_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
WEIGHT_FORMATS = (("model.safetensors", "model.safetensors.index.json"),
                  ("pytorch_model.bin", "pytorch_model.bin.index.json"))


def _hub():
    import huggingface_hub
    from huggingface_hub import constants

    return huggingface_hub, constants


def prefetch_hint(repo: str, revision: str) -> str:
    _, constants = _hub()
    return (f"pre-fetch it where the hub is reachable with `HF_HOME={constants.HF_HOME} hf download {repo} "
            f"--revision {revision}` and bring that cache here (or unset HF_HUB_OFFLINE)")


def git_blob_sha1(path: Path) -> str:
    """The git object id of a file, which the hub lists for files not stored in LFS."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def resolve(repo: str, revision: str, cache_dir: str | None = None, repo_type: str = "model",
            hint: str | None = None) -> tuple[str, dict[str, dict], bool]:
    """(commit sha, {file: expected hashes}, offline) for ``repo`` at ``revision``.

    Online the listing comes from the hub with its LFS metadata; offline from the cached
    snapshot, whose blob names are the same hashes. ``hint`` is what to run when the cache
    lacks it (default: the ``hf download`` of a model).
    """
    hf, constants = _hub()
    hint = hint or prefetch_hint(repo, revision)
    if constants.HF_HUB_OFFLINE:
        return (*_resolve_cached(repo, revision, cache_dir, repo_type, hint), True)
    from huggingface_hub.errors import (
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        info = hf.HfApi().repo_info(repo, repo_type=repo_type, revision=revision, files_metadata=True)
    except RevisionNotFoundError:
        raise PrunememError(f"{repo}: no revision {revision!r} on {constants.ENDPOINT}") from None
    except RepositoryNotFoundError:
        raise PrunememError(f"{repo}: no such {repo_type} on {constants.ENDPOINT} (or it is private or gated)") from None
    except HfHubHTTPError as err:
        raise PrunememError(f"{repo}@{revision}: the hub answered {str(err).splitlines()[0]}") from None
    except _TRANSPORT_ERRORS as err:  # no route to the hub: the cache may still have it
        log.warning("hub unreachable (%s); trying the cache", err)
        try:
            return (*_resolve_cached(repo, revision, cache_dir, repo_type, hint), True)
        except PrunememError:
            raise PrunememError(f"{repo}@{revision}: the hub is unreachable ({err.__class__.__name__}) and the "
                                f"cache does not have it; {hint}") from None
    files = {}
    for s in info.siblings or []:
        files[s.rfilename] = ({"size": s.size, "sha256": s.lfs.sha256, "lfs": True} if s.lfs
                              else {"size": s.size, "git_oid": s.blob_id, "lfs": False})
    return info.sha, files, False


def cached_snapshot(repo: str, revision: str, cache_dir: str | None, repo_type: str = "model") -> Path | None:
    """The cached snapshot directory of ``repo`` at ``revision`` (a ref such as ``main`` or a commit sha)."""
    from huggingface_hub.file_download import repo_folder_name

    _, constants = _hub()
    root = Path(cache_dir or constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type=repo_type)
    ref = root / "refs" / revision
    sha = ref.read_text().strip() if ref.is_file() else revision
    snapshot = root / "snapshots" / sha
    return snapshot if snapshot.is_dir() else None


def _resolve_cached(repo: str, revision: str, cache_dir: str | None, repo_type: str = "model",
                    hint: str | None = None) -> tuple[str, dict[str, dict]]:
    _, constants = _hub()
    snapshot = cached_snapshot(repo, revision, cache_dir, repo_type)
    if snapshot is None or (repo_type == "model" and not (snapshot / "config.json").is_file()):
        raise PrunememError(f"{repo}@{revision} is not in the Hugging Face cache "
                            f"({cache_dir or constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE=1; "
                            f"{hint or prefetch_hint(repo, revision)}")
    files = {}
    for path in sorted(snapshot.rglob("*")):
        if path.is_file():
            etag = Path(os.path.realpath(path)).name
            name = path.relative_to(snapshot).as_posix()
            files[name] = ({"sha256": etag, "lfs": True} if len(etag) == 64 else {"git_oid": etag, "lfs": False})
    return snapshot.name, files


def choose_files(files: dict[str, dict], repo: str, revision: str, offline: bool) -> tuple[list[str], str, str]:
    """(auxiliary files, weights format, weights entry) to fetch: safetensors first, then .bin."""
    for single, index in WEIGHT_FORMATS:
        for entry in (single, index):
            if entry in files:
                if "config.json" not in files:
                    break
                return [f for f in AUX_FILES if f in files], single, entry
    where = "the cached snapshot" if offline else "the revision"
    hint = f"; {prefetch_hint(repo, revision)}" if offline else ""
    raise PrunememError(f"{repo}@{revision}: {where} has no config.json with model.safetensors or "
                        f"pytorch_model.bin (files: {', '.join(sorted(files)) or 'none'}){hint}")


def download(repo: str, revision: str, filename: str, sha: str, cache_dir: str | None, repo_type: str = "model",
             hint: str | None = None) -> Path:
    """One file of ``repo`` at the resolved commit ``sha`` into the cache (resumed when cut); its cached path."""
    hf, _ = _hub()
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = Path(hf.hf_hub_download(repo, filename, revision=revision, cache_dir=cache_dir, repo_type=repo_type))
    except LocalEntryNotFoundError:
        raise PrunememError(f"{repo}@{revision}: {filename} is not in the cache and HF_HUB_OFFLINE=1; "
                            f"{hint or prefetch_hint(repo, revision)}") from None
    except (HfHubHTTPError, *_TRANSPORT_ERRORS) as err:
        raise PrunememError(f"{repo}@{revision}: download of {filename} failed ({str(err).splitlines()[0]}); "
                            "rerun to resume, files already in the cache are kept") from None
    if sha not in path.parts:
        raise PrunememError(f"{repo}@{revision}: {filename} came from snapshot {path.parent.name}, not the "
                            f"resolved commit {sha} (the revision moved during the download); rerun")
    return path


def verify(path: Path, expected: dict, repo: str, filename: str) -> str:
    """Check a cached file against the hub's hashes; on mismatch remove it from the cache and stop."""
    if expected["lfs"]:
        actual, want = sha256_file(path), expected["sha256"]
    else:
        actual, want = git_blob_sha1(path), expected.get("git_oid")
    if want is not None and actual != want:
        blob = Path(os.path.realpath(path))
        path.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
        kind = "sha256" if expected["lfs"] else "git blob id"
        raise PrunememError(f"{repo}/{filename}: {kind} {actual[:12]}... does not match the hub's {want[:12]}...; "
                            f"removed the corrupt file from the cache ({blob}); rerun to fetch it again")
    return actual


def fetch_checkpoint(repo: str, revision: str, out_dir: str | Path, params: dict,
                     cache_dir: str | None = None) -> Path:
    """Resolve, fetch, verify and (for .bin) convert ``repo@revision`` into ``out_dir``."""
    from prunemem.identity import CHECKPOINT_PROVENANCE as PROVENANCE, WEIGHTS
    from prunemem.provenance import AtomicDir

    hf, constants = _hub()
    sha, listing, offline = resolve(repo, revision, cache_dir)
    aux, fmt, entry = choose_files(listing, repo, revision, offline)
    names = [*aux, entry]
    paths = {name: download(repo, revision, name, sha, cache_dir) for name in names}
    weights = [entry]
    if entry.endswith(".index.json"):
        weights = sorted(set(json.loads(paths[entry].read_text())["weight_map"].values()))
        missing = [s for s in weights if s not in listing]
        if missing:
            raise PrunememError(f"{repo}@{revision}: {entry} names {missing[0]}, which the revision does not have")
        paths.update({s: download(repo, revision, s, sha, cache_dir) for s in weights})
    hashes = {name: verify(path, listing[name], repo, name) for name, path in paths.items()}
    log.info("%s@%s = %s: %s verified", repo, revision, sha, ", ".join(paths))

    out_dir = Path(out_dir)
    with AtomicDir(out_dir) as tmp:
        for name in aux:
            shutil.copyfile(paths[name], tmp / name)
        conversion = _write_weights([paths[n] for n in weights], fmt, tmp / WEIGHTS, tmp / "config.json")
        prov = record("checkpoint", {f"hub:{repo}@{sha}/{n}": h for n, h in hashes.items()}, params)
        prov.update(
            source="hub", repo=repo, revision=revision, commit_sha=sha, endpoint=constants.ENDPOINT,
            offline=offline, cache_dir=cache_dir or constants.HF_HUB_CACHE, huggingface_hub=hf.__version__,
            files={n: {**listing[n], "verified": hashes[n]} for n in paths}, weights_from=fmt, **conversion,
            checkpoint_sha256=sha256_file(tmp / WEIGHTS),
        )
        write_json(tmp / PROVENANCE, prov)
    return out_dir


def _write_weights(sources: list[Path], fmt: str, out: Path, config_path: Path) -> dict:
    """One ``model.safetensors``: a single safetensors file copied, shards merged, .bin converted.

    A file saved from the bare transformer (GPT-2's ``h.0.attn.c_attn.weight``, no ``transformer.``)
    is renamed to the causal LM's parameter names, which are the keys masks and transforms use.
    """
    expected, body, saved_as = _expected_keys(config_path)
    if fmt == "model.safetensors" and len(sources) == 1 and not _bare_keys(sources[0], expected, body):
        shutil.copyfile(sources[0], out)
        return {"conversion": None}
    import torch
    from safetensors.torch import load_file, save_file

    tensors: dict = {}
    for src in sources:
        if fmt == "model.safetensors":
            tensors.update(load_file(src))
        else:
            try:  # mmap: shards stay file-backed instead of filling memory
                tensors.update(torch.load(src, map_location="cpu", weights_only=True, mmap=True))
            except RuntimeError:  # a pre-zip (legacy) torch file cannot be memory-mapped
                tensors.update(torch.load(src, map_location="cpu", weights_only=True))
    for file_prefix, module_prefix in saved_as:  # Pythia's .bin names the unembedding embed_out, the module lm_head
        tensors = {module_prefix + k[len(file_prefix):] if k.startswith(file_prefix) else k: v
                   for k, v in tensors.items()}
    renamed = {k: f"{body}.{k}" for k in tensors if k not in expected and f"{body}.{k}" in expected}
    tensors = {renamed.get(k, k): v for k, v in tensors.items()}
    missing = sorted(expected - set(tensors))
    if missing:
        raise PrunememError(f"{sources[0]}: weights lack {missing[0]} ({len(missing)} missing) for the architecture "
                            "in config.json")
    dropped = sorted(set(tensors) - expected)  # old buffers (attention.bias, masked_bias, rotary inv_freq)
    save_file({k: tensors[k].contiguous() for k in sorted(expected)}, str(out), metadata={"format": "pt"})
    how = "torch.load(weights_only=True)" if fmt == "pytorch_model.bin" else "safetensors shards merged"
    if renamed:
        how += f", bare-transformer keys prefixed with '{body}.'"
    return {"conversion": f"{fmt} -> model.safetensors via {how}", "dropped_keys": dropped}


def _bare_keys(path: Path, expected: set[str], body: str) -> bool:
    """Whether a safetensors file names its tensors without the causal LM's body prefix."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return any(k not in expected and f"{body}.{k}" in expected for k in fh.keys())


def _expected_keys(config_path: Path) -> tuple[set[str], str, tuple]:
    """(the state-dict keys of the causal LM config.json describes, its body prefix, the prefixes
    transformers renames on load), built on the meta device (no memory) from the layer map's class;
    a family the map does not know is refused."""
    import torch

    from prunemem import arch

    config = json.loads(config_path.read_text())
    family = arch.for_type(config.get("model_type"), f"{config_path} (prunemem never runs remote code)")
    cls = arch.model_class(family)
    with torch.device("meta"):
        model = cls(cls.config_class.from_dict(config))
    keys = set(model.state_dict())
    if model.config.tie_word_embeddings:
        keys.discard(f"{family.unembed}.weight")
    return keys, family.body, family.saved_as


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
    from prunemem.identity import CHECKPOINT_PROVENANCE as PROVENANCE, TOKENIZER_FILES, WEIGHTS
    from prunemem.provenance import AtomicDir

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
    with AtomicDir(out_dir) as tmp:
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
