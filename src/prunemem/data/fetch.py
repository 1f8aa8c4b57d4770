"""Fetch the files a hub dataset's sample sources read, like a checkpoint: pinned, verified, cached.

    prunemem --params workflow/configs/pythia.yaml fetch --model pythia-160m   # data/fetched/pythia-160m.json
    # offline compute nodes: run it where the hub is reachable, with the HF_HOME they will use

A ``kind: hf`` source names a dataset, a revision and a split; ``split_files`` maps each split
to a glob of the repo's files (``{train: "train/*.jsonl.zst", validation: "val.jsonl.zst"}``),
so no dataset card or ``datasets`` script is needed and nothing is guessed.

- The revision is resolved to its commit sha, which is recorded; every file is downloaded at
  that revision into the Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``) with
  huggingface_hub (resumable; a rerun fetches only what is missing) and verified against the
  hub's sha256 (LFS) or git blob id, exactly as checkpoints are (``prunemem.hub``).
- Only the files the source reads are fetched: the split's files in name order, stopping at
  the first file that brings the count of documents to ``max_documents`` (the documents are
  counted with the same reader that sampling uses, so the count is the one sampling sees).
- ``HF_HUB_OFFLINE=1``: the listing and hashes come from the cached snapshot (its blob names are
  the hashes); a file the cache lacks is one line naming repo, revision, file and this command.
- The record (``data/fetched/<model>.json``) lists, per role, the commit sha and every file
  with its hash and document count; ``prunemem samples`` reads those files from the cache with
  prunemem's own readers (``prunemem.data.sources.read_texts``) and records the same.
"""

from __future__ import annotations

import fnmatch
import logging
from pathlib import Path

from prunemem.data.layout import file_format, hf_specs
from prunemem.errors import PrunememError
from prunemem.identity import fetched_hash, read_fetch_record  # noqa: F401 (torch-free readers of the record)
from prunemem.provenance import digest_json, record, write_json

log = logging.getLogger(__name__)


def split_pattern(spec: dict, where: str) -> str:
    files = spec["split_files"]
    if spec["split"] not in files:
        raise PrunememError(f"{where}.split: {spec['split']!r} is not a key of split_files; allowed: "
                            f"{', '.join(sorted(files))}")
    return files[spec["split"]]


def fetch_source(spec: dict, where: str, command: str, cache_dir: str | None = None) -> dict:
    """Resolve, download and verify the files one hf source reads; what the record says about them."""
    from prunemem.data.sources import fetch_hint, read_texts
    from prunemem.hub import download, resolve, verify

    repo, revision = spec["dataset"], spec["revision"]
    hint = fetch_hint(command)
    sha, listing, offline = resolve(repo, revision, cache_dir, repo_type="dataset", hint=hint)
    pattern = split_pattern(spec, where)
    names = sorted(n for n in listing if fnmatch.fnmatchcase(n, pattern))
    if not names:
        where_ = "the cached snapshot" if offline else "the revision"
        raise PrunememError(f"{where}.split_files.{spec['split']}: {pattern!r} matches no file of {repo}@{sha[:12]} "
                            f"({where_} has {', '.join(sorted(listing)[:8]) or 'none'}){'; ' + hint if offline else ''}")
    limit = spec.get("max_documents")
    files, total = [], 0
    for name in names:
        path = download(repo, revision, name, sha, cache_dir, repo_type="dataset", hint=hint)
        digest = verify(path, listing[name], repo, name)
        need = None if limit is None else limit - total
        count = 0
        for count, _ in enumerate(read_texts(path, file_format(spec, name), spec.get("text_field")), start=1):
            if need is not None and count >= need:
                break
        total += count
        files.append({"name": name, "bytes": path.stat().st_size, "documents": count,
                      **({"sha256": digest} if listing[name]["lfs"] else {"git_oid": digest})})
        log.info("%s@%s/%s: %d documents, %d bytes, verified", repo, sha[:12], name, count, path.stat().st_size)
        if limit is not None and total >= limit:
            break
    if offline and limit is not None and total < limit and len(files) == len(names):
        log.warning("%s: the cached files hold %d documents, fewer than max_documents %d; the hub may have more "
                    "(%s)", where, total, limit, hint)
    return {"dataset": repo, "revision": revision, "commit_sha": sha, "split": spec["split"], "pattern": pattern,
            "offline": offline, "files": files, "documents": total,
            "not_fetched": [n for n in names if n not in {f["name"] for f in files}]}


def fetch(params: dict, model: str, out: str | Path, command: str, cache_dir: str | None = None,
          prov_params: dict | None = None) -> Path:
    """Fetch every hf sample source of ``model``; write the record to ``out`` (atomically, last).

    ``prov_params``: the params the fetch job reads, ``Plan.stage_params("fetch", model)`` (by
    default the same allow-list: each hf source under its dotted key).
    """
    from huggingface_hub import constants

    specs = hf_specs(params["models"][model])
    if not specs:
        raise PrunememError(f"--model: {model} has no kind: hf sample source; nothing to fetch")
    sources = {role: fetch_source(spec, f"models.{model}.{role}", command, cache_dir) for role, spec in specs.items()}
    if prov_params is None:
        prov_params = {f"models.{model}.{role}": spec for role, spec in specs.items()}
    prov = record("fetch", {}, prov_params)
    prov.update(sources=sources, sources_sha256=sources_digest(sources), cache_dir=cache_dir or constants.HF_HUB_CACHE,
                endpoint=constants.ENDPOINT)
    write_json(out, prov)
    return Path(out)


def sources_digest(sources: dict) -> str:
    """The identity of what was fetched: commit shas and file hashes (not where or when)."""
    return digest_json({role: {"commit_sha": s["commit_sha"],
                               "files": {f["name"]: f.get("sha256", f.get("git_oid")) for f in s["files"]}}
                        for role, s in sources.items()})
