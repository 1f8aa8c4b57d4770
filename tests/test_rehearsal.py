"""The real study, rehearsed: the shipped pythia.yaml preset, shrunk, end to end offline against the hub's layouts.

A loopback fake hub publishes EleutherAI/pythia-160m@step143000 (a tiny Pythia-architecture
model, random weights, a byte-level BPE) and monology/pile-uncopyrighted in its real layout
(train/NN.jsonl.zst multi-frame shards, val/test at the root, no dataset card). A "login node"
fills an HF cache from it with the real huggingface_hub code; then, with HF_HUB_OFFLINE=1 as
on a compute node, the whole chain fetch -> checkpoint -> samples -> mask -> evaluate -> report
runs through `snakemake` in one clone and `dvc repro` in another: the bytes agree, and
`prunemem audit` (dvc status included) passes in both.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time

import pytest
import yaml
from conftest import REPO, md5s, venv_env
from fakehub import FakeHub
from mirror import pile_dataset, prefill_cache, pythia_model_files, shrink_pythia_preset

from prunemem import embedded

MODEL, REPO_ID, REV = "pythia-160m", "EleutherAI/pythia-160m", "step143000"


def run(cwd, env, *cmd):
    done = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, f"{cmd}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done


def together(env, *jobs):
    """Run (cwd, command) pairs at once; each must succeed."""
    procs = [(cmd, subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
             for cwd, cmd in jobs]
    for cmd, proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{cmd}: {out[-3000:]}"


def project_copy(to):
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in filter(None, files.split("\0")):
        if (REPO / name).is_file():
            (to / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, to / name, follow_symlinks=False)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    root = tmp_path_factory.mktemp("rehearsal")
    docs = [d["text"] for d in embedded.load_corpus()]
    server = FakeHub()
    server.add(REPO_ID, REV, pythia_model_files(docs[400:900]))
    server.add("monology/pile-uncopyrighted", "main",
               pile_dataset([docs[:100], docs[100:200], docs[200:300]], docs[300:380], docs[380:400]),
               repo_type="dataset")
    preset = yaml.safe_load((REPO / "workflow" / "configs" / "pythia.yaml").read_text())
    params = shrink_pythia_preset(preset, MODEL)
    prefill_cache(server, root / "hf" / "hub", REPO_ID, REV, params, MODEL)
    yield root, server, params
    server.close()


def test_the_shrunk_preset_runs_offline_through_snakemake_and_dvc_and_audits(mirror):
    root, server, params = mirror
    server.requests.clear()
    env = {**venv_env(), "HF_HOME": str(root / "hf"), "HF_HUB_OFFLINE": "1"}
    origin = root / "origin"
    project_copy(origin)
    (origin / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(origin, env, "prunemem", "dvc-yaml")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "rehearsal"]):
        run(origin, env, *cmd)
    clone = root / "clone"
    run(root, env, "git", "clone", "-q", str(origin), str(clone))

    # The two entry points run side by side (independent repositories): the suite waits for the slower one.
    start = time.perf_counter()
    together(env, (origin, [sys.executable, "-m", "snakemake", "--cores", "1"]), (clone, ["dvc", "repro", "-q"]))
    print(f"rehearsal: snakemake and dvc repro {time.perf_counter() - start:.0f} s")
    assert server.requests == []  # offline: nothing reached the hub
    together(env, (origin, ["prunemem", "audit"]), (clone, ["prunemem", "audit"]))
    built = {k: v for k, v in md5s(origin).items() if ".snakemake_timestamp" not in k}
    assert built == md5s(clone)  # two entry points, the same bytes
    assert {"data/fetched/pythia-160m.json", "reports/results.csv",
            "data/masks/pythia-160m/global/0.1.safetensors"} <= set(built)
    fetched = json.loads((origin / "data/fetched/pythia-160m.json").read_text())
    assert fetched["sources"]["members"]["offline"] is True
    assert [f["name"] for f in fetched["sources"]["members"]["files"]] == ["train/00.jsonl.zst", "train/01.jsonl.zst"]
    sample_prov = json.loads((origin / "data/samples/pythia-160m/provenance.json").read_text())
    assert sample_prov["sources"]["members"]["resolved_sha"] == server.repos["datasets/monology/pile-uncopyrighted"][
        "main"][0]
    ckpt = json.loads((origin / "data/checkpoints/pythia-160m/provenance.json").read_text())
    assert ckpt["commit_sha"] == server.repos[REPO_ID][REV][0] and ckpt["offline"] is True

    # A partial run (--until) must not `dvc commit` half a study, and says why in one line.
    lock = (origin / "dvc.lock").read_text()
    (origin / "reports" / "report.html").unlink()
    partial = run(origin, env, sys.executable, "-m", "snakemake", "--cores", "1", "--until", "evaluate")
    assert re.search(r"^total\s+0$", partial.stderr, re.MULTILINE), partial.stderr[-3000:]  # all fresh, fetch too
    assert "prunemem: dvc.lock not updated: 1 of " in partial.stderr and "e.g. reports/report.html" in partial.stderr
    assert (origin / "dvc.lock").read_text() == lock
