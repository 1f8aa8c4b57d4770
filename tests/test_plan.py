"""Bad params stop everything with one line that names the key and what is allowed."""

from __future__ import annotations

import copy
import hashlib
import subprocess
import sys

import pytest

from conftest import REPO, venv_env, write_params
from prunemem.cli import main
from prunemem.plan import Plan, level_name


def _mutate(params: dict, path: str, value) -> dict:
    params = copy.deepcopy(params)
    *parents, last = path.split(".")
    node = params
    for key in parents:
        node = node[key]
    node[last] = value
    return params


BAD = [
    ("prune.methods", ["global", "globl"], ["prune.methods[1]", "'globl'", "allowed: layerwise"]),
    ("prune.levels", [0.5, 1.0], ["prune.levels[1]", "out of range", "< 1"]),
    ("prune.levels", [-0.1], ["prune.levels[0]", "out of range", ">= 0"]),
    ("samples.k", [32, 240], ["samples.k", "240", "context minus the suffix", "k <= 144"]),
    ("embedded.canaries.tokens", 40, ["samples.k", "embedded.canaries.tokens 40", "k <= 24"]),
    ("perplexity.window", 512, ["perplexity.window", "allowed: <= embedded.architecture.seq_len 160"]),
    ("prune.seeed", 3, ["unknown key 'prune.seeed'", "allowed keys here", "seed"]),
    ("samples.suffix_tokens", "32", ["samples.suffix_tokens", "wrong type", "integer"]),
    ("perplexity.stride", 512, ["perplexity.stride", "allowed: stride <= window"]),
]


@pytest.mark.parametrize("key,value,expected", BAD, ids=[f"{b[0]}={b[1]}" for b in BAD])
def test_bad_params_give_one_line_naming_the_key(tmp_path, capsys, default_params, key, value, expected):
    params_file = write_params(tmp_path / "params.yaml", _mutate(default_params, key, value))
    assert main(["--params", str(params_file), "validate"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for fragment in expected:
        assert fragment in err, (fragment, err)


def test_unknown_top_level_key(tmp_path, capsys, default_params):
    params_file = write_params(tmp_path / "p.yaml", {**default_params, "pruning": {}})
    assert main(["--params", str(params_file), "validate"]) == 1
    assert "unknown key 'pruning'" in capsys.readouterr().err


def test_malformed_yaml_and_missing_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("prune: [unclosed\n")
    assert main(["--params", str(bad), "validate"]) == 1
    assert f"{bad}: line" in capsys.readouterr().err
    assert main(["--params", str(tmp_path / "nope.yaml"), "validate"]) == 1
    assert "nope.yaml: params file not found" in capsys.readouterr().err


@pytest.mark.parametrize("argv,fragment", [
    (["mask", "--model", "tiny", "--method", "dense", "--level", "0"], "--method: dense has no mask"),
    (["mask", "--model", "big", "--method", "global", "--level", "0.5"], "--model: 'big' is not in params models"),
    (["evaluate", "--model", "tiny", "--method", "obc", "--level", "0.5"], "--method: 'obc' is not in the plan"),
    (["mask", "--model", "tiny", "--method", "wanda-2of4", "--level", "0.3"], "not a level of wanda-2of4; allowed: 0.5"),
    (["evaluate", "--model", "tiny", "--method", "global", "--level", "0.55"], "allowed: 0.3, 0.5, 0.7"),
])
def test_cli_rejects_jobs_outside_the_plan(tmp_path, capsys, monkeypatch, argv, fragment):
    monkeypatch.chdir(tmp_path)
    assert main(["--params", str(REPO / "params.yaml"), *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err, err
    assert not (tmp_path / "data").exists()


def test_default_params_are_valid_and_levels_have_one_spelling(default_params):
    plan = Plan(default_params)
    assert plan.variants()[0] == ("dense", "0")
    assert level_name(0.30) == "0.3" and level_name(0.05) == "0.05"
    n_transforms = len(plan.quantizers) + len(plan.lowrank_levels)
    assert len(plan.variants()) == 1 + sum(len(plan.mask_levels(m)) for m in plan.methods) + n_transforms
    assert plan.mask_levels("wanda-2of4") == ["0.5"] and plan.mask_levels("magnitude-4of8") == ["0.5"]
    assert plan.lowrank_levels == ["0.3", "0.5", "0.7"]  # 1 - keep, spelt like the pruning levels
    assert [plan.kind(m) for m in ("dense", "global", "int4", "lowrank")] == ["dense", "mask", "transform", "transform"]


def _tree_digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".snakemake" not in p.parts}


@pytest.mark.parametrize("key,value,fragment", [("prune.methods", ["obc"], "prune.methods[0]"),
                                                ("samples.k", [500], "samples.k")])
def test_snakemake_stops_before_any_job_and_touches_nothing(tmp_path, default_params, key, value, fragment):
    write_params(tmp_path / "params.yaml", _mutate(default_params, key, value))
    artifact = tmp_path / "data" / "masks" / "tiny" / "global" / "0.5.safetensors"
    artifact.parent.mkdir(parents=True)
    artifact.write_bytes(b"built earlier")
    before = _tree_digest(tmp_path)
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
                          "--cores", "1"], capture_output=True, text=True, timeout=120, env=venv_env())
    assert run.returncode != 0
    lines = [l for l in run.stderr.splitlines() if l.startswith("prunemem: error:")]
    assert len(lines) == 1 and fragment in lines[0], run.stderr
    assert _tree_digest(tmp_path) == before
