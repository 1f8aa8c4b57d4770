"""One downstream job: a variant, loaded once as evaluation loads it, scored by lm-evaluation-harness.

    prunemem downstream --model tiny --method global --level 0.5

The variant (``prunemem.evaluate.run.load_variant``: checkpoint, then its mask or transform,
verified, on ``evaluate.device`` in ``evaluate.dtype``) is handed to lm-eval's Python API as it
is in memory, ``simple_evaluate(model=HFLM(pretrained=<the loaded model>, tokenizer=...))``:
no second load, no copy on disk. (``downstream.backend: vllm`` is the exception: vLLM loads a
checkpoint directory itself, so the variant is exported to a temporary standard checkpoint
first, ``prunemem.export.export_variant``, and removed after.)

Tasks, few-shot counts, ``limit``, seeds and generation settings come from params
``downstream:``. Our own tasks (``prunemem.downstream.local``: ``prunemem_nextline``,
``prunemem_completeline``) are written for the run from the embedded corpus's held-out split;
any other name is one of lm-eval's tasks or groups, read from the Hugging Face cache.

Writes to ``Plan.downstream_dir(model, method, level)``, whole or not at all:

- ``summary.json``: per task its metrics with their stderr (``acc``/``acc_norm`` for multiple
  choice, ``exact_match`` per filter for generation), the number of documents scored and
  available, and its provenance: lm-eval's version, the sha256 of the task's resolved config as
  lm-eval dumps it (run-local paths replaced by the data files' sha256), the dataset (path,
  name, configured revision, and the commit the cache holds; our tasks: the data file's
  sha256), few-shot count, seeds and limit;
- ``samples_<task>.jsonl``: lm-eval's per-sample log, one document a line.

Bad input is refused before any weights load: an unknown task name with the close matches, and
(offline) a hub task whose dataset is not in the cache with the command that pre-fetches it.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

from prunemem.downstream import local
from prunemem.errors import PrunememError
from prunemem.plan import DOWNSTREAM_SUMMARY, Plan
from prunemem.provenance import AtomicDir, digest_json, record, sha256_file

log = logging.getLogger(__name__)

SUMMARY = DOWNSTREAM_SUMMARY


def samples_file(task: str) -> str:
    return f"samples_{task}.jsonl"


def settings(params: dict) -> dict:
    """params ``downstream:`` with its defaults (the schema documents each key)."""
    if "downstream" not in params:
        raise PrunememError("downstream: no downstream section in params; add one (README, \"Downstream tasks\")")
    ds = params["downstream"]
    return {"limit": None, "batch_size": "auto", "max_batch_size": 64, "seed": 0, "backend": "hf",
            "bootstrap": 1000, "gen_kwargs": {}, "apply_chat_template": False, "system_instruction": None,
            "max_length": None, "model_args": {}, "vllm": {}, **ds,
            "tasks": [{"num_fewshot": None, "gen_kwargs": {}, **t} for t in ds["tasks"]]}


def _collect_environment_once() -> None:
    """simple_evaluate records the environment with torch's ``collect_env`` on every call: ~0.8 s of
    subprocesses (pip, nvidia-smi, lscpu) per variant, a third of a variant's scoring on the embedded
    model. The environment does not change within one process, so it is collected for the first
    variant and reused (lm-eval imports the function at call time, so the module attribute is what it
    gets; its output, results["pretty_env_info"], is not part of what we write)."""
    import functools

    import torch.utils.collect_env as collect_env

    if not hasattr(collect_env.get_pretty_env_info, "cache_info"):
        collect_env.get_pretty_env_info = functools.cache(collect_env.get_pretty_env_info)


# -- the tasks, before any model loads --------------------------------------------------------------
def task_manager(names: list[str], include_path: Path | None):
    """lm-eval's TaskManager over our task directory, and over lm-eval's own tasks only when a name
    needs them: indexing its ~15,000 YAMLs takes ~10 s, twice a local job's whole run."""
    from lm_eval.tasks import TaskManager

    hub = any(n not in local.TASKS for n in names)
    return TaskManager(include_path=str(include_path) if include_path else None, include_defaults=hub)


def check_names(names: list[str], manager) -> None:
    """Every name a task, group or tag lm-eval knows (ours included), or one line with close matches."""
    known = set(manager.all_tasks) | set(local.TASKS)
    for i, name in enumerate(names):
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=5, cutoff=0.6)
            hint = f"close matches: {', '.join(close)}" if close else "no close match (`lm-eval ls tasks` lists them)"
            raise PrunememError(f"downstream.tasks[{i}].name: {name!r} is not an lm-eval task; {hint}")


def _dataset_spec(manager, name: str) -> dict:
    """dataset_path / dataset_name / revision of a task as configured (includes resolved)."""
    entry = manager.task_index.get(name)
    cfg = dict(entry.cfg or {}) if entry else {}
    if entry is not None and entry.yaml_path:
        try:  # lm-eval's own loader resolves `include:`; a private module of the pinned lm_eval 0.4
            from lm_eval.tasks._yaml_loader import load_yaml

            cfg = load_yaml(entry.yaml_path, resolve_func=False)
        except Exception:  # noqa: BLE001 -- the index's own copy is enough to name the dataset
            pass
    kwargs = cfg.get("dataset_kwargs") or {}
    return {"path": cfg.get("dataset_path"), "name": cfg.get("dataset_name"), "revision": kwargs.get("revision")}


def prefetch_hint(spec: dict) -> str:
    """The command that puts a task's dataset into the Hugging Face cache, on a machine with network."""
    args = ", ".join(repr(a) for a in (spec["path"], spec["name"]) if a)
    revision = f", revision={spec['revision']!r}" if spec["revision"] else ""
    cli_revision = f" --revision {spec['revision']}" if spec["revision"] else ""
    return (f"python -c \"import datasets; datasets.load_dataset({args}{revision})\" (or `hf download --repo-type "
            f"dataset {spec['path']}{cli_revision}`), then copy the cache (HF_HOME) here")


def load_tasks(manager, entries: list[dict]) -> dict:
    """The lm-eval Task objects of ``entries`` (``downstream.tasks``), their datasets read.

    Each few-shot count and generation setting is set on the task itself, so that tasks differ
    (simple_evaluate's own num_fewshot would set one count for all).
    """
    from lm_eval.api.group import Group

    tasks = {}
    for i, entry in enumerate(entries):
        name = entry["name"]
        try:
            loaded = manager.load([name])
        except (ConnectionError, FileNotFoundError, OSError) as err:
            spec = _dataset_spec(manager, name)
            if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") and spec["path"]:
                raise PrunememError(f"downstream.tasks[{i}].name: {name}: dataset {spec['path']}"
                                    f"{'/' + spec['name'] if spec['name'] else ''} is not in the Hugging Face cache "
                                    f"and HF_HUB_OFFLINE=1; pre-fetch it: {prefetch_hint(spec)}") from None
            raise PrunememError(f"downstream.tasks[{i}].name: {name}: cannot read its dataset "
                                f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
        for task_name, task in loaded["tasks"].items():
            if isinstance(task, Group):
                continue
            if entry["num_fewshot"] is not None:
                task.set_config(key="num_fewshot", value=entry["num_fewshot"])
            if entry["gen_kwargs"] and task.get_config("output_type") == "generate_until":
                task.set_config(key="generation_kwargs", value=dict(entry["gen_kwargs"]), update=True)
            tasks[task_name] = task
    return tasks


# -- provenance ------------------------------------------------------------------------------------
def _hub_commit(path: str | None, revision: str | None) -> str | None:
    """The commit of a hub dataset the Hugging Face cache holds for ``revision`` (default main)."""
    if not path or "/" not in path:
        return None
    from huggingface_hub.constants import HF_HUB_CACHE

    ref = Path(HF_HUB_CACHE) / f"datasets--{path.replace('/', '--')}" / "refs" / (revision or "main")
    try:
        return ref.read_text().strip()
    except OSError:
        return revision if revision and len(revision) == 40 else None


def portable_config(config: dict, data_hashes: dict[str, str]) -> dict:
    """lm-eval's dumped task config with what is local to this run (our data files' temporary
    paths, the datasets cache) replaced by the data files' sha256: equal tasks hash equal."""
    config = json.loads(json.dumps(config, default=str))
    kwargs = config.get("dataset_kwargs") or {}
    if "data_files" in kwargs:
        files = kwargs["data_files"]
        files = files if isinstance(files, dict) else {"data": files}
        kwargs["data_files"] = {split: data_hashes.get(Path(str(p)).stem, Path(str(p)).name)
                                for split, p in files.items()}
    kwargs.pop("cache_dir", None)
    config.get("metadata", {}).pop("config_source", None)  # where the YAML lay, not what it says
    return config


def task_summary(name: str, results: dict, config: dict, n: dict, data_hashes: dict) -> dict:
    """One task's metrics ({metric,filter: {value, stderr}}), counts and provenance."""
    metrics = {}
    for key, value in results.items():
        if "," not in key or key.split(",")[0].endswith("_stderr"):
            continue
        metric, filt = key.split(",", 1)
        stderr = results.get(f"{metric}_stderr,{filt}")
        metrics[key] = {"value": float(value), "stderr": None if stderr in (None, "N/A") else float(stderr)}
    portable = portable_config(config, data_hashes)
    kwargs = portable.get("dataset_kwargs") or {}
    if name in data_hashes:
        dataset = {"path": "json (prunemem.downstream.local)", "data_sha256": data_hashes[name]}
    else:
        path, revision = portable.get("dataset_path"), kwargs.get("revision")
        dataset = {"path": path, "name": portable.get("dataset_name"), "revision": revision,
                   "commit": _hub_commit(path, revision)}
    return {"metrics": metrics, "n": n.get("effective"), "n_available": n.get("original"),
            "output_type": portable.get("output_type"), "num_fewshot": portable.get("num_fewshot"),
            "config_sha256": digest_json(portable), "dataset": dataset}


def columns(summary: dict) -> dict[str, float | None]:
    """A summary's metrics as flat result columns: ``downstream_<task>_<metric>[_<filter>]`` and
    its ``_stderr`` (lm-eval's default filter ``none`` is left out of the name)."""
    out = {}
    for task, info in sorted(summary["tasks"].items()):
        for key, m in sorted(info["metrics"].items()):
            metric, filt = key.split(",", 1)
            name = f"downstream_{task}_{metric}" + ("" if filt == "none" else f"_{filt}")
            name = name.replace("-", "_")
            out[name], out[f"{name}_stderr"] = m["value"], m["stderr"]
    return out


# -- the job ---------------------------------------------------------------------------------------
def _lm(plan: Plan, model_name: str, method: str, level: str, ds: dict, tmp: Path):
    """The lm-eval model of the variant, and what was loaded (inputs' hashes, device, dtype, batch)."""
    from prunemem.checkpoints import checkpoint_hash, load_tokenizer
    from prunemem.evaluate.run import fit_batch_size, load_variant
    from prunemem.runtime import deterministic, resolve_device

    ev = plan.params["evaluate"]
    device, dtype = resolve_device(ev["device"], ev["dtype"], "evaluate")
    ckpt_dir = plan.checkpoint_dir(model_name)
    if ds["backend"] == "vllm":  # vLLM's kernels are its own: torch's deterministic switch would refuse some
        try:
            from lm_eval.models.vllm_causallms import VLLM
            import vllm  # noqa: F401 -- lm-eval imports it lazily; fail here, in one line
        except ImportError:
            raise PrunememError("downstream.backend: vllm needs the vllm package (pip install "
                                "'prunemem[reasoning]' on a GPU node); allowed without it: hf") from None
        from prunemem.export import export_variant

        exported = export_variant(plan, model_name, method, level, tmp / "export", str(dtype).removeprefix("torch."))
        prov = json.loads((exported / "provenance.json").read_text())
        lm = VLLM(pretrained=str(exported), dtype=str(dtype).removeprefix("torch."), seed=ds["seed"],
                  batch_size=ds["batch_size"], max_batch_size=ds["max_batch_size"],
                  **({"max_length": ds["max_length"]} if ds["max_length"] else {}), **ds["model_args"], **ds["vllm"])
        return lm, {**prov["inputs"], "checkpoint": checkpoint_hash(ckpt_dir)}, device, dtype, ds["batch_size"]
    from lm_eval.models.huggingface import HFLM

    deterministic(ds.get("threads") or ev["threads"])
    model, _, inputs, _ = load_variant(plan, model_name, method, level, device, dtype)
    inputs["checkpoint"] = checkpoint_hash(ckpt_dir)
    model.eval()
    max_length = ds["max_length"] or model.config.max_position_embeddings
    batch = ds["batch_size"]
    if batch == "auto":  # fitted like evaluation's: lm-eval's own "auto" probes by running out of memory
        batch = fit_batch_size(model.config, max_length, max_length, dtype, device, ds["max_batch_size"])
    lm = HFLM(pretrained=model, tokenizer=load_tokenizer(ckpt_dir), batch_size=batch, max_length=max_length,
              **ds["model_args"])
    return lm, inputs, device, dtype, batch


def _json_line(sample: dict) -> str:
    from lm_eval.utils import handle_non_serializable

    return json.dumps(sample, default=handle_non_serializable, ensure_ascii=False, sort_keys=True)


class Downstream:
    """The tasks of one model, read once, scoring any number of its variants in turn.

        with Downstream(plan, "tiny") as tasks:          # names checked, datasets read: no model yet
            for method, level in plan.variants("tiny"):
                tasks.run(method, level)                 # loads the variant once, writes its directory

    One process scoring many variants pays the imports, lm-eval's task index and our tasks' data
    once (~6 s of a ~10 s job on the embedded model); ``run_downstream`` is one variant.
    """

    def __init__(self, plan: Plan, model_name: str):
        self.plan, self.model_name, self.ds = plan, model_name, settings(plan.params)
        self._scratch = tempfile.TemporaryDirectory(prefix="prunemem-downstream-")
        try:
            self.scratch = Path(self._scratch.name)
            names = [t["name"] for t in self.ds["tasks"]]
            self.data_hashes, include = {}, None
            if any(n in local.TASKS for n in names):
                include, hashes = local.include_dir(plan.params, self.scratch / "tasks", cache_dir=self.scratch / "cache")
                self.data_hashes = {n: h for n, h in hashes.items() if n in names}
            self.manager = task_manager(names, include)
            check_names(names, self.manager)
            self.tasks = load_tasks(self.manager, self.ds["tasks"])  # read (or refused) before any model loads
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._scratch.cleanup()

    def __enter__(self) -> "Downstream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, method: str, level: str, out_dir: str | Path | None = None) -> dict:
        """Score one variant; write ``summary.json`` and per-sample logs to ``out_dir`` (default
        ``plan.downstream_dir(model, method, level)``), whole or not at all; returns the summary."""
        import lm_eval
        from importlib.metadata import version

        plan, ds, model_name = self.plan, self.ds, self.model_name
        out_dir = Path(out_dir) if out_dir is not None else plan.downstream_dir(model_name, method, level)
        start = time.perf_counter()
        # a vLLM export lives only as long as this variant's scoring
        with tempfile.TemporaryDirectory(prefix="variant-", dir=self.scratch) as variant_tmp:
            lm, inputs, device, dtype, batch = _lm(plan, model_name, method, level, ds, Path(variant_tmp))
            log.info("downstream %s/%s/%s on %s in %s, batch %s: %s", model_name, method, level, device, dtype,
                     batch, ", ".join(self.tasks))
            seed = ds["seed"]
            _collect_environment_once()
            results = lm_eval.simple_evaluate(
                model=lm, tasks=list(self.tasks.values()), limit=ds["limit"], log_samples=True,
                task_manager=self.manager, bootstrap_iters=ds["bootstrap"], gen_kwargs=ds["gen_kwargs"] or None,
                apply_chat_template=ds["apply_chat_template"], system_instruction=ds["system_instruction"],
                random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
            del lm
            if device == "cuda":  # the next variant gets the whole GPU
                import torch

                torch.cuda.empty_cache()
        summary_tasks = {name: task_summary(name, results["results"][name], results["configs"][name],
                                            results["n-samples"].get(name, {}), self.data_hashes)
                         for name in self.tasks}
        groups = {g: {k: v for k, v in r.items() if "," in k} for g, r in results.get("groups", {}).items()}
        summary = {"model": model_name, "method": method, "level": level, "tasks": summary_tasks, "groups": groups,
                   "lm_eval_version": version("lm_eval"), "backend": ds["backend"], "device": device,
                   "dtype": str(dtype).removeprefix("torch."), "batch_size": batch, "limit": ds["limit"],
                   "seed": seed, "provenance": record("downstream", inputs, plan.stage_params("downstream"))}
        with AtomicDir(out_dir) as tmp:
            for name in self.tasks:
                with open(tmp / samples_file(name), "w", encoding="utf-8") as fh:
                    fh.writelines(_json_line(s) + "\n" for s in results["samples"][name])
            summary["files"] = {samples_file(n): sha256_file(tmp / samples_file(n)) for n in self.tasks}
            (tmp / SUMMARY).write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
        log.info("downstream %s/%s/%s: %s in %.1f s", model_name, method, level,
                 ", ".join(f"{n} {next(iter(t['metrics'].values()))['value']:.3f}"
                           for n, t in summary_tasks.items() if t["metrics"]), time.perf_counter() - start)
        return summary


def run_downstream(plan: Plan, model_name: str, method: str, level: str, out_dir: str | Path | None = None,
                   progress=None) -> dict:
    """Score one variant on ``downstream.tasks`` (``Downstream(plan, model).run(method, level, out_dir)``).

    ``progress`` is accepted for symmetry with the other stages; lm-eval draws its own bars.
    """
    with Downstream(plan, model_name) as tasks:
        return tasks.run(method, level, out_dir)
