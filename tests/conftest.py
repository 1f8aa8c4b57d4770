"""Fixtures that build tiny models and configs on the fly; nothing here touches the network."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]

# A small embedded study: trains in about 10 s on 2 cores and still memorizes its most duplicated canaries.
SMALL = {
    "models": {"tiny": {"source": "embedded"}},
    "embedded": {
        "seed": 0,
        "split": {"heldout": 0.1, "canary_pool": 0.3, "max_documents": 300},
        "tokenizer": {"vocab_size": 512},
        "architecture": {"hidden_size": 128, "num_layers": 2, "num_heads": 4, "seq_len": 64},
        "training": {"steps": 300, "batch_size": 8, "lr": 3.0e-3, "warmup_steps": 10, "weight_decay": 0.0,
                     "threads": 1},  # one thread: 2 stall at their barriers when the cores are shared
        # a model this small memorizes only under heavy duplication
        "canaries": {"tokens": 48, "copies": [0, 32, 256], "per_copy_count": 4},
    },
    "samples": {"seed": 0, "suffix_tokens": 16, "k": [16, 32], "training_members": 8, "perplexity_tokens": 2048,
                "search_members": 4, "calibration": {"sequences": 8, "tokens": 32, "pool": 16}},
    "perplexity": {"window": 64, "stride": 64},
    "prune": {"methods": ["global", "attention", "random", "wanda", "sparsegpt", "sleb", "wanda-2of4", "wanda-ccds",
                          "evop-mem", "adapruner"],
              "levels": [0.5, 0.9], "block_fraction": 0.25, "seed": 0, "ccds": {"clusters": 2},
              "sleb": {"protect_ends": False},  # 2 blocks: the reference's barriers would leave no candidate
              "evop": {"granularity": "sublayer", "population": 4, "generations": 3, "mutation": 0.3, "crossover": 0.8,
                       "elite": 1, "tournament": 2, "lambda": 50.0, "batch_size": 32, "threads": 1, "device": "cpu"},
              # width pruning, searched: a few trials keep the study's added time to seconds
              "width": {"scope": "mlp", "allocation": "uniform", "owl": {"M": 5, "lambda": 0.08}},
              "adapruner": {"trials": 3, "startup_trials": 2, "metrics": ["l1", "wanda"], "allocations": ["uniform"],
                            "windows": [4, 8], "clusters": True, "owl_lambda": [0.0, 0.2], "owl_M": [3.0, 10.0],
                            "lambda": 50.0, "batch_size": 8, "threads": 1}},
    "compress": {"quantize": {"int8": {"bits": 8, "group_size": 0, "symmetric": True},
                              "int4-gptq": {"bits": 4, "group_size": 32, "symmetric": True, "algorithm": "gptq"}},
                 "lowrank": {"keep": [0.5]}},
    "evaluate": {"batch_size": "auto", "max_batch_size": 32, "threads": 1, "device": "cpu", "dtype": "float32",
                 "near_tie_margin": 0.1, "cross_check": 8, "seed": 0, "mia": {"min_k_fraction": 0.2, "bootstrap": 200}},
    # as the embedded default: a method's levels in one process, lm-eval on every variant in one
    # (tests/test_batches.py checks a batch builds the same bytes as its jobs alone)
    "jobs": {"batch": {"mask": "method", "transform": "method", "evaluate": "method", "downstream": "model"}},
    # the default's two held-out tasks, a few documents each
    "downstream": {"tasks": [{"name": "prunemem_nextline", "num_fewshot": 0},
                             {"name": "prunemem_completeline", "num_fewshot": 0}],
                   "limit": 12, "batch_size": "auto", "max_batch_size": 32, "seed": 0, "backend": "hf",
                   "local": {"documents": 60, "choices": 4, "context_chars": 60, "min_line_chars": 16,
                             "max_line_chars": 60, "min_word_chars": 3, "max_word_chars": 6}},
}


def md5s(root: Path) -> dict[str, str]:
    """md5 of every file under ``root``'s data/ and reports/: the artifacts a run produces (not the
    ``.snakemake_timestamp`` Snakemake leaves in a directory output, which DVC ignores by .dvcignore)."""
    return {p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for d in ("data", "reports") for p in sorted((root / d).rglob("*"))
            if p.is_file() and p.name != ".snakemake_timestamp"}


def tiny_config(vocab: int = 64, hidden: int = 32, layers: int = 4, heads: int = 4, ctx: int = 64):
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         intermediate_size=4 * hidden, max_position_embeddings=ctx, rotary_pct=0.25,
                         tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, pad_token_id=0)


@pytest.fixture
def random_model():
    from transformers import GPTNeoXForCausalLM

    torch.manual_seed(0)
    return GPTNeoXForCausalLM(tiny_config()).eval()


@pytest.fixture
def biased_model(random_model):
    """random_model with every parameter perturbed, biases included: a bias left behind (or removed by
    mistake) by a width edit changes the logits."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in random_model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return random_model


@pytest.fixture(scope="session")
def memorizing_model():
    """A tiny GPT-NeoX trained until it reproduces four of eight random sequences verbatim.

    Sequences 0-3 are trained on (repeatedly); 4-7 are never seen. Returns (model, sequences).
    """
    from transformers import GPTNeoXForCausalLM

    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(tiny_config(hidden=64, layers=2))
    seqs = torch.randint(1, 64, (8, 40), generator=torch.Generator().manual_seed(1))
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(250):
        loss = model(input_ids=seqs[:4], labels=seqs[:4]).loss
        loss.backward()
        optim.step()
        optim.zero_grad()
    return model.eval(), seqs


def venv_env() -> dict:
    """The environment for subprocesses: this interpreter's bin first, so rules find `prunemem`."""
    import sys

    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture
def default_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


# -- one small study, built by the real pipeline ---------------------------------------------
def snakemake(workdir, *extra):
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
                           "--cores", "2", *extra], capture_output=True, text=True, timeout=600,
                          env=venv_env())


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    """The real Snakemake pipeline run once on SMALL; tests that change it must work on a copy."""
    workdir = tmp_path_factory.mktemp("study")
    if os.environ.get("PRUNEMEM_TEST_STUDY"):  # a SMALL study built earlier: Snakemake then tops it up
        shutil.copytree(os.environ["PRUNEMEM_TEST_STUDY"], workdir, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".snakemake"))
    write_params(workdir / "params.yaml", SMALL)
    run = snakemake(workdir)
    assert run.returncode == 0, run.stderr[-3000:]
    return workdir
