"""Hub checkpoints through the real huggingface_hub download code, against a local fake hub.

The fake hub (tests/fakehub.py) serves a tiny GPT-NeoX as safetensors and as pytorch_model.bin;
huggingface_hub is pointed at it by patching its endpoint constants, so nothing leaves the machine.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO, tiny_config, venv_env
from fakehub import FakeHub

from prunemem.errors import PrunememError
from prunemem.hub import fetch_checkpoint

REPO_ID, REV = "org/tiny", "step10"


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """Files of a tiny model repo: safetensors (plus an unneeded extra) and a .bin-only variant."""
    from transformers import GPTNeoXForCausalLM

    from prunemem import embedded

    root = tmp_path_factory.mktemp("published")
    tok = embedded.train_tokenizer(["def f(x):\n    return x + 1\n" * 20, "hello world, " * 30], 300)
    tok.save_pretrained(root)
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(tiny_config(vocab=len(tok))).eval()
    model.save_pretrained(root, safe_serialization=True)
    files = {p.name: p.read_bytes() for p in root.iterdir()}
    state = dict(model.state_dict())
    state["gpt_neox.layers.0.attention.masked_bias"] = torch.tensor(-1e9)  # a buffer old checkpoints carry
    buf = io.BytesIO()
    torch.save(state, buf)
    bin_files = {k: v for k, v in files.items() if k != "model.safetensors"}
    bin_files["pytorch_model.bin"] = buf.getvalue()
    files["flax_model.msgpack"] = b"not needed" * 100
    return model, files, bin_files


@pytest.fixture
def hub(monkeypatch, published):
    from huggingface_hub import constants

    server = FakeHub()
    server.add(REPO_ID, REV, published[1])
    server.add("org/tiny-bin", REV, published[2])
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield server
    server.close()


def _same_logits(model, directory) -> bool:
    from prunemem.checkpoints import load_model

    ids = torch.arange(12).unsqueeze(0)
    return torch.equal(load_model(directory)(ids).logits, model(ids).logits)


def _files_left(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir() if p.name != "cache")


def test_safetensors_pinned_verified_only_needed_files(hub, published, tmp_path):
    out = fetch_checkpoint(REPO_ID, REV, tmp_path / "ckpt", {"source": "hub"}, cache_dir=str(tmp_path / "cache"))
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["commit_sha"] == hub.repos[REPO_ID][REV][0] and prov["revision"] == REV
    lfs_sha = FakeHub.meta("model.safetensors", published[1]["model.safetensors"])["lfs"]["sha256"]
    assert prov["checkpoint_sha256"] == lfs_sha == prov["files"]["model.safetensors"]["verified"]
    assert prov["weights_from"] == "model.safetensors" and prov["offline"] is False
    fetched = {path.rsplit("/", 1)[1] for method, path, _ in hub.requests if method == "GET" and "/resolve/" in path}
    assert fetched == {"config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"}
    assert _same_logits(published[0], out)


def test_bin_is_converted_with_weights_only(hub, published, tmp_path, monkeypatch):
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw) or real_load(*a, **kw))
    out = fetch_checkpoint("org/tiny-bin", REV, tmp_path / "ckpt", {}, cache_dir=str(tmp_path / "cache"))
    assert calls and all(kw.get("weights_only") is True for kw in calls)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["weights_from"] == "pytorch_model.bin"
    assert prov["dropped_keys"] == ["gpt_neox.layers.0.attention.masked_bias"]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "provenance.json",
                                                       "tokenizer.json", "tokenizer_config.json"]
    assert _same_logits(published[0], out)


def test_checksum_mismatch_removes_the_file_and_says_so(hub, published, tmp_path):
    hub.corrupt.add("model.safetensors")
    cache = tmp_path / "cache"
    with pytest.raises(PrunememError) as err:
        fetch_checkpoint(REPO_ID, REV, tmp_path / "ckpt", {}, cache_dir=str(cache))
    msg = str(err.value)
    assert "\n" not in msg and "model.safetensors: sha256" in msg and "removed the corrupt file" in msg
    assert not list(cache.rglob("model.safetensors")) and _files_left(tmp_path) == []
    # The rerun fetches only what is missing: the small files stay cached.
    hub.corrupt.clear()
    hub.requests.clear()
    fetch_checkpoint(REPO_ID, REV, tmp_path / "ckpt", {}, cache_dir=str(cache))
    got = [path for method, path, _ in hub.requests if method == "GET" and "/resolve/" in path]
    assert got == [f"/{REPO_ID}/resolve/{REV}/model.safetensors"]


def test_interrupted_transfer_resumes_with_a_range_request(hub, published, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 4096)  # so the cut falls after whole chunks
    hub.drop_once.add("model.safetensors")
    out = fetch_checkpoint(REPO_ID, REV, tmp_path / "ckpt", {}, cache_dir=str(tmp_path / "cache"))
    ranges = [r for m, p, r in hub.requests if p.endswith("model.safetensors") and m == "GET"]
    assert ranges[0] is None and ranges[1].startswith("bytes=") and int(ranges[1][6:-1]) > 0
    assert _same_logits(published[0], out)


def test_offline_works_from_a_populated_cache(hub, published, tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = str(tmp_path / "cache")
    online = json.loads((fetch_checkpoint(REPO_ID, REV, tmp_path / "a", {}, cache_dir=cache)
                         / "provenance.json").read_text())
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.requests.clear()
    offline = json.loads((fetch_checkpoint(REPO_ID, REV, tmp_path / "b", {}, cache_dir=cache)
                          / "provenance.json").read_text())
    assert hub.requests == [] and offline["offline"] is True
    assert offline["commit_sha"] == online["commit_sha"]
    assert offline["checkpoint_sha256"] == online["checkpoint_sha256"]
    with pytest.raises(PrunememError, match="org/tiny@step99 is not in the Hugging Face cache"):
        fetch_checkpoint(REPO_ID, "step99", tmp_path / "c", {}, cache_dir=cache)


def test_unreachable_hub_falls_back_to_the_cache(hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = str(tmp_path / "cache")
    fetch_checkpoint(REPO_ID, REV, tmp_path / "a", {}, cache_dir=cache)
    dead = "http://127.0.0.1:9"  # nothing listens there: connection refused at once
    monkeypatch.setattr(constants, "ENDPOINT", dead)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", dead + "/{repo_id}/resolve/{revision}/{filename}")
    prov = json.loads((fetch_checkpoint(REPO_ID, REV, tmp_path / "b", {}, cache_dir=cache) / "provenance.json").read_text())
    assert prov["offline"] is True and prov["commit_sha"] == hub.repos[REPO_ID][REV][0]
    with pytest.raises(PrunememError, match="the hub is unreachable .* hf download org/tiny --revision step99"):
        fetch_checkpoint(REPO_ID, "step99", tmp_path / "c", {}, cache_dir=cache)


@pytest.mark.parametrize("repo,rev,fragment", [("org/nope", REV, "org/nope: no such model"),
                                               (REPO_ID, "step7", "org/tiny: no revision 'step7'")])
def test_unknown_model_or_revision_online(hub, tmp_path, repo, rev, fragment):
    with pytest.raises(PrunememError, match=fragment):
        fetch_checkpoint(repo, rev, tmp_path / "ckpt", {}, cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path / "ckpt").exists()


def test_cli_offline_with_empty_cache_says_what_to_prefetch(tmp_path):
    """HF_HOME and HF_HUB_OFFLINE are read from the environment, as a user sets them."""
    params = yaml_params(tmp_path)
    env = {**venv_env(), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "prunemem.cli", "--params", str(params), "checkpoint", "--model",
                          "p"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 1
    lines = [line for line in run.stderr.splitlines() if line.startswith("prunemem: error:")]
    assert len(lines) == 1, run.stderr
    assert f"is not in the Hugging Face cache ({tmp_path / 'hf' / 'hub'})" in lines[0]
    assert "hf download EleutherAI/pythia-1.4b-deduped --revision step143000" in lines[0]
    assert not (tmp_path / "data").exists()


def yaml_params(tmp_path):
    import yaml

    params = yaml.safe_load((REPO / "workflow" / "configs" / "pythia.yaml").read_text())
    params["models"] = {"p": {"source": "hub", "repo": "EleutherAI/pythia-1.4b-deduped", "revision": "step143000",
                              "members": {"kind": "embedded", "split": "train"},
                              "heldout": {"kind": "embedded", "split": "heldout"}}}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(params))
    return path
