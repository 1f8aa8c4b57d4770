"""`source: local`: a checkpoint directory already on disk, hashed once, its sha256 recorded and verified."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from conftest import tiny_config

from prunemem.checkpoints import load_model
from prunemem.hub import adopt_local
from prunemem.errors import PrunememError


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """What `save_pretrained` / `hf download` leave in a site's model store."""
    from transformers import GPTNeoXForCausalLM

    from prunemem import embedded

    root = tmp_path_factory.mktemp("models") / "pythia-tiny"
    embedded.train_tokenizer(["def f(x):\n    return x + 1\n" * 20, "hello world, " * 30], 300).save_pretrained(root)
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(tiny_config(vocab=300)).eval()
    model.save_pretrained(root, safe_serialization=True)
    return root, model


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_adopted_checkpoint_records_the_sha256_and_loads_the_same_model(model_dir, tmp_path):
    src, model = model_dir
    want = sha256(src / "model.safetensors")
    out = adopt_local(src, tmp_path / "ckpt", {"source": "local", "path": str(src)}, sha256=want)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["checkpoint_sha256"] == want and prov["pinned"] is True and prov["source"] == "local"
    assert prov["inputs"] == {f"local:{src}/model.safetensors": want}
    ids = torch.arange(10).unsqueeze(0)
    assert torch.equal(load_model(out)(ids).logits, model(ids).logits)


def test_a_pin_that_does_not_match_stops_and_writes_nothing(model_dir, tmp_path):
    src, _ = model_dir
    with pytest.raises(PrunememError, match=r"model.safetensors has sha256 .* not the pinned 000000000000"):
        adopt_local(src, tmp_path / "ckpt", {}, sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("remove,fragment", [("model.safetensors", r"no weights \(model.safetensors"),
                                             ("config.json", "no config.json"),
                                             ("tokenizer.json", "no tokenizer files")])
def test_an_incomplete_directory_is_one_line_naming_what_is_missing(model_dir, tmp_path, remove, fragment):
    src = tmp_path / "copy"
    shutil.copytree(model_dir[0], src)
    (src / remove).unlink()
    if remove == "tokenizer.json":
        for extra in ("tokenizer_config.json", "special_tokens_map.json"):
            (src / extra).unlink(missing_ok=True)
    with pytest.raises(PrunememError, match=fragment) as err:
        adopt_local(src, tmp_path / "ckpt", {})
    assert str(src) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "ckpt").exists()


def test_a_bin_checkpoint_is_converted_with_weights_only(model_dir, tmp_path):
    src = tmp_path / "bin"
    shutil.copytree(model_dir[0], src)
    (src / "model.safetensors").unlink()
    torch.save(model_dir[1].state_dict(), src / "pytorch_model.bin")
    out = adopt_local(src, tmp_path / "ckpt", {})
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["weights_from"] == "pytorch_model.bin" and prov["checkpoint_sha256"] == sha256(out / "model.safetensors")


def test_local_models_validate_like_hub_models():
    from test_sampling import _params

    from prunemem.plan import Plan, validate

    params = _params({"kind": "embedded", "split": "train"}, {"kind": "embedded", "split": "heldout"})
    params["models"]["m"] = {**params["models"]["m"], "source": "local", "path": "/models/pythia-160m"}
    del params["models"]["m"]["repo"]
    validate(params)
    assert Plan(params).stage_params("checkpoint", "m") == {"models.m.source": "local",
                                                            "models.m.path": "/models/pythia-160m",
                                                            "models.m.revision": "step143000"}
    assert "src/prunemem/hub.py" in Plan(params).job("checkpoint", "m").code  # adopt_local's module
    with pytest.raises(PrunememError, match="models.m.repo: not a key of source local"):
        validate({**params, "models": {"m": {**params["models"]["m"], "repo": "a/b"}}})
    del params["models"]["m"]["path"]
    with pytest.raises(PrunememError, match="'path' is a required property"):
        validate(params)
