"""kill -9 in the middle of a mask job and of an evaluate job, then rerun.

Two kinds of kill: a real SIGKILL sent once the job is computing (it may land anywhere in the
remaining work), and a SIGKILL the job sends itself at the worst moment, with its temporary
file fully written and about to be renamed. Either way no final name may hold anything but
the complete artifact, and the rerun must give the bytes of an uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import venv_env

from .conftest import cli

SPARSEGPT = ("mask", "--model", "tiny", "--method", "sparsegpt", "--level", "0.5")
DENSE = ("evaluate", "--model", "tiny", "--method", "dense", "--level", "0")
MASK_OUT = [Path("data/masks/tiny/sparsegpt/0.5.safetensors")]
EVAL_OUT = [Path("data/metrics/tiny/dense/0/memorization.parquet"), Path("data/metrics/tiny/dense/0/summary.json")]

# Runs the CLI with os.replace patched to SIGKILL the process just before a given final name is
# created: the artifact's bytes sit complete in the temporary file, nothing is renamed yet.
KILL_AT_RENAME = """
import os, signal, sys
replace = os.replace
def kill_before(src, dst, *args, **kwargs):
    if os.path.basename(os.fspath(dst)) == sys.argv[1]:
        os.kill(os.getpid(), signal.SIGKILL)
    return replace(src, dst, *args, **kwargs)
os.replace = kill_before
from prunemem.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _kill_when(root: Path, argv: tuple[str, ...], marker: bytes, timeout: float = 120) -> None:
    """Start ``prunemem argv``; SIGKILL it as soon as ``marker`` appears on its stderr (work under way)."""
    exe = Path(sys.executable).with_name("prunemem")
    proc = subprocess.Popen([str(exe), "--params", "params.yaml", *argv], cwd=root, env=venv_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen, deadline = b"", time.monotonic() + timeout
    try:
        while marker not in seen:
            chunk = os.read(proc.stderr.fileno(), 4096)  # progress bars end in \r, not \n: read raw
            assert chunk and time.monotonic() < deadline, f"job ended before {marker!r}: {seen[-2000:]!r}"
            seen += chunk
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def _assert_complete_or_absent(root: Path, reference: Path, outputs: list[Path]) -> None:
    for rel in outputs:
        if (root / rel).exists():
            assert (root / rel).read_bytes() == (reference / rel).read_bytes(), f"{rel} is not the complete artifact"


def _rerun_and_compare(root: Path, reference: Path, argv: tuple[str, ...], outputs: list[Path]) -> None:
    assert cli(*argv) == 0
    for rel in outputs:
        assert (root / rel).read_bytes() == (reference / rel).read_bytes(), rel
    assert not list((root / "data").rglob("*.tmp")), "a killed job's temporary file outlived the rerun"


def test_killed_mask_job(study, study_dir):
    (study / MASK_OUT[0]).unlink()
    _kill_when(study, SPARSEGPT, b"computing from checkpoint")
    _assert_complete_or_absent(study, study_dir, MASK_OUT)
    _rerun_and_compare(study, study_dir, SPARSEGPT, MASK_OUT)


def test_killed_evaluate_job(study, study_dir):
    for rel in EVAL_OUT:
        (study / rel).unlink()
    _kill_when(study, DENSE, b"evaluate:")  # the first progress bar: scoring has started
    _assert_complete_or_absent(study, study_dir, EVAL_OUT)
    _rerun_and_compare(study, study_dir, DENSE, EVAL_OUT)


def _kill_at_rename(root: Path, name: str, argv: tuple[str, ...]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", KILL_AT_RENAME, name, "--params", "params.yaml", *argv], cwd=root,
                          env=venv_env(), capture_output=True, timeout=120, check=False)


def test_mask_killed_between_write_and_rename(study, study_dir):
    final = study / MASK_OUT[0]
    final.unlink()
    run = _kill_at_rename(study, final.name, SPARSEGPT)
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    assert not final.exists()
    (temp,) = final.parent.glob(f".{final.name}.*.tmp")  # the complete bytes, under a name no one reads
    assert temp.read_bytes() == (study_dir / MASK_OUT[0]).read_bytes()
    _rerun_and_compare(study, study_dir, SPARSEGPT, MASK_OUT)


def test_evaluate_killed_between_its_two_outputs(study, study_dir):
    for rel in EVAL_OUT:
        (study / rel).unlink()
    run = _kill_at_rename(study, "summary.json", DENSE)
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    assert not (study / EVAL_OUT[1]).exists()  # the job's completion record is missing, so it reruns
    _assert_complete_or_absent(study, study_dir, EVAL_OUT)
    assert list((study / EVAL_OUT[1]).parent.glob(".summary.json.*.tmp"))
    _rerun_and_compare(study, study_dir, DENSE, EVAL_OUT)


def test_only_dead_writers_temp_files_are_removed(tmp_path):
    """A concurrent writer's temporary file (live pid, or another host's) must survive the cleanup."""
    import socket

    from prunemem.provenance import remove_stale_temps

    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    final = tmp_path / "0.5.safetensors"
    live = tmp_path / f".{final.name}.{host}-{os.getpid()}.a1.tmp"
    stale = tmp_path / f".{final.name}.{host}-{dead.pid}.b2.tmp"
    stale_dir = tmp_path / f".{final.name}.{host}-{dead.pid}.c3.old.tmp"
    remote = tmp_path / f".{final.name}.elsewhere-{dead.pid}.d4.tmp"
    other = tmp_path / f".1.safetensors.{host}-{dead.pid}.e5.tmp"
    for path in (live, stale, remote, other):
        path.write_bytes(b"partial")
    stale_dir.mkdir()
    remove_stale_temps(final)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (live, remote, other))
