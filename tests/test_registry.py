"""The method registry: the name grammar, traits, torch-free import, the params allow-list, and that
no code outside the registry spells a method name."""

from __future__ import annotations

import ast
import copy
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, venv_env, write_params
from prunemem.cli import main
from prunemem.errors import PrunememError
from prunemem.plan import Plan
from prunemem.prune import registry
from prunemem.prune.registry import REGISTRY, Entry, resolve

SRC = REPO / "src" / "prunemem"


def test_every_entry_resolves_to_its_code(default_params):
    for name, entry in REGISTRY.items():
        method = resolve(name if entry.standalone else f"{name}-2of4", default_params)
        assert method.kind == "mask" and callable(method.function()), name


@pytest.mark.parametrize("name,traits", [
    ("wanda-ccds", dict(base="wanda", calibration="cluster", twin_of="wanda", family="pruning")),
    ("wanda-2of4", dict(base="wanda", nm=(2, 4), calibration="random")),
    ("wanda-2of4-ccds", dict(nm=(2, 4), calibration="cluster", twin_of="wanda-2of4")),
    ("magnitude-2of4", dict(base="magnitude", nm=(2, 4), calibration=None)),
    ("random-s3", dict(base="random", seed=3, family="control", replicate_of="random")),
    ("sleb-ccds", dict(removes_units=True, calibration="cluster")),
    ("evop-mem", dict(search=True, search_split=True, removes_units=True, threads="prune.evop.threads")),
    ("int4-gptq", dict(kind="transform", family="quantization", calibration="random")),
    ("int8", dict(kind="transform", family="quantization", calibration=None)),
    ("lowrank", dict(kind="transform", family="low-rank", loads_model=True)),
    ("dense", dict(kind="dense", family="dense")),
    ("localize-hardconcrete", dict(forgets=True, calibration="random", family="pruning", structure="units",
                                   threads="prune.localize.threads")),
    ("localize-random", dict(forgets=True, family="control", structure="units")),
])
def test_the_name_grammar_gives_the_traits(default_params, name, traits):
    method = resolve(name, default_params)
    assert {k: getattr(method, k) for k in traits} == traits


@pytest.mark.parametrize("name", ["magnitude-2of4-ccds", "global-ccds", "magnitude", "wanda-s1", "evop-ccds", "obc"])
def test_names_outside_the_grammar_are_one_line(default_params, name):
    with pytest.raises(PrunememError, match=f"prune.methods: .*{name!r}"):
        resolve(name, default_params)


def test_localize_levels_are_the_unit_budgets_and_its_digest_has_the_forget_set(default_params):
    params = copy.deepcopy(default_params)
    params["prune"]["localize"] = {"budgets": [0.001, 16], "forget": {"size": 4}, "steps": 5, "threads": 1}
    method = resolve("localize-zeroout", params)
    assert method.levels(["0.3"], params) == ["0.001", "16"]
    assert {"prune.localize", "samples.k", "samples.suffix_tokens"} <= set(method.params)
    assert "prune.localize" not in resolve("global", params).params


def test_owl_reads_calibration_only_with_wanda_scores(default_params):
    params = copy.deepcopy(default_params)
    assert resolve("owl", params).calibrated and resolve("owl-ccds", params).calibration == "cluster"
    params["prune"]["owl"]["score"] = "magnitude"
    assert not resolve("owl", params).calibrated
    with pytest.raises(PrunememError, match="owl-ccds"):
        resolve("owl-ccds", params)


def test_random_replicates_are_grid_methods_with_their_own_seed(default_params):
    params = copy.deepcopy(default_params)
    params["prune"]["methods"] = ["random", "random-s1", "random-s2"]
    plan = Plan(params)
    assert [m for m, _ in plan.variants("tiny")].count("random-s2") == 3
    # the replicate's seed is its name: prune.seed does not reach its digest
    reseeded = copy.deepcopy(params)
    reseeded["prune"]["seed"] = 7
    for method, same in (("random-s2", True), ("random", False)):
        digests = {p.stage_digest("mask", "tiny", method, "0.5") for p in (plan, Plan(reseeded))}
        assert (len(digests) == 1) == same, method


def test_the_registry_plan_and_workflow_modules_import_without_torch():
    code = ("import sys, prunemem.prune.registry, prunemem.plan, prunemem.freshness, prunemem.dvcgen, "
            "prunemem.cluster, prunemem.audit; assert 'torch' not in sys.modules, 'torch imported'")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=venv_env())
    assert run.returncode == 0, run.stderr


def test_an_entry_declaring_a_key_the_schema_lacks_stops_validate(tmp_path, capsys, monkeypatch, default_params):
    monkeypatch.setitem(REGISTRY, "sparse-x", Entry("sparse-x", "prunemem.prune.methods:layerwise",
                                                     params=("prune.sparse_x.alpha",)))
    params = write_params(tmp_path / "params.yaml", default_params)
    assert main(["--params", str(params), "validate"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "method sparse-x" in err and "'prune.sparse_x.alpha'" in err, err


# -- the params digest is an allow-list --------------------------------------------------------
def _stale_after(params: dict, key: str, value) -> set[tuple]:
    """Jobs whose params digest changes when ``key`` is set to ``value``, plus everything downstream."""
    before = Plan(params)
    changed = copy.deepcopy(params)
    node = changed
    *path, last = key.split(".")
    for part in path:
        node = node[part]
    node[last] = value
    after = Plan(changed)
    stale = {j.id for j in before.jobs() if before.stage_digest(*j.id) != after.stage_digest(*j.id)}
    for job in before.jobs():  # upstream first, so one pass carries staleness down
        if any(up.id in stale for up in before.upstream(job)):
            stale.add(job.id)
    return stale


def _with_dependents(plan: Plan, ids: set[tuple]) -> set[tuple]:
    out = set(ids)
    for job in plan.jobs():
        if any(up.id in out for up in plan.upstream(job)):
            out.add(job.id)
    return out


def test_owl_lambda_reaches_only_the_owl_masks(default_params):
    plan = Plan(default_params)
    owl = {j.id for j in plan.jobs("mask") if plan.method(j.method).base == "owl"}
    assert owl and _stale_after(default_params, "prune.owl.lambda", 0.1) == _with_dependents(plan, owl)


def test_evop_lambda_reaches_only_evop_mem(default_params):
    plan = Plan(default_params)
    mem = {j.id for j in plan.jobs("mask") if j.method == "evop-mem"}
    assert mem and _stale_after(default_params, "prune.evop.lambda", 5.0) == _with_dependents(plan, mem)


def test_calibration_sequences_reach_only_calibrated_methods(default_params):
    plan = Plan(default_params)
    calibrated = {j.id for j in plan.jobs() if j.stage in ("mask", "transform") and plan.calibrated(j.method)}
    assert len(calibrated) > 10
    assert _stale_after(default_params, "samples.calibration.sequences", 16) == _with_dependents(plan, calibrated)
    assert ("mask", "tiny", "global", "0.5") not in _with_dependents(plan, calibrated)


def test_dvc_params_are_the_digested_keys(default_params):
    from prunemem.dvcgen import stage

    plan = Plan(default_params)
    for job in plan.jobs():
        digested = set(plan.job_params(job)) - {"method", "level", "transform"}  # those are in the stage name
        assert set(stage(plan, job).get("params", [])) == digested, job.name


# -- no method name spelled outside the registry ----------------------------------------------
NAMES = {*REGISTRY, registry.LOWRANK, registry.CCDS, "int", "evop", "evop-mem"}
# names a table keyed by method names would hold (not 'attention' / 'mlp', which also name weight parts)
CALIBRATED = {n for n, e in REGISTRY.items() if e.calibrated} | {registry.CCDS}
# the method registry, the method bodies, and the registry of importance metrics (whose names, such as
# 'wanda', are metric names that width-<metric> methods borrow)
OWNERS = {SRC / "prune" / "registry.py", SRC / "prune" / "methods.py", SRC / "prune" / "importance.py"}


def _spelled_names(path: Path) -> list[str]:
    """Comparisons of something named like a method (method, args.method, pl.col("method")) with a name,
    the grammar parsed by hand (``method.removesuffix("-ccds")``, ``method.split("-")``), and tables
    keyed by method names (``{"wanda": ..., "sparsegpt": ...}``: a trait that belongs in the registry)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        values, subject = [], ""
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            subject = " ".join(ast.unparse(side) for side in sides)
            for side in sides:
                values += side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr in ("startswith", "endswith", "is_in", "replace_strict", "removesuffix", "removeprefix"):
            values, subject = list(node.args), ast.unparse(node.func.value)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr in ("split", "rsplit", "partition") and "method" in ast.unparse(node.func.value):
            found += [f"{path.name}:{a.lineno} split on {a.value!r}" for a in node.args
                      if isinstance(a, ast.Constant) and a.value == "-"]
        elif isinstance(node, ast.Dict):
            found += [f"{path.name}:{k.lineno} table key {k.value!r}" for k in node.keys
                      if isinstance(k, ast.Constant) and k.value in CALIBRATED]
        if "method" in subject:
            found += [f"{path.name}:{v.lineno} {v.value!r}" for v in values
                      if isinstance(v, ast.Constant) and v.value in NAMES]
    return found


def test_the_scan_finds_names_parsed_or_tabled_by_hand(tmp_path):
    """What memplan once did (its memory-plan class from the name) is what the scan reports."""
    code = tmp_path / "x.py"
    code.write_text('def kind(method):\n    base = method.removesuffix("-ccds").split("-")[0]\n'
                    '    return {"wanda": "scores", "sparsegpt": "hessian"}.get(base)\n'
                    'PASSES = {"owl": 4}\nPARTS = {"attention": 1, "mlp": 2}\n')
    assert sorted(_spelled_names(code)) == ["x.py:2 '-ccds'", "x.py:2 split on '-'", "x.py:3 table key 'sparsegpt'",
                                            "x.py:3 table key 'wanda'", "x.py:4 table key 'owl'"]


def test_no_code_outside_the_registry_compares_method_names():
    spelled = [hit for path in sorted(SRC.rglob("*.py")) if path not in OWNERS for hit in _spelled_names(path)]
    rules = [f"{p.name}: {n}" for p in (REPO / "workflow" / "rules").glob("*.smk") for n in NAMES
             if f'"{n}"' in p.read_text() or f"'{n}'" in p.read_text()]
    assert spelled == [] and rules == []
