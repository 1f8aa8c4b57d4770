"""An output location that cannot be written stops the run with one line naming it.

Mechanisms are real, not mocked: a directory without write permission (as root, the job runs
without CAP_DAC_OVERRIDE so that permissions bind it too), a file where a directory should be,
and a file-size limit (RLIMIT_FSIZE) that makes the kernel refuse writes the way a full disk or
an exhausted quota does (EFBIG instead of ENOSPC).
"""

from __future__ import annotations

import ctypes
import os
import resource
import shutil
from pathlib import Path

import pytest
from conftest import md5s

from .conftest import cli, error_line, run_prunemem

GLOBAL = ("mask", "--model", "tiny", "--method", "global", "--level", "0.5")
DENSE = ("evaluate", "--model", "tiny", "--method", "dense", "--level", "0")
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE = 24, 1


def _without_dac_override() -> None:
    """In the child before exec: a root process then obeys file permissions like anyone else."""
    if os.geteuid() == 0 and ctypes.CDLL(None, use_errno=True).prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, 0, 0, 0):
        raise OSError(ctypes.get_errno(), "cannot drop CAP_DAC_OVERRIDE")


def _file_size_limit(limit: int):
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # Python ignores SIGXFSZ: writes get EFBIG
    return preexec


def test_read_only_output_directory(study):
    out = study / "data/masks/tiny/global"
    before = md5s(study)
    out.chmod(0o555)
    try:
        run = run_prunemem(study, "--params", "params.yaml", *GLOBAL, preexec_fn=_without_dac_override)
    finally:
        out.chmod(0o755)
    assert run.returncode == 1
    line = error_line(run.stderr)
    assert "data/masks/tiny/global: cannot write output (Permission denied)" in line, line
    assert md5s(study) == before


def test_output_directory_is_a_file(study, capsys):
    shutil.rmtree(study / "data/masks")
    (study / "data/masks").write_text("not a directory\n")
    before = md5s(study)
    assert cli(*GLOBAL) == 1
    line = error_line(capsys.readouterr().err)
    assert "data/masks/tiny/global: cannot write output" in line, line
    assert md5s(study) == before


@pytest.mark.parametrize("argv,culprit", [
    (GLOBAL, "data/masks/tiny/global/0.5.safetensors"),  # our own safetensors writer: an OSError
    (DENSE, "data/metrics/tiny/dense/0/"),  # a batch under .partial/, after its small resume record
], ids=["mask", "evaluate"])
def test_disk_full(study, argv, culprit):
    before = md5s(study)
    run = run_prunemem(study, "--params", "params.yaml", *argv, preexec_fn=_file_size_limit(1000))
    assert run.returncode == 1
    line = error_line(run.stderr)
    assert culprit in line and ": cannot write output" in line and "File too large" in line, line
    # no artifact changes; a resume record under .partial/ (outside every artifact, .dvcignore'd) may stay
    assert {k: v for k, v in md5s(study).items() if "/.partial/" not in k} == before
    assert not list(Path(study, "data").rglob("*.tmp"))
