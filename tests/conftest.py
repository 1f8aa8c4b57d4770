"""Fixtures that build tiny models and configs on the fly; nothing here touches the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


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
