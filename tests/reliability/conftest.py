"""A small study built once through the CLI verbs; every test gets its own copy to break.

The grid is the e2e test's SMALL config cut to one pruning level of two methods (one of them
calibrated) and one quantizer, so the whole chain (checkpoint, samples, mask, transform,
evaluate, report) exists on disk in about 15 s.
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SMALL, venv_env, write_params

from prunemem.cli import main

PARAMS = copy.deepcopy(SMALL)
PARAMS["prune"].update(methods=["global", "sparsegpt"], levels=[0.5])
PARAMS["compress"] = {"quantize": {"int8": {"bits": 8, "group_size": 0, "symmetric": True}}}
del PARAMS["downstream"]  # these jobs' failure behaviour; the downstream stage's own is tests/test_downstream.py
# One training thread: two threads spin-wait on each other when other jobs share the two cores
# (measured: 13 s with one thread, 79 s with two, on a loaded 2-core machine).
PARAMS["embedded"]["training"]["threads"] = 1

JOBS = [["checkpoint", "--model", "tiny"], ["samples", "--model", "tiny"],
        ["mask", "--model", "tiny", "--method", "global", "--level", "0.5"],
        ["mask", "--model", "tiny", "--method", "sparsegpt", "--level", "0.5"],
        ["transform", "--model", "tiny", "--method", "int8", "--level", "0"],
        *(["evaluate", "--model", "tiny", "--method", m, "--level", lv]
          for m, lv in (("dense", "0"), ("global", "0.5"), ("sparsegpt", "0.5"), ("int8", "0"))),
        ["report"]]


@pytest.fixture(autouse=True)
def _restore_torch_state():
    """In-process CLI calls set torch's thread count and deterministic mode; other tests expect theirs."""
    threads, strict = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(strict)


def cli(*argv: str, params: tuple[str, ...] = ("params.yaml",)) -> int:
    """Run one verb in this process, in the current directory (the plan's root)."""
    return main([arg for p in params for arg in ("--params", p)] + list(argv))


@pytest.fixture(scope="session")
def study_dir(tmp_path_factory) -> Path:
    """The built study (read-only by convention: copy it with the ``study`` fixture before changing it)."""
    root = tmp_path_factory.mktemp("reliability-study")
    write_params(root / "params.yaml", PARAMS)
    threads, strict = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with contextlib.chdir(root):
        for job in JOBS:
            assert cli(*job) == 0, job
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(strict)
    return root


@pytest.fixture
def study(study_dir, tmp_path, monkeypatch) -> Path:
    """A private copy of the study; the test runs inside it."""
    root = tmp_path / "study"
    shutil.copytree(study_dir, root, symlinks=True)
    monkeypatch.chdir(root)
    return root


def run_prunemem(root: Path, *argv: str, preexec_fn=None, timeout: int = 120) -> subprocess.CompletedProcess:
    """The console script in a fresh process, as Snakemake and DVC run it."""
    exe = Path(sys.executable).with_name("prunemem")
    return subprocess.run([str(exe), *argv], cwd=root, env=venv_env(), capture_output=True, text=True,
                          timeout=timeout, preexec_fn=preexec_fn, check=False)


def error_line(stderr: str) -> str:
    """The single ``prunemem: error:`` line, asserting there is exactly one and no traceback."""
    assert "Traceback" not in stderr, stderr[-2000:]
    lines = [line for line in stderr.splitlines() if line.startswith("prunemem: error:")]
    assert len(lines) == 1, stderr[-2000:]
    return lines[0]
