"""Per-job start-up: the CLI verbs that compute nothing with torch never import it.

Every Snakemake job and DVC stage is a fresh `prunemem <verb>` process (under SLURM inside two
Snakemake processes), so an import is paid once per job: torch costs ~1.6 s of CPU, torch's
Inductor (pulled in by ``torch.use_deterministic_algorithms``) ~3 s more, GPT-NeoX's modeling
code ~4 s (bench/README.md, "Per-job overhead"). Each check runs in a fresh interpreter.
"""

from __future__ import annotations

import subprocess
import sys

from conftest import venv_env


def fresh(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=venv_env(), timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


# What the torch-free verbs load: fetch, checkpoint (hub and local), report, audit, validate, dvc-yaml.
TORCH_FREE = ["prunemem.cli", "prunemem.data.fetch", "prunemem.hub", "prunemem.report.html", "prunemem.audit",
              "prunemem.dvcgen", "prunemem.identity", "prunemem.evaluate.mia"]


def test_torch_free_modules_do_not_import_torch():
    first = fresh("import importlib, sys\n"
                  f"for m in {TORCH_FREE!r}:\n"
                  "    importlib.import_module(m)\n"
                  "    if 'torch' in sys.modules:\n"
                  "        print(m); break")
    assert first == "", f"importing {first} loads torch"


def test_a_torch_free_record_names_no_device_and_a_torch_stage_names_its_own():
    assert fresh("import sys; from prunemem.provenance import environment; e = environment(); "
                 "print(e['device'], 'torch' in sys.modules)") == "None False"
    assert fresh("import torch; from prunemem.provenance import environment; print(environment()['device'])"
                 ).startswith(("cpu (", "NVIDIA", "Tesla"))


def test_deterministic_sets_the_flag_without_loading_inductor():
    out = fresh("import sys, torch; from prunemem.runtime import deterministic; deterministic(1); "
                "print(torch.are_deterministic_algorithms_enabled(), torch.get_num_threads(), "
                "'torch._inductor' in sys.modules)")
    assert out == "True 1 False"
    # the switch acts on eager kernels as the public call's does: uninitialised memory is filled with NaN
    assert fresh("import torch; from prunemem.runtime import deterministic; deterministic(1); "
                 "print(bool(torch.empty(64).isnan().all()))") == "True"
