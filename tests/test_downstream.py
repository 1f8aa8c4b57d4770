"""The downstream stage: our held-out tasks through lm-eval, checked against the model scored by hand.

Runs on the shipped embedded checkpoint (a copy of its files, no training) with a small ``limit``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from prunemem.downstream import local
from prunemem.downstream.run import Downstream, check_names, columns, load_tasks, portable_config, samples_file
from prunemem.errors import PrunememError
from prunemem.plan import Plan
from prunemem.provenance import digest_json, sha256_file

REPO = Path(__file__).resolve().parents[1]
LIMIT = 24


def _plan(root: Path, **downstream) -> Plan:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["downstream"] = {**params["downstream"], "limit": LIMIT, **downstream}
    params["evaluate"].update(device="cpu", dtype="float32", threads=1)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return Plan.load([root / "params.yaml"], root)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """The dense model and a 50% global-magnitude variant scored in one session."""
    from prunemem.prune.run import build_mask
    from prunemem.shipped import shipped_dir

    root = tmp_path_factory.mktemp("downstream")
    plan = _plan(root)
    ckpt = plan.checkpoint_dir("tiny")
    shutil.copytree(shipped_dir(), ckpt)  # the real checkpoint layout: config, safetensors, tokenizer
    build_mask(plan, "tiny", "global", "0.5")
    with Downstream(plan, "tiny") as session:
        tasks_dir = session.scratch / "tasks"
        data = {n: (tasks_dir / f"{n}.jsonl").read_bytes() for n in local.TASKS}
        summaries = {v: session.run(*v) for v in (("dense", "0"), ("global", "0.5"))}
    return plan, summaries, data


def _samples(plan: Plan, method: str, level: str, task: str) -> list[dict]:
    path = plan.downstream_dir("tiny", method, level) / samples_file(task)
    return [json.loads(line) for line in path.read_text().splitlines()]


def _model(plan: Plan):
    from prunemem.checkpoints import load_model, load_tokenizer

    ckpt = plan.checkpoint_dir("tiny")
    return load_model(ckpt).eval(), load_tokenizer(ckpt)


def test_local_tasks_are_held_out_lines_built_deterministically(tmp_path, scored):
    """Rebuilt from params alone: the same bytes; every answer is the real line of a held-out document."""
    from prunemem import embedded
    from lm_eval.tasks import TaskManager

    plan, _, data = scored
    include, hashes = local.include_dir(plan.params, tmp_path / "tasks")
    assert {n: (include / f"{n}.jsonl").read_bytes() for n in local.TASKS} == data
    split = embedded.split_corpus(embedded.load_corpus(), plan.params["embedded"]["split"], 0)
    heldout = {d["id"]: d["text"].split("\n") for d in split["heldout"]}
    mc = [json.loads(line) for line in data[local.NEXTLINE].decode().splitlines()]
    gen = [json.loads(line) for line in data[local.COMPLETELINE].decode().splitlines()]
    assert len(mc) == len(gen) == plan.params["downstream"]["local"]["documents"]
    for row in mc:
        lines = heldout[row["source"]]
        assert row["choices"][row["label"]] == lines[row["line"]]
        assert row["context"].endswith(lines[row["line"] - 1] + "\n") and len(set(row["choices"])) == 4
    for row in gen:
        assert (row["context"] + row["target"]).endswith(heldout[row["source"]][row["line"]])
        assert row["target"].startswith(" ") and " " not in row["target"][1:]
    assert {r["label"] for r in mc} == {0, 1, 2, 3}  # the answer's position is drawn, not fixed
    # lm-eval reads them offline through its own TaskManager and json loader
    loaded = TaskManager(include_path=str(include), include_defaults=False).load(list(local.TASKS))["tasks"]
    assert {n: len(t.eval_docs) for n, t in loaded.items()} == {n: 500 for n in local.TASKS}
    assert hashes == {n: sha256_file(include / f"{n}.jsonl") for n in local.TASKS}
    # the Arrow copy datasets makes stays beside the data, out of the user's cache
    assert (include / ".datasets").is_dir() and any((include / ".datasets").iterdir())


def _loglikelihood(model, tokenizer, context: str, choice: str, max_length: int) -> float:
    """log P(choice | context) as lm-eval defines it: trailing whitespace of the context moves to the
    continuation, the pair is tokenized whole, and the input keeps its last max_length + 1 tokens."""
    stripped = context.rstrip()
    whole = tokenizer(context + choice, add_special_tokens=False)["input_ids"]
    n_ctx = len(tokenizer(stripped, add_special_tokens=False)["input_ids"])
    cont = whole[n_ctx:]
    ids = whole[-(max_length + 1):]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids[:-1]])).logits[0].double(), -1)
    targets = torch.tensor(ids[-len(cont):])
    return float(logp[-len(cont):].gather(1, targets[:, None]).sum())


def test_multiple_choice_matches_our_own_scoring(scored):
    plan, summaries, _ = scored
    model, tokenizer = _model(plan)
    samples = _samples(plan, "dense", "0", local.NEXTLINE)
    assert len(samples) == LIMIT
    correct = correct_norm = 0
    for s in samples:
        doc = s["doc"]
        ours = [_loglikelihood(model, tokenizer, doc["context"], c, 160) for c in doc["choices"]]
        theirs = [r[0][0] for r in s["resps"]]
        assert ours == pytest.approx(theirs, abs=2e-4)
        pick = max(range(4), key=ours.__getitem__)
        pick_norm = max(range(4), key=lambda i: ours[i] / len(doc["choices"][i]))
        assert s["acc"] == float(pick == doc["label"]) and s["acc_norm"] == float(pick_norm == doc["label"])
        correct, correct_norm = correct + (pick == doc["label"]), correct_norm + (pick_norm == doc["label"])
    metrics = summaries[("dense", "0")]["tasks"][local.NEXTLINE]["metrics"]
    assert metrics["acc,none"]["value"] == pytest.approx(correct / LIMIT)
    assert metrics["acc_norm,none"]["value"] == pytest.approx(correct_norm / LIMIT)
    assert correct / LIMIT > 0.25  # chance is 1 in 4
    # the pruned variant is another model: its log-likelihoods differ
    pruned = _samples(plan, "global", "0.5", local.NEXTLINE)
    assert [r[0][0] for r in pruned[0]["resps"]] != [r[0][0] for r in samples[0]["resps"]]


def test_generation_matches_our_own_greedy_decode(scored):
    plan, summaries, _ = scored
    model, tokenizer = _model(plan)
    samples = _samples(plan, "dense", "0", local.COMPLETELINE)
    gen = yaml.safe_load(local.task_yaml(local.COMPLETELINE))["generation_kwargs"]
    hits = 0
    for s in samples:
        ids = tokenizer(s["doc"]["context"], add_special_tokens=False)["input_ids"][-(160 - gen["max_gen_toks"]):]
        out = []
        with torch.no_grad():
            for _ in range(gen["max_gen_toks"]):  # argmax by hand, no generate()
                out.append(int(model(torch.tensor([ids + out])).logits[0, -1].argmax()))
                if "\n" in tokenizer.decode(out):
                    break
        ours = tokenizer.decode(out).split("\n")[0]
        assert s["filtered_resps"][0] == ours
        assert s["exact_match"] == float(ours == s["doc"]["target"])
        hits += ours == s["doc"]["target"]
    assert summaries[("dense", "0")]["tasks"][local.COMPLETELINE]["metrics"]["exact_match,none"]["value"] == \
        pytest.approx(hits / LIMIT)


def test_summary_records_provenance(scored):
    plan, summaries, data = scored
    dense, pruned = summaries[("dense", "0")], summaries[("global", "0.5")]
    on_disk = json.loads((plan.downstream_dir("tiny", "dense", "0") / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(dense, default=str))
    from importlib.metadata import version

    assert dense["lm_eval_version"] == version("lm_eval") and dense["seed"] == 0 and dense["limit"] == LIMIT
    for name in local.TASKS:
        task = dense["tasks"][name]
        assert task["n"] == LIMIT and task["n_available"] == 500 and task["num_fewshot"] == 0
        assert task["dataset"]["data_sha256"] == __import__("hashlib").sha256(data[name]).hexdigest()
        assert len(task["config_sha256"]) == 64 and task["config_sha256"] == pruned["tasks"][name]["config_sha256"]
        assert all(m["stderr"] is not None and m["stderr"] > 0 for m in task["metrics"].values())
        assert dense["files"][samples_file(name)] == sha256_file(plan.downstream_dir("tiny", "dense", "0") /
                                                                 samples_file(name))
    assert set(dense["provenance"]["inputs"]) == {"checkpoint"}
    assert pruned["provenance"]["inputs"]["mask"] == sha256_file(plan.mask_path("tiny", "global", "0.5"))
    assert dense["provenance"]["params"]["downstream"]["limit"] == LIMIT
    cols = columns(dense)  # what results.csv gains: one value and stderr per task metric
    assert sorted(cols) == sorted(f"downstream_{t}_{m}{e}" for t, ms in (("prunemem_nextline", ("acc", "acc_norm")),
                                                                       ("prunemem_completeline", ("exact_match",)))
                                  for m in ms for e in ("", "_stderr"))
    assert cols["downstream_prunemem_nextline_acc"] == dense["tasks"][local.NEXTLINE]["metrics"]["acc,none"]["value"]


def test_config_hash_ignores_where_the_run_put_its_files():
    config = {"task": "t", "dataset_path": "json", "metadata": {"config_source": "/tmp/a/t.yaml"},
              "dataset_kwargs": {"data_files": {"test": "/tmp/a/t.jsonl"}, "cache_dir": "/tmp/a/cache"}}
    moved = json.loads(json.dumps(config).replace("/tmp/a", "/scratch/b"))
    assert digest_json(portable_config(config, {"t": "1" * 64})) == digest_json(portable_config(moved, {"t": "1" * 64}))
    assert digest_json(portable_config(config, {"t": "1" * 64})) != digest_json(portable_config(config, {"t": "2" * 64}))


def test_unknown_task_is_one_line_with_close_matches(tmp_path):
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(local.include_dir(_plan(tmp_path).params, tmp_path / "t")[0]),
                          include_defaults=False)
    with pytest.raises(PrunememError) as err:
        check_names(["prunemem_nextline", "prunemem_nextlin"], manager)
    assert str(err.value) == ("downstream.tasks[1].name: 'prunemem_nextlin' is not an lm-eval task; close matches: "
                              "prunemem_nextline, prunemem_completeline")


def test_uncached_dataset_offline_is_one_line_with_the_prefetch_command(tmp_path, monkeypatch):
    """A hub task whose dataset the cache lacks, while offline: refused with the command that fetches it."""
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "hubtask.yaml").write_text(yaml.safe_dump(
        {"task": "hubtask", "dataset_path": "prunemem-tests/absent", "dataset_name": "easy", "test_split": "test",
         "output_type": "multiple_choice", "doc_to_text": "{{question}}", "doc_to_target": 0,
         "doc_to_choice": "{{choices.text}}"}))
    manager = TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False)
    with pytest.raises(PrunememError) as err:
        load_tasks(manager, [{"name": "hubtask", "num_fewshot": None, "gen_kwargs": {}}])
    line = str(err.value)
    assert "\n" not in line and line.startswith("downstream.tasks[0].name: hubtask: dataset prunemem-tests/absent/easy")
    assert "datasets.load_dataset('prunemem-tests/absent', 'easy')" in line and "HF_HUB_OFFLINE=1" in line


def test_cli_refuses_a_level_without_a_method(tmp_path, capsys):
    from prunemem.cli import main

    _plan(tmp_path)
    assert main(["--params", str(tmp_path / "params.yaml"), "downstream", "--model", "tiny", "--level", "0.5"]) == 1
    assert capsys.readouterr().err == ("prunemem: error: --level: given without --method; allowed: --method M "
                                       "--level L, --method M, or neither\n")
