"""The one place that fixes what could change an artifact's bytes between runs: threads and kernels.

Every stage calls :func:`deterministic` before it computes anything. What is controlled, and
what is not, is documented in README.md ("Determinism").
"""

from __future__ import annotations

import os
import sys

import torch


def deterministic(threads: int) -> None:
    """Fixed CPU thread count and deterministic kernels, on CPU and CUDA alike."""
    # cuBLAS picks its reduction split per workspace; a fixed workspace makes it repeatable, and
    # use_deterministic_algorithms raises on CUDA without it. Read when cuBLAS starts, so set first.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(threads)  # CPU reductions are split by thread count: a different count, different bits
    # Raise on any op without a deterministic kernel. torch.use_deterministic_algorithms also sets
    # Inductor's flag, and importing Inductor (torch._dynamo with it) costs ~3 s of CPU per job
    # (bench/README.md, "Per-job overhead"). prunemem compiles nothing, so unless Inductor is
    # already loaded the eager flag alone is set: the same C++ switch the public call sets.
    if "torch._inductor" in sys.modules:
        torch.use_deterministic_algorithms(True)
    else:
        torch._C._set_deterministic_algorithms(True, warn_only=False)
    torch.backends.cudnn.benchmark = False  # autotuning may choose a different kernel on each run


def resolve_device(device: str, dtype: str, key: str) -> tuple[str, torch.dtype]:
    """``auto`` resolved: CUDA when visible; bfloat16 there and float32 on the CPU."""
    from prunemem.errors import PrunememError

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise PrunememError(f"{key}.device: 'cuda' requested but no CUDA device is visible")
    if dtype == "auto":
        dtype = "bfloat16" if device == "cuda" else "float32"
    return device, getattr(torch, dtype)


def progress(iterable=None, desc: str = "", **kwargs):
    """A tqdm progress bar on stderr (so into the rule's log) that updates rarely when stderr is a file."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, mininterval=2.0 if sys.stderr.isatty() else 30.0, leave=False, **kwargs)
