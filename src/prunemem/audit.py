"""`prunemem audit`: prove where every number came from, or list every way it cannot be proven.

    prunemem audit                 # the plan in params.yaml, against data/, reports/ and dvc.lock
    prunemem audit --no-dvc        # skip the dvc.lock comparison (e.g. no DVC in this checkout)

Walks the chain checkpoint -> samples -> masks/transforms -> metrics -> report for every
artifact the plan defines, and for each one:

- re-hashes its bytes and compares them with what the next artifact recorded as its input;
- compares the params it recorded (digest) with what ``params.yaml`` asks for now, so an output
  left over from before a param change is reported as stale;
- checks that it is what its path says (model, method, level), so swapped files are caught;
- recomputes the numbers that can be recomputed from the per-sample files (extraction counts,
  rates, Wilson intervals, MIA AUCs) and every row of ``results.csv``.

Finally ``dvc status`` (DVC's own comparison of ``dvc.lock`` with the workspace and
``params.yaml``) must be clean. Exits 1 and lists every mismatch when anything disagrees.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import polars as pl

from prunemem.errors import PrunememError
from prunemem.plan import FIGURES, Plan
from prunemem.provenance import digest_json, sha256_file

log = logging.getLogger(__name__)


def kept_counts(path: Path, shapes: dict[str, list[int]]) -> dict[str, int]:
    """Each tensor's kept weights, counted from its packed bits with numpy (no torch: the audit re-counts
    independently of ``prunemem.prune.masks``, which wrote them); one line on corrupt tensors."""
    import numpy as np
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            bits = {name: fh.get_tensor(name) for name in shapes}
    except Exception as err:  # safetensors raises its own error types
        raise PrunememError(f"{path}: corrupt mask tensors ({err})") from None
    return {name: int(np.unpackbits(bits[name].reshape(-1))[:math.prod(shape)].sum()) for name, shape in shapes.items()}


class Audit:
    def __init__(self, plan: Plan):
        self.plan = plan
        self.mismatches: list[str] = []
        self.checked = 0

    def fail(self, where, problem: str) -> None:
        self.mismatches.append(f"{where}: {problem}")

    def _same(self, where, what: str, recorded, actual) -> bool:
        if recorded != actual:
            self.fail(where, f"{what} is {_short(actual)} but {_short(recorded)} is recorded")
            return False
        return True

    def _expect(self, where, what: str, found, expected) -> None:
        if found != expected:
            self.fail(where, f"{what} is {_short(found)}, expected {_short(expected)}")

    def _params(self, where, prov: dict, stage: str, *args) -> None:
        """Recorded params must hash to their digest and equal what params.yaml asks for now."""
        if digest_json(prov.get("params")) != prov.get("params_digest"):
            self.fail(where, "recorded params do not match their own digest (edited by hand?)")
        wanted = self.plan.stage_digest(stage, *args)
        if prov.get("params_digest") != wanted:
            self.fail(where, f"stale: built with params {_short(prov.get('params_digest'))}, params.yaml now "
                             f"gives {_short(wanted)}; rebuild it")

    def _json(self, path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            self.fail(path, "missing; run the pipeline")
        except (OSError, ValueError) as err:
            self.fail(path, f"unreadable ({err})")
        return None

    # -- stages ---------------------------------------------------------------------------
    def checkpoint(self, model: str) -> str | None:
        from prunemem.identity import CHECKPOINT_PROVENANCE as PROVENANCE, WEIGHTS

        directory = self.plan.checkpoint_dir(model)
        prov = self._json(directory / PROVENANCE)
        if prov is None:
            return None
        self.checked += 1
        weights = directory / WEIGHTS
        if not weights.is_file():
            self.fail(weights, "missing")
            return None
        self._same(weights, "sha256", prov.get("checkpoint_sha256"), sha256_file(weights))
        self._params(directory / PROVENANCE, prov, "checkpoint", model)
        return prov.get("checkpoint_sha256")

    def fetch(self, model: str) -> str | None:
        """The fetch record: its params against params.yaml; its identity is what the samples were drawn from."""
        path = self.plan.fetch_path(model)
        prov = self._json(path)
        if prov is None:
            return None
        self.checked += 1
        self._params(path, prov, "fetch", model)
        return prov.get("sources_sha256")

    def samples(self, model: str, checkpoint: str | None, fetched: str | None = None) -> str | None:
        from prunemem.identity import SAMPLES_PROVENANCE as PROVENANCE

        directory = self.plan.samples_dir(model)
        prov = self._json(directory / PROVENANCE)
        if prov is None:
            return None
        self.checked += 1
        files = prov.get("files", {})
        for name, recorded in files.items():
            path = directory / name
            if not path.is_file():
                self.fail(path, "missing")
            else:
                self._same(path, "sha256", recorded, sha256_file(path))
        self._same(directory / PROVENANCE, "samples digest", prov.get("samples_sha256"), digest_json(files))
        self._same(directory / PROVENANCE, "input checkpoint", prov.get("inputs", {}).get("checkpoint"), checkpoint)
        if self.plan.fetches(model):  # the hub dataset files the samples were drawn from
            self._same(directory / PROVENANCE, "input fetch", prov.get("inputs", {}).get("fetch"), fetched)
        self._params(directory / PROVENANCE, prov, "samples", model)
        return prov.get("samples_sha256")

    def mask(self, model: str, method: str, level: str, checkpoint: str | None, samples: str | None) -> None:
        from prunemem.identity import mask_header

        path = self.plan.mask_path(model, method, level)
        if not path.is_file():
            self.fail(path, "missing; run the pipeline")
            return
        self.checked += 1
        try:
            meta = mask_header(path)
            kept = kept_counts(path, meta["shapes"])
        except PrunememError as err:
            self.fail(path, str(err).removeprefix(f"{path}: "))
            return
        self._expect(path, "method in its header", meta["method"], method)
        self._expect(path, "level in its header", meta["level"], level)
        self._same(path, "checkpoint in its header", meta["checkpoint_sha256"], checkpoint)
        self._same(path, "kept counts of its bits", meta["kept"], kept)
        prov = meta["provenance"]
        if "samples" in prov.get("inputs", {}):
            self._same(path, "calibration samples", prov["inputs"]["samples"], samples)
        self._params(path, prov, "mask", model, method, level)

    def transform(self, model: str, method: str, level: str, checkpoint: str | None, samples: str | None) -> None:
        path = self.plan.transform_path(model, method, level)
        rec = self._json(path)
        if rec is None:
            return
        self.checked += 1
        self._expect(path, "method", rec.get("method"), method)
        self._expect(path, "level", rec.get("level"), level)
        self._same(path, "checkpoint", rec.get("checkpoint_sha256"), checkpoint)
        prov = rec.get("provenance", {})
        if "samples" in prov.get("inputs", {}):
            self._same(path, "calibration samples", prov["inputs"]["samples"], samples)
        self._params(path, prov, "transform", model, method, level)

    def metrics(self, model: str, method: str, level: str, checkpoint: str | None, samples: str | None) -> None:
        from prunemem.evaluate import mia
        from prunemem.evaluate.stats import rate_row

        directory = self.plan.metrics_dir(model, method, level)
        summary = self._json(directory / "summary.json")
        if summary is None:
            return
        self.checked += 1
        where = directory / "summary.json"
        for key, value in (("model", model), ("method", method), ("level", level)):
            self._expect(where, key, summary.get(key), value)
        files = {}
        for name, key in (("memorization.parquet", "memorization_sha256"), ("mia.parquet", "mia_sha256"),
                          ("perplexity_windows.parquet", "perplexity_sha256")):
            path = directory / name
            if not path.is_file():
                self.fail(path, "missing")
            elif self._same(path, "sha256", summary.get(key), sha256_file(path)):
                files[name] = path
        prov = summary.get("provenance", {})
        inputs = prov.get("inputs", {})
        self._same(where, "input checkpoint", inputs.get("checkpoint"), checkpoint)
        self._same(where, "input samples", inputs.get("samples"), samples)
        artifact = self.plan.variant_artifact(model, method, level)
        if artifact is not None:
            key = "mask" if self.plan.kind(method) == "mask" else "transform"
            actual = sha256_file(artifact) if artifact.is_file() else None
            self._same(where, f"input {key} ({artifact})", inputs.get(key), actual)
        self._params(where, prov, "evaluate")
        if "memorization.parquet" in files:
            per_sample = pl.read_parquet(files["memorization.parquet"])
            recorded = {row["k"]: row for row in summary.get("per_k", [])}
            for k in self.plan.ks:
                row = recorded.get(k, {})
                for key, value in rate_row(per_sample, k).items():
                    if not _close(row.get(key), value):
                        self.fail(where, f"k={k} {key} is {row.get(key)} but memorization.parquet gives {value}")
        if "mia.parquet" in files:
            scores = pl.read_parquet(files["mia.parquet"])
            member = scores["member"].to_numpy()
            for row in summary.get("mia", []):
                values = scores[row["score"]].to_numpy()
                actual = mia.auc(values[member], values[~member])
                if not _close(row.get("auc"), actual):
                    self.fail(where, f"{row['score']} AUC is {row.get('auc')} but mia.parquet gives {actual}")

    def downstream(self, model: str, method: str, level: str, checkpoint: str | None) -> None:
        """lm-eval's scores: the per-sample logs' hashes, the inputs and params, and each task's mean
        metric recomputed from its per-sample log (what lm-eval's ``mean`` aggregation reports)."""
        directory = self.plan.downstream_dir(model, method, level)
        where = directory / "summary.json"
        summary = self._json(where)
        if summary is None:
            return
        self.checked += 1
        for key, value in (("model", model), ("method", method), ("level", level)):
            self._expect(where, key, summary.get(key), value)
        logs = {}
        for name, recorded in summary.get("files", {}).items():
            path = directory / name
            if not path.is_file():
                self.fail(path, "missing")
            elif self._same(path, "sha256", recorded, sha256_file(path)):
                logs[name] = path
        prov = summary.get("provenance", {})
        inputs = prov.get("inputs", {})
        self._same(where, "input checkpoint", inputs.get("checkpoint"), checkpoint)
        artifact = self.plan.variant_artifact(model, method, level)
        if artifact is not None:
            key = "mask" if self.plan.kind(method) == "mask" else "transform"
            self._same(where, f"input {key} ({artifact})", inputs.get(key),
                       sha256_file(artifact) if artifact.is_file() else None)
        self._params(where, prov, "downstream")
        for task, info in summary.get("tasks", {}).items():
            path = logs.get(f"samples_{task}.jsonl")
            if path is None:
                continue
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            for key, metric in info.get("metrics", {}).items():
                name, filt = key.split(",", 1)
                values = [row[name] for row in rows if row.get("filter", "none") == filt and name in row]
                if len(values) == len(rows) and values and not _close(metric.get("value"),
                                                                       sum(map(float, values)) / len(values)):
                    self.fail(where, f"{task} {key} is {metric.get('value')} but its per-sample log gives "
                                     f"{sum(map(float, values)) / len(values)}")

    def report(self) -> None:
        from prunemem.report import tables

        path = self.plan.reports_dir / "results.csv"
        if not path.is_file():
            self.fail(path, "missing; run the report")
            return
        self.checked += 1
        try:
            expected = tables.results(self.plan)
        except PrunememError as err:
            self.fail(path, f"cannot be rebuilt from the summaries ({err})")
            return
        published = pl.read_csv(path, infer_schema_length=0)  # all strings: compare what a reader sees
        fresh = pl.read_csv(expected.write_csv().encode(), infer_schema_length=0)
        if published.columns != fresh.columns:
            self.fail(path, f"columns differ from the contract: {published.columns} vs {fresh.columns}")
            return
        if published.height != fresh.height:
            self.fail(path, f"{published.height} rows, but the summaries give {fresh.height}")
            return
        for i, (have, want) in enumerate(zip(published.iter_rows(named=True), fresh.iter_rows(named=True))):
            for column in published.columns:
                if have[column] != want[column] and not _close(_num(have[column]), _num(want[column])):
                    self.fail(path, f"row {i + 2} ({want['model']} {want['method']} {want['level']} k={want['k']}) "
                                    f"{column} is {have[column]} but the summaries give {want[column]}")
        report = self.plan.reports_dir / "provenance.json"
        prov = self._json(report)
        if prov is not None:
            for name, recorded in prov.get("files", {}).items():
                target = self.plan.reports_dir / name
                self._same(target, "sha256", recorded, sha256_file(target) if target.is_file() else None)
            for name, recorded in prov.get("figures", {}).items():  # figures/<name>.svg
                target = self.plan.reports_dir / FIGURES / f"{name}.svg"
                self._same(target, "sha256", recorded, sha256_file(target) if target.is_file() else None)

    def dvc(self) -> None:
        """``dvc status`` must be clean: dvc.lock matches the workspace bytes and params.yaml."""
        lock = self.plan.root / "dvc.lock"
        if not lock.is_file():
            log.info("no dvc.lock: nothing published through DVC to compare")
            return
        from dvc.repo import Repo

        self.checked += 1
        with Repo(str(self.plan.root)) as repo:
            status = repo.status()
        for stage, changes in sorted(status.items()):
            self.fail(f"dvc.lock stage {stage}", f"differs from the workspace: {_describe_dvc(changes)}")

    def dvc_yaml(self) -> None:
        """dvc.yaml must be what the job table generates (``prunemem dvc-yaml``), stage by stage."""
        path = self.plan.root / "dvc.yaml"
        if not path.is_file():
            return
        import yaml

        from prunemem.dvcgen import stages

        self.checked += 1
        try:
            found = (yaml.safe_load(path.read_text()) or {}).get("stages", {})
        except (yaml.YAMLError, AttributeError) as err:
            self.fail(path, f"unreadable ({err})")
            return
        wanted = stages(Plan(self.plan.params))["stages"]  # dvc.yaml spells paths from the repository root
        for name in wanted.keys() - found.keys():
            self.fail(f"dvc.yaml stage {name}", "missing; regenerate dvc.yaml (prunemem dvc-yaml)")
        for name in found.keys() - wanted.keys():
            self.fail(f"dvc.yaml stage {name}", "is not a job of the plan; regenerate dvc.yaml (prunemem dvc-yaml)")
        for name in sorted(wanted.keys() & found.keys()):
            fields = [f for f in sorted(wanted[name].keys() | found[name].keys())
                      if wanted[name].get(f) != found[name].get(f)]
            if fields:
                self.fail(f"dvc.yaml stage {name}", f"{', '.join(fields)} differ from the job table; regenerate "
                                                    "dvc.yaml (prunemem dvc-yaml)")

    def run(self, dvc: bool = True) -> list[str]:
        """Every job of the job table, upstream first; then dvc.yaml against the table, then dvc.lock."""
        hashes: dict[tuple, str | None] = {}
        for job in self.plan.jobs():
            upstream = {j.stage: hashes.get(j.id) for j in self.plan.upstream(job)
                        if j.stage in ("fetch", "checkpoint", "samples")}
            ckpt, samples = upstream.get("checkpoint"), upstream.get("samples")
            if job.stage == "fetch":
                hashes[job.id] = self.fetch(job.model)
            elif job.stage == "checkpoint":
                hashes[job.id] = self.checkpoint(job.model)
            elif job.stage == "samples":
                hashes[job.id] = self.samples(job.model, ckpt, upstream.get("fetch"))
            elif job.stage == "mask":
                self.mask(job.model, job.method, job.level, ckpt, samples)
            elif job.stage == "transform":
                self.transform(job.model, job.method, job.level, ckpt, samples)
            elif job.stage == "evaluate":
                self.metrics(job.model, job.method, job.level, ckpt, samples)
            elif job.stage == "downstream":
                self.downstream(job.model, job.method, job.level, ckpt)
            else:
                self.report()
        if dvc:
            self.dvc_yaml()
            self.dvc()
        return self.mismatches


def _describe_dvc(changes) -> str:
    parts = []
    for change in changes:
        if isinstance(change, dict):
            for kind, detail in change.items():
                parts.append(f"{kind} {json.dumps(detail, sort_keys=True)}")
        else:
            parts.append(str(change))
    return "; ".join(parts)


def _num(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def _close(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)
    return a == b


def _short(value) -> str:
    text = str(value)
    return text[:12] + "..." if len(text) > 16 and " " not in text else repr(value)
