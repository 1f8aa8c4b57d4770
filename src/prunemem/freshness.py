"""Is an existing artifact still what params.yaml and its inputs would build? (for Snakemake)

Snakemake judges freshness by its own metadata and by mtimes. A fresh clone whose data came
from `dvc pull` has no metadata and arbitrary mtimes, which makes Snakemake either trust stale
outputs or rebuild good ones in whatever order DVC happened to write them (docs/architecture.md,
"Two tools, one job table"). Every artifact records the digest of its params and the hashes of
its inputs, so ``judge`` (called by ``workflow/rules/common.smk`` before the DAG is built) judges
each job of the job table from that record, and writes nothing:

- an artifact that no longer follows from its params or inputs gets a reason; the rule then
  takes a stamp file under ``.snakemake/`` as an extra input, so Snakemake reruns it (and,
  through its outputs, everything downstream);
- an artifact that does follow, whose code is older than it and none of whose upstream jobs
  will rerun, has its artifact inputs marked ``ancient`` for Snakemake (``settled``), so their
  mtimes alone do not rerun it. Code inputs are never ancient, and a job downstream of one that
  reruns keeps plain inputs (Snakemake does not carry a rerun through an ``ancient`` input).
"""

from __future__ import annotations

import json
from pathlib import Path

from prunemem.errors import PrunememError
from prunemem.identity import checkpoint_hash, fetched_hash, mask_provenance, samples_hash
from prunemem.plan import Job, Plan
from prunemem.provenance import sha256_file

FRESH = None  # judge(): the artifact follows from its params and inputs


def _record(plan: Plan, job: Job) -> dict | str | None:
    """An existing artifact's provenance record; None when there is no artifact, "unreadable" when broken."""
    path = job.record
    if not path.exists():
        return None
    try:
        if job.stage == "mask":
            return mask_provenance(path)
        record = json.loads(path.read_text())
        return record["provenance"] if job.stage in ("transform", "evaluate", "downstream") else record
    except (OSError, ValueError, KeyError, TypeError, PrunememError):
        return "unreadable"


def _current_inputs(plan: Plan, job: Job, file_hash) -> dict[str, str]:
    """What the job's artifact would record as its inputs if it were built now (from the job table)."""
    if job.stage in ("fetch", "checkpoint"):
        return {}  # its inputs (corpus, hub or dataset files) are pinned by its params
    if job.stage == "report":
        return {**{f"{e.model}/{e.method}/{e.level}": file_hash(e.record) for e in plan.upstream(job, "summaries")},
                **{f"downstream/{e.model}/{e.method}/{e.level}": file_hash(e.record)
                   for e in plan.upstream(job, "downstream")}}
    inputs = {}
    for role, ids in job.inputs:
        for up in plan.upstream(job, role):
            if role == "checkpoint":
                inputs[role] = checkpoint_hash(up.out[0])
            elif role == "samples":
                inputs[role] = samples_hash(up.out[0])
            elif role == "fetch":  # the hub dataset files the samples were drawn from
                inputs[role] = fetched_hash(up.record)
            else:  # the mask or transform an evaluation applies
                inputs[role] = file_hash(up.record)
    return inputs


def staleness(plan: Plan, job: Job, file_hash=sha256_file) -> str | None:
    """Why an existing artifact no longer follows from params.yaml and its inputs; None if it does or is absent."""
    record = _record(plan, job)
    if record is None:
        return None
    if record == "unreadable":
        return "its provenance is unreadable"
    if record.get("params_digest") != plan.stage_digest(*job.id):
        return "built with other params"
    try:
        current = _current_inputs(plan, job, file_hash)
    except (OSError, ValueError, KeyError, PrunememError):
        return None  # an input is missing or broken: Snakemake rebuilds it, and this after it
    recorded = record.get("inputs", {})
    changed = sorted(key for key, value in current.items() if recorded.get(key) != value)
    return f"input {', '.join(changed)} changed" if changed else None


def judge(plan: Plan, file_hash=sha256_file) -> dict[tuple, str | None]:
    """{job id: reason it is stale, or FRESH} for every job whose artifact exists. Writes nothing."""
    verdicts = {}
    for job in plan.jobs():
        if _record(plan, job) is None or not all(p.exists() for p in job.outputs):
            continue
        verdicts[job.id] = staleness(plan, job, file_hash)
    return verdicts


def _mtime(path: Path) -> float:
    """A file's mtime; a directory's is its newest file's (what a directory output's bytes date from)."""
    if path.is_dir():
        return max((p.stat().st_mtime for p in path.rglob("*") if p.is_file()), default=path.stat().st_mtime)
    return path.stat().st_mtime


def settled(plan: Plan, verdicts: dict[tuple, str | None], code_root: Path) -> set[tuple]:
    """Jobs whose artifact inputs Snakemake may take as ``ancient``: fresh by their record, built after
    their code, and downstream of no job that will rerun. Reads mtimes; writes nothing."""
    rerun, out, code = set(), set(), {}
    for job in plan.jobs():
        fresh = job.id in verdicts and verdicts[job.id] is FRESH
        if fresh and not any(up.id in rerun for up in plan.upstream(job)):
            built = min(_mtime(p) for p in job.outputs)
            for f in job.code:
                if f not in code:
                    code[f] = _mtime(code_root / f)
            if max((code[f] for f in job.code), default=0.0) <= built:
                out.add(job.id)
                continue
        rerun.add(job.id)
    return out


class HashCache:
    """sha256 of files, cached by (size, mtime, inode) in a JSON file under .snakemake/, as DVC caches its md5s.

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
