"""Hashing, atomic writes and provenance records shared by every stage.

Every artifact is written to a temporary name in its final directory and renamed into
place, so a killed job never leaves a half-written file under a final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from prunemem import __version__

_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "polars", "altair")


def umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def digest_json(obj: Any) -> str:
    """Stable sha256 of a JSON-serialisable object (sorted keys, no whitespace)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it into place only on success."""
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    except OSError as err:
        from prunemem.errors import PrunememError

        raise PrunememError(f"{final.parent}: cannot write output ({err.strerror})") from err
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~umask())  # mkstemp creates 0600; artifacts are shared files
        os.replace(tmp_path, final)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_parquet(frame, path: str | Path) -> None:
    """Write a polars frame atomically, zstd-compressed, without statistics (byte-stable)."""
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp, compression="zstd", statistics=False)


def git_commit() -> str | None:
    """The commit of the source tree prunemem runs from, when it is a git checkout."""
    src = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment() -> dict[str, Any]:
    """Code version, package versions and device: what shaped an artifact besides its inputs."""
    versions = {}
    for name in _PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({platform.machine()})"
    return {
        "prunemem": __version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "packages": versions,
        "device": device,
    }


def record(stage: str, inputs: dict[str, str], params: dict[str, Any]) -> dict[str, Any]:
    """A provenance record: input hashes, the resolved params that shaped it, and the environment."""
    return {"stage": stage, "inputs": inputs, "params": params, "params_digest": digest_json(params),
            "environment": environment()}
