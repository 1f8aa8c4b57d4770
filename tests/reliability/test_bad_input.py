"""Bad input at every stage: exit status 1, one line naming the culprit, no artifact touched.

Each case plants one defect in a private copy of the built study, hashes every file under
data/ and reports/, runs the verb that meets the defect, and hashes again. The verbs run in
this process (``main`` returns the exit status the console script exits with); the console
script itself is run by test_unwritable.py and test_interruption.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest
import yaml
from conftest import md5s

from .conftest import cli, error_line

CKPT, SAMPLES = Path("data/checkpoints/tiny"), Path("data/samples/tiny")
MASK = Path("data/masks/tiny/global/0.5.safetensors")
DENSE = ("evaluate", "--model", "tiny", "--method", "dense", "--level", "0")
GLOBAL = ("mask", "--model", "tiny", "--method", "global", "--level", "0.5")


def truncate(rel: Path):
    def plant(root: Path) -> None:
        data = (root / rel).read_bytes()
        (root / rel).write_bytes(data[: len(data) // 2])
    return plant


def override(text: str):
    def plant(root: Path) -> None:
        (root / "bad.yaml").write_text(text)
    return plant


def empty_members(root: Path) -> None:
    path = root / SAMPLES / "members.parquet"
    pl.read_parquet(path).clear().write_parquet(path)


EVOP_MEM = ("mask", "--model", "tiny", "--method", "evop-mem", "--level", "0.5")
LOCALIZE = ("mask", "--model", "tiny", "--method", "localize-zeroout", "--level", "0.01")


def search_overlaps_members(root: Path) -> None:
    """A search split that shares a member with evaluation (as a stale or hand-edited split would)."""
    search, members = root / SAMPLES / "search.parquet", pl.read_parquet(root / SAMPLES / "members.parquet")
    pl.concat([pl.read_parquet(search), members.head(1)]).write_parquet(search)
    (root / "bad.yaml").write_text("prune: {methods: [global, sparsegpt, evop-mem]}\n")


def mask_for_another_checkpoint(root: Path) -> None:
    from prunemem.prune import masks

    meta = masks.header(root / MASK)
    masks.save(root / MASK, masks.load(root / MASK), method="global", level="0.5", checkpoint_sha256="f" * 64,
               provenance=meta["provenance"])


def garbage(rel: Path):
    def plant(root: Path) -> None:
        (root / rel).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}" + bytes(64))
    return plant


BAD = "bad.yaml"
CASES = [
    # (id, plant, params files, argv, fragments the error line must contain)
    ("malformed-yaml", override("prune: {levels: [0.5\n"), (BAD,), GLOBAL, [f"{BAD}: line", "malformed YAML"]),
    ("unknown-key", override("prune: {levles: [0.5]}\n"), ("params.yaml", BAD), GLOBAL,
     ["unknown key 'prune.levles'", "levels"]),
    ("wrong-type", override("evaluate: {batch_size: '32'}\n"), ("params.yaml", BAD), DENSE,
     ["evaluate.batch_size", "wrong type", "integer"]),
    ("out-of-range", override("prune: {levels: [1.5]}\n"), ("params.yaml", BAD), GLOBAL,
     ["prune.levels[0]", "out of range"]),
    ("empty-corpus-by-params", override(yaml.safe_dump({"embedded": {"canaries": {"copies": [0]}},
                                                        "samples": {"training_members": 0}})),
     ("params.yaml", BAD), ("samples", "--model", "tiny"), ["samples.training_members", "no member samples"]),
    ("evop-population-1", override("prune: {evop: {population: 1}}\n"), ("params.yaml", BAD), GLOBAL,
     ["prune.evop.population", "out of range", ">= 2"]),
    ("evop-level-removes-no-block", override("prune: {methods: [evop], levels: [0.2], evop: {granularity: block}}\n"),
     ("params.yaml", BAD), ("mask", "--model", "tiny", "--method", "evop", "--level", "0.2"),
     ["prune.levels", "0.2 removes no block of 2 for evop"]),
    ("evop-level-removes-every-block", override("prune: {methods: [evop], levels: [1.0]}\n"), ("params.yaml", BAD),
     ("mask", "--model", "tiny", "--method", "evop", "--level", "1"), ["prune.levels[0]", "out of range", "< 1"]),
    ("search-split-overlaps-members", search_overlaps_members, ("params.yaml", BAD), EVOP_MEM,
     [str(SAMPLES / "search.parquet"), "overlaps the evaluation members", "canary-"]),
    ("localize-forget-set-not-extracted",
     override("prune: {methods: [global, localize-zeroout], localize: {budgets: [0.01], steps: 2, threads: 1, "
              "forget: {sample_ids: [train-00000, canary-00004]}}}\n"), ("params.yaml", BAD), LOCALIZE,
     ["prune.localize.forget.sample_ids", "0 of the 2 chosen samples are extracted by the dense model at k=32",
      "forget.size"]),
    ("localize-forget-overlaps-retain",
     override("prune: {methods: [global, localize-zeroout], localize: {budgets: [0.01], steps: 2, threads: 1, "
              "forget: {sample_ids: [canary-00008, train-00001]}, retain: {sample_ids: [train-00001]}}}\n"),
     ("params.yaml", BAD), LOCALIZE, ["forget and retain sets share 1 sample id: train-00001"]),
    ("localize-budget-above-unit-count",
     override("prune: {methods: [global, localize-zeroout], localize: {budgets: [100000], forget: {size: 1}, "
              "steps: 2, threads: 1}}\n"), ("params.yaml", BAD), GLOBAL,
     ["prune.localize.budgets", "100000 units exceed the embedded model's 1032 units"]),
    ("missing-params-file", None, ("nope.yaml",), ("checkpoint", "--model", "tiny"), ["nope.yaml", "not found"]),
    ("corrupt-checkpoint-mask", truncate(CKPT / "model.safetensors"), ("params.yaml",), GLOBAL,
     [str(CKPT / "model.safetensors")]),
    ("corrupt-checkpoint-transform", truncate(CKPT / "model.safetensors"), ("params.yaml",),
     ("transform", "--model", "tiny", "--method", "int8", "--level", "0"), [str(CKPT / "model.safetensors")]),
    ("corrupt-checkpoint-evaluate", truncate(CKPT / "model.safetensors"), ("params.yaml",), DENSE,
     [str(CKPT / "model.safetensors")]),
    ("corrupt-tokenizer", truncate(CKPT / "tokenizer.json"), ("params.yaml",), ("samples", "--model", "tiny"),
     [str(CKPT / "tokenizer.json")]),
    ("corrupt-training-rows", truncate(CKPT / "training_rows.safetensors"), ("params.yaml",),
     ("samples", "--model", "tiny"), [str(CKPT / "training_rows.safetensors")]),
    ("checkpoint-not-fetched", lambda root: shutil.rmtree(root / CKPT), ("params.yaml",),
     ("samples", "--model", "tiny"), [f"{CKPT}: checkpoint not found", "dvc pull"]),
    ("truncated-members", truncate(SAMPLES / "members.parquet"), ("params.yaml",), DENSE,
     [str(SAMPLES / "members.parquet"), "corrupt member samples"]),
    ("truncated-calibration", truncate(SAMPLES / "calibration.parquet"), ("params.yaml",),
     ("mask", "--model", "tiny", "--method", "sparsegpt", "--level", "0.5"), [str(SAMPLES / "calibration.parquet")]),
    ("empty-corpus", empty_members, ("params.yaml",), DENSE,
     [str(SAMPLES / "members.parquet"), "no member samples"]),
    ("corrupt-samples-provenance", truncate(SAMPLES / "provenance.json"), ("params.yaml",), DENSE,
     [str(SAMPLES / "provenance.json"), "corrupt samples provenance"]),
    ("corrupt-mask", garbage(MASK), ("params.yaml",), ("evaluate", "--model", "tiny", "--method", "global",
                                                       "--level", "0.5"), [str(MASK)]),
    ("mask-for-another-checkpoint", mask_for_another_checkpoint, ("params.yaml",),
     ("evaluate", "--model", "tiny", "--method", "global", "--level", "0.5"),
     [str(MASK), "mask was made for checkpoint ffffffffffff"]),
    ("corrupt-transform", truncate(Path("data/transforms/tiny/int8/0.json")), ("params.yaml",),
     ("evaluate", "--model", "tiny", "--method", "int8", "--level", "0"), ["data/transforms/tiny/int8/0.json"]),
    ("corrupt-summary", truncate(Path("data/metrics/tiny/global/0.5/summary.json")), ("params.yaml",), ("report",),
     ["data/metrics/tiny/global/0.5/summary.json", "corrupt evaluation summary"]),
    ("truncated-per-sample-results", truncate(Path("data/metrics/tiny/dense/0/memorization.parquet")),
     ("params.yaml",), ("report",), ["data/metrics/tiny/dense/0/memorization.parquet"]),
    ("truncated-perplexity-windows", truncate(Path("data/metrics/tiny/global/0.5/perplexity_windows.parquet")),
     ("params.yaml",), ("report",), ["data/metrics/tiny/global/0.5/perplexity_windows.parquet",
                                     "corrupt perplexity windows"]),
]


@pytest.mark.parametrize("plant,params,argv,fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_fails_in_one_line_and_touches_nothing(study, capsys, plant, params, argv, fragments):
    if plant:
        plant(study)
    before = md5s(study)
    capsys.readouterr()
    assert cli(*argv, params=params) == 1
    line = error_line(capsys.readouterr().err)
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert md5s(study) == before
    assert not list(study.rglob("*.tmp"))

