"""Is an existing artifact still what params.yaml and its inputs would build? (for Snakemake)

Snakemake judges freshness by its own metadata and by mtimes. A fresh clone whose data came
from `dvc pull` has no metadata and arbitrary mtimes, which makes Snakemake either trust stale
outputs (the provenance trap of DESIGN.md section 5) or rebuild good ones in whatever order DVC
happened to write them. Every artifact records the digest of its params and the hashes of its
inputs, so ``settle`` (called by ``workflow/rules/common.smk`` before the DAG is built) judges
each artifact from that record, in DAG order:

- an artifact that no longer follows from its params or inputs gets a reason; the rule then
  takes a freshly written stamp file as an extra input, so Snakemake reruns it (and, through
  its outputs, everything downstream);
- an artifact that does follow, but is older than one of its artifact inputs, has its mtime
  raised to that input's, so Snakemake does not rerun it for nothing. Code inputs are left
  alone: code edited after an output was built still reruns it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from prunemem.errors import PrunememError
from prunemem.plan import REPORT_FILES, Plan
from prunemem.provenance import sha256_file

STAGE_ARGS = {"fetch": 1, "checkpoint": 1, "samples": 1, "mask": 3, "transform": 3, "evaluate": 0, "report": 0}


def _record(plan: Plan, stage: str, model, method, level) -> dict | str | None:
    """An existing artifact's provenance record; None when there is no artifact, "unreadable" when broken."""
    from prunemem.prune.masks import header

    path = {"fetch": lambda: plan.fetch_path(model),
            "checkpoint": lambda: plan.checkpoint_dir(model) / "provenance.json",
            "samples": lambda: plan.samples_dir(model) / "provenance.json",
            "mask": lambda: plan.mask_path(model, method, level),
            "transform": lambda: plan.transform_path(model, method, level),
            "evaluate": lambda: plan.metrics_dir(model, method, level) / "summary.json",
            "report": lambda: plan.reports_dir / "provenance.json"}[stage]()
    if not path.exists():
        return None
    try:
        if stage == "mask":
            return header(path)["provenance"]
        record = json.loads(path.read_text())
        return record["provenance"] if stage in ("transform", "evaluate") else record
    except (OSError, ValueError, KeyError, TypeError, PrunememError):
        return "unreadable"


def _current_inputs(plan: Plan, stage: str, model, method, level, file_hash) -> dict[str, str]:
    """What an artifact of ``stage`` would record as its inputs if it were built now."""
    from prunemem.checkpoints import checkpoint_hash
    from prunemem.data.samples import samples_hash

    if stage in ("fetch", "checkpoint"):
        return {}  # its inputs (corpus or hub files) are pinned by its params
    if stage == "report":
        return {f"{m}/{me}/{lv}": file_hash(plan.metrics_dir(m, me, lv) / "summary.json")
                for m in plan.models for me, lv in plan.variants(m)}
    inputs = {"checkpoint": checkpoint_hash(plan.checkpoint_dir(model))}
    if stage == "samples" and plan.fetches(model):
        from prunemem.data.fetch import fetched_hash

        inputs["fetch"] = fetched_hash(plan.fetch_path(model))
    if stage == "evaluate" or (stage in ("mask", "transform") and plan.calibrated(method)):
        inputs["samples"] = samples_hash(plan.samples_dir(model))
    artifact = plan.variant_artifact(model, method, level) if stage == "evaluate" else None
    if artifact is not None:
        inputs["mask" if plan.kind(method) == "mask" else "transform"] = file_hash(artifact)
    return inputs


def staleness(plan: Plan, stage: str, model: str | None = None, method: str | None = None,
              level: str | None = None, file_hash=sha256_file) -> str | None:
    """Why an existing artifact no longer follows from params.yaml and its inputs; None if it does or is absent.

    Snakemake notices changed params from its own metadata and changed inputs from mtimes; a
    fresh clone with data from `dvc pull` has no metadata and arbitrary mtimes. Every artifact
    records the digest of its params and the hashes of its inputs, so compare with those
    instead (``workflow/rules/common.smk`` turns a reason into a rerun).
    """
    record = _record(plan, stage, model, method, level)
    if record is None:
        return None
    if record == "unreadable":
        return "its provenance is unreadable"
    args = (model, method, level)[:STAGE_ARGS[stage]]
    if record.get("params_digest") != plan.stage_digest(stage, *args):
        return "built with other params"
    try:
        current = _current_inputs(plan, stage, model, method, level, file_hash)
    except (OSError, ValueError, KeyError, PrunememError):
        return None  # an input is missing or broken: Snakemake rebuilds it, and this after it
    recorded = record.get("inputs", {})
    changed = sorted(key for key, value in current.items() if recorded.get(key) != value)
    return f"input {', '.join(changed)} changed" if changed else None


class HashCache:
    """sha256 of files, cached by (size, mtime, inode) in a JSON file, as DVC caches its md5s.

    For the consistency checks made each time Snakemake builds its DAG: re-hashing a 12B
    study's masks on every invocation would take minutes. The audit never uses this cache.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}
        self.dirty = False

    def __call__(self, file: Path) -> str:
        stat = Path(file).stat()
        key, stamp = str(Path(file).resolve()), [stat.st_size, stat.st_mtime_ns, stat.st_ino]
        entry = self.entries.get(key)
        if entry and entry[0] == stamp:
            return entry[1]
        digest = sha256_file(file)
        self.entries[key] = [stamp, digest]
        self.dirty = True
        return digest

    def save(self) -> None:
        if self.dirty:
            from prunemem.provenance import write_json

            write_json(self.path, self.entries)
            self.dirty = False


def _paths(plan: Plan, stage: str, model, method, level) -> tuple[list[Path], list[Path]]:
    """(outputs, artifact inputs) of one job, as the Snakemake rules declare them."""
    from prunemem.data.samples import FILES, PROVENANCE

    ckpt = [plan.checkpoint_dir(m) for m in ([model] if model else plan.models)]
    samples = [plan.samples_dir(m) / PROVENANCE for m in ([model] if model else plan.models)]
    if stage == "fetch":
        return [plan.fetch_path(model)], []
    if stage == "checkpoint":
        return ckpt, []
    if stage == "samples":
        fetched = [plan.fetch_path(model)] if plan.fetches(model) else []
        return [plan.samples_dir(model) / name for name in (*FILES, PROVENANCE)], ckpt + fetched
    if stage in ("mask", "transform"):
        out = plan.mask_path(model, method, level) if stage == "mask" else plan.transform_path(model, method, level)
        return [out], ckpt + (samples if plan.calibrated(method) else [])
    if stage == "evaluate":
        artifact = plan.variant_artifact(model, method, level)
        directory = plan.metrics_dir(model, method, level)
        return ([directory / n for n in ("memorization.parquet", "mia.parquet", "summary.json")],
                ckpt + samples + ([artifact] if artifact is not None else []))
    summaries = [plan.metrics_dir(m, me, lv) / "summary.json" for m in plan.models for me, lv in plan.variants(m)]
    return [plan.reports_dir / name for name in REPORT_FILES], summaries + ckpt + samples


def _mtime(path: Path) -> float:
    """A file's mtime; a directory's is its newest file's (what a directory output's bytes date from)."""
    if path.is_dir():
        return max((p.stat().st_mtime for p in path.rglob("*") if p.is_file()), default=path.stat().st_mtime)
    return path.stat().st_mtime


def jobs(plan: Plan):
    """Every job as (stage, model, method, level), upstream before downstream."""
    for model in plan.models:
        if plan.fetches(model):
            yield "fetch", model, None, None
        yield "checkpoint", model, None, None
        yield "samples", model, None, None
    for model in plan.models:
        for method, level in plan.variants(model):
            if plan.kind(method) in ("mask", "transform"):
                yield plan.kind(method), model, method, level
    for model in plan.models:
        for method, level in plan.variants(model):
            yield "evaluate", model, method, level
    yield "report", None, None, None


def settle(plan: Plan, file_hash=sha256_file, code_mtime=lambda stage, model: 0.0) -> dict[tuple, str]:
    """Judge every existing artifact by its record; return {job: reason} for the stale ones.

    ``code_mtime(stage, model)`` is the newest mtime of the code the stage depends on.
    """
    reasons = {}
    for job in jobs(plan):
        stage, model, method, level = job
        reason = staleness(plan, stage, model, method, level, file_hash)
        if reason is not None:
            reasons[job] = reason
            continue
        outputs, inputs = _paths(plan, stage, model, method, level)
        if not all(p.exists() for p in outputs + inputs):
            continue
        built = min(_mtime(p) for p in outputs)
        newest_input = max((_mtime(p) for p in inputs), default=0.0)
        if newest_input > built and code_mtime(stage, model) <= built:
            for path in outputs:
                for file in ([*path.rglob("*")] if path.is_dir() else []) + [path]:
                    os.utime(file, (newest_input, newest_input))
    return reasons
