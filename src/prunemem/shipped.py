"""The shipped embedded checkpoint: trained once by ``prunemem checkpoint``, pinned, copied after verification.

    prunemem checkpoint --model tiny                     # verified copy of the shipped model (seconds)
    prunemem checkpoint --model tiny --retrain --ship    # retrain from params.yaml's embedded: and re-ship it

Training the default embedded model takes tens of minutes on 2 CPU cores, so the repository
carries the result of one run of the project's own training code under
``resources/embedded-tiny/``, with ``resources/embedded-tiny.json`` pinning:

- ``recipe_digest``: the digest of the ``embedded:`` params it was trained from; only a params
  file with exactly that recipe gets the copy, any other trains its own model;
- ``files``: the sha256 of every shipped file, checked before anything is copied;
- ``training_rows_sha256``: the training stream is not shipped (it is a pure function of the
  corpus, the shipped tokenizer and the recipe); it is rebuilt and must hash to this;
- ``trained``: code version, machine, threads, time and wall time of the run that made it.

The verification is ``verify_pinned``, the same check a hub checkpoint's pinned files get; the
verified copy itself is ``prunemem.checkpoints.copy_shipped``. This module is torch-free.
"""

from __future__ import annotations

import datetime
import logging
import os
import platform
import shutil
from importlib import resources
from pathlib import Path

from prunemem import embedded
from prunemem.errors import PrunememError
from prunemem.provenance import digest_json, read_json, sha256_file, write_json

log = logging.getLogger(__name__)

SHIPPED = "resources/embedded-tiny"
PINS = "resources/embedded-tiny.json"
RETRAIN = "prunemem checkpoint --model tiny --retrain --ship"


def shipped_dir() -> Path:
    return Path(str(resources.files("prunemem").joinpath(SHIPPED)))


def pins_path() -> Path:
    return Path(str(resources.files("prunemem").joinpath(PINS)))


def verify_pinned(path: Path, expected: str, restore: str) -> None:
    """Stop, in one line naming the file, the pinned hash and how to restore it, unless ``path`` hashes to ``expected``."""
    actual = sha256_file(path) if path.is_file() else "missing"
    if actual != expected:
        raise PrunememError(f"{path}: sha256 {actual} does not match the pinned {expected}; restore it with {restore}")


def restore_hint(path: Path) -> str:
    return f"`git checkout -- {path}` or retrain it (`{RETRAIN}`)"


def matching_pins(recipe: dict) -> dict | None:
    """The pins of the shipped checkpoint when it was trained from ``recipe``, else None."""
    path = pins_path()
    if not path.is_file():
        return None
    pins = read_json(path, "shipped checkpoint pins")
    return pins if pins.get("recipe_digest") == digest_json(recipe) else None


def ship(checkpoint_dir: Path, recipe: dict, wall_s: float, threads: int, commit: str | None = None) -> Path:
    """Copy a freshly trained checkpoint into the package and pin it (the ``--ship`` of ``prunemem checkpoint``).

    ``commit`` is the code version the training ran (read before it started: the tree may move on
    during an hour of training); by default the current one.
    """
    from prunemem.identity import CHECKPOINT_PROVENANCE as PROVENANCE
    from prunemem.provenance import git_commit

    prov = read_json(checkpoint_dir / PROVENANCE, "checkpoint provenance")
    target = shipped_dir()
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    names = sorted(p.name for p in checkpoint_dir.iterdir() if p.is_file() and p.name != embedded.TRAINING_ROWS)
    for name in names:
        shutil.copyfile(checkpoint_dir / name, target / name)
    pins = {
        "recipe_digest": digest_json(recipe),
        "checkpoint_sha256": prov["checkpoint_sha256"],
        "training_rows_sha256": prov["training_rows_sha256"],
        "files": {name: sha256_file(target / name) for name in names},
        "trained": {"command": RETRAIN, "prunemem": prov["environment"]["prunemem"], "git_commit": commit or git_commit(),
                    "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} "
                               f"{platform.release()}", "device": prov["environment"]["device"],
                    "threads": threads, "wall_s": round(wall_s, 1),
                    "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")},
        "training": prov.get("training", {}),
    }
    write_json(pins_path(), pins)
    log.info("shipped %s and pinned it in %s", target, pins_path())
    return target
