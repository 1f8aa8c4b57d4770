"""The shipped embedded checkpoint: a deterministic recipe, pinned files, a verified copy, a one-line refusal."""

from __future__ import annotations

import copy
import json

import pytest

from conftest import SMALL
from prunemem import embedded, shipped
from prunemem.checkpoints import build_embedded, embedded_recipe
from prunemem.errors import PrunememError
from prunemem.provenance import sha256_file

QUICK = copy.deepcopy(SMALL)  # SMALL's recipe, trained briefly
QUICK["embedded"]["training"].update(steps=40, warmup_steps=4)
QUICK["embedded"]["canaries"].update(copies=[0, 4, 16], per_copy_count=[4, 4, 2])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return build_embedded(tmp_path_factory.mktemp("a") / "tiny", QUICK, retrain=True)


@pytest.fixture
def package(tmp_path, monkeypatch):
    """The package's shipped-checkpoint location, redirected to a private directory."""
    monkeypatch.setattr(shipped, "shipped_dir", lambda: tmp_path / "resources" / "embedded-tiny")
    monkeypatch.setattr(shipped, "pins_path", lambda: tmp_path / "resources" / "embedded-tiny.json")
    return tmp_path / "resources"


def test_recipe_is_bitwise_deterministic(trained, tmp_path):
    again = build_embedded(tmp_path / "tiny", QUICK, retrain=True)
    for name in ("model.safetensors", "tokenizer.json", embedded.TRAINING_ROWS, embedded.CANARIES):
        assert sha256_file(again / name) == sha256_file(trained / name), name


def test_shipped_checkpoint_is_a_verified_copy_for_its_recipe_only(trained, package, tmp_path):
    shipped.ship(trained, embedded_recipe(QUICK), wall_s=1.0, threads=2)
    pins = json.loads((package / "embedded-tiny.json").read_text())
    assert embedded.TRAINING_ROWS not in pins["files"] and "model.safetensors" in pins["files"]
    assert {"git_commit", "machine", "time", "threads", "wall_s"} <= set(pins["trained"])
    copied = build_embedded(tmp_path / "copy", QUICK)  # no training: the stream is rebuilt and checked
    for name in [*pins["files"], embedded.TRAINING_ROWS]:
        if name != "provenance.json":
            assert sha256_file(copied / name) == sha256_file(trained / name), name
    record, original = (json.loads((d / "provenance.json").read_text()) for d in (copied, trained))
    assert record["checkpoint_sha256"] == original["checkpoint_sha256"] == pins["checkpoint_sha256"]
    assert record["shipped"]["training_record"] == original and record["params"] == embedded_recipe(QUICK)
    other = copy.deepcopy(QUICK)
    other["embedded"]["training"]["steps"] = 30
    assert shipped.matching_pins(embedded_recipe(other)) is None  # another recipe trains its own


def test_tampered_shipped_weights_stop_with_one_line(trained, package, tmp_path):
    shipped.ship(trained, embedded_recipe(QUICK), wall_s=1.0, threads=2)
    weights = package / "embedded-tiny" / "model.safetensors"
    expected = sha256_file(weights)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(PrunememError) as err:
        build_embedded(tmp_path / "copy", QUICK)
    message = str(err.value)
    assert "\n" not in message and str(weights) in message and expected in message
    assert "git checkout" in message and "--retrain" in message
    assert not (tmp_path / "copy").exists()


def test_default_params_get_the_shipped_checkpoint():
    """params.yaml's recipe is the one shipped: editing embedded: without re-shipping fails here, not in `make run`."""
    from pathlib import Path

    from prunemem.plan import read_params

    pins = shipped.matching_pins(embedded_recipe(read_params([Path(__file__).parents[1] / "params.yaml"])))
    assert pins is not None, f"params.yaml's embedded: recipe is not the shipped one; re-ship: {shipped.RETRAIN}"
    for name, expected in pins["files"].items():
        shipped.verify_pinned(shipped.shipped_dir() / name, expected, "git checkout")
    assert pins["training"]["canary_fraction"] <= 0.05
