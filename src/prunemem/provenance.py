"""Hashing, atomic writes and provenance records shared by every stage.

Every artifact is written to a temporary name in its final directory, flushed to disk and
renamed into place, so a killed job never leaves a half-written file under a final name.
Temporary names carry the writer's host and pid (``.{name}.{host}-{pid}.XXXX.tmp``); the next
write of the same artifact deletes those whose writer is dead, so leftovers of a killed job
never accumulate and, being dot-files, are never taken for outputs.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from prunemem import __version__
from prunemem.errors import PrunememError

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


def temp_prefix(final: Path) -> str:
    """The prefix of this process's temporary names for ``final``: host and pid identify the writer."""
    return f".{final.name}.{socket.gethostname()}-{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(final: Path) -> None:
    """Delete temporary files or directories of ``final`` left by dead writers on this host.

    Writers on other hosts (a shared filesystem) cannot be checked, so theirs are left alone.
    """
    host = f".{final.name}.{socket.gethostname()}-"
    for path in final.parent.glob(f"{glob.escape(host)}*.tmp"):
        pid = path.name[len(host):].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def unwritable(path: str | Path, err: OSError) -> PrunememError:
    """The one-line error for an output that cannot be written (read-only, disk full, quota)."""
    return PrunememError(f"{path}: cannot write output ({err.strerror or err})")


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; fsync and rename it into place only on success."""
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(final)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(final), suffix=".tmp", dir=final.parent)
    except OSError as err:
        raise unwritable(final.parent, err) from err
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~umask())  # mkstemp creates 0600; artifacts are shared files
        # Data reach the disk before the name does: a node crash cannot leave an empty final file.
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, final)
    except OSError as err:
        raise unwritable(final, err) from err
    finally:
        tmp_path.unlink(missing_ok=True)


class AtomicDir:
    """Build a directory under a temporary name; swap it into place only when complete.

        with AtomicDir(Path("data/checkpoints/tiny")) as tmp:
            (tmp / "config.json").write_text(...)
    """

    def __init__(self, final: Path):
        self.final = Path(final)

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


def read_json(path: str | Path, what: str) -> Any:
    """Parse a JSON artifact; a missing or corrupt file is one line naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PrunememError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PrunememError(f"{path}: corrupt {what} ({err})") from None


def read_parquet(path: str | Path, what: str):
    """Read a parquet artifact with polars; a missing, truncated or corrupt file is one line naming it."""
    import polars as pl

    path = Path(path)
    if not path.is_file():
        raise PrunememError(f"{path}: {what} not found")
    try:
        return pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as err:
        raise PrunememError(f"{path}: corrupt {what} ({str(err).splitlines()[0]})") from None


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_parquet(frame, path: str | Path) -> None:
    """Write a polars frame atomically, zstd-compressed, without statistics (byte-stable)."""
    import polars as pl

    with atomic_path(path) as tmp:
        try:
            frame.write_parquet(tmp, compression="zstd", statistics=False)
        except pl.exceptions.ComputeError as err:  # polars reports I/O failures (disk full) this way
            raise PrunememError(f"{path}: cannot write output ({str(err).splitlines()[0]})") from None


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
    # Only a stage that loaded torch computed on a device. Importing torch just to name one costs
    # every torch-free job (fetch, checkpoint adoption, report, audit) ~2.5 s (bench/README.md,
    # "Per-job overhead"), so such a stage records none.
    torch = sys.modules.get("torch")
    if torch is None:
        device = None
    else:
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
