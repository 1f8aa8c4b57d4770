"""params.yaml -> a validated experiment plan: the single source of truth for Snakemake and DVC.

    prunemem validate --params params.yaml      # one line per problem, exit 1

Every path an artifact lives at is defined here and nowhere else.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from functools import cache, cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import yaml

from prunemem.codedeps import closure
from prunemem.data.layout import PRESHUFFLED_ROW, hf_specs, local_format, preshuffled_step  # noqa: F401 (re-exported)
from prunemem.data.canaries import canary_counts
from prunemem.errors import PrunememError
from prunemem.prune import registry
from prunemem.prune.registry import DENSE, DENSE_LEVEL, LOWRANK, level_name, uses_calibration  # noqa: F401
from prunemem.prune.units import check_adapruner_space, check_evop_level, check_width_names
from prunemem.provenance import digest_json

# the artifact contract: the files each stage writes (docs/architecture.md, "Artifacts")
CHECKPOINT_PROVENANCE = "provenance.json"
SAMPLE_FILES = ("members.parquet", "search.parquet", "nonmembers.parquet", "perplexity.parquet", "calibration.parquet")
SAMPLE_PROVENANCE = "provenance.json"
# perplexity_windows.parquet: per-window NLL with its document, for the report's paired bootstrap
METRICS_FILES = ("memorization.parquet", "mia.parquet", "perplexity_windows.parquet", "summary.json")
# what the report stage writes under reports/ (results.csv ... its own provenance, written last)
FIGURES = "figures"  # reports/figures/: one SVG per chart of the page, for papers
REPORT_FILES = ("results.csv", "layer_sparsity.csv", "search_history.csv", "comparisons.csv", "claims.csv",
                "metrics.json", "report.html", FIGURES, "provenance.json")
REPORT_DIRECTORIES = (FIGURES,)


@cache
def schema() -> dict:
    """The params schema; callers only read it, so it is parsed once per process, with libyaml's C
    loader where present (the pure-Python one spent ~0.3 s of every job's start-up on this file)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(resources.files("prunemem").joinpath("schemas/params.schema.yaml").read_text(), Loader=loader)


def _deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_params(paths: Iterable[str | Path]) -> dict:
    """Read and deep-merge YAML files, later files winning (Snakemake's --configfile semantics)."""
    merged: dict = {}
    for path in paths:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise PrunememError(f"{path}: params file not found") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise PrunememError(f"{path}:{where} malformed YAML ({getattr(err, 'problem', err)})") from None
        if not isinstance(data, dict):
            raise PrunememError(f"{path}: expected a mapping of sections at the top level")
        merged = _deep_merge(merged, data)
    return merged


def _key_path(error) -> str:
    parts = []
    for part in error.absolute_path:
        parts.append(f"[{part}]" if isinstance(part, int) else f".{part}")
    return "".join(parts).lstrip(".") or "<top level>"


def _describe(error) -> str:
    """Turn a jsonschema error into 'key: problem; allowed: ...'."""
    key = _key_path(error)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        where = f"{key}." if key != "<top level>" else ""
        return f"unknown key '{where}{extra[0] if extra else '?'}'; allowed keys here: {', '.join(allowed) or 'model names'}"
    if error.validator == "enum":
        return f"{key}: {error.instance!r} is not allowed; allowed: {', '.join(map(str, error.validator_value))}"
    if error.validator == "anyOf":
        allowed = []
        for option in error.validator_value:
            allowed += [str(v) for v in option.get("enum", [])]
            allowed += [repr(option["const"])] if "const" in option else []
            allowed += [f"names matching {option['pattern']}"] if "pattern" in option else []
            if option.get("type") in ("integer", "number") and "pattern" not in option:
                bound = f" >= {option['minimum']}" if "minimum" in option else ""
                allowed.append(f"an {option['type']}{bound}" if option["type"] == "integer" else f"a number{bound}")
        numeric = isinstance(error.instance, (int, float)) and not isinstance(error.instance, bool)
        typed = any(option.get("type") in ("integer", "number") for option in error.validator_value)
        problem = "has the wrong type" if typed and not numeric and not any(
            error.instance == option.get("const") for option in error.validator_value) else "is not allowed"
        return f"{key}: {error.instance!r} {problem}; allowed: {' or '.join(allowed)}"
    if error.validator == "required":
        return f"{key}: {error.message}"
    if error.validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        bound = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[error.validator]
        return f"{key}: {error.instance!r} is out of range; allowed: {bound} {error.validator_value}"
    if error.validator == "type":
        return f"{key}: {error.instance!r} has the wrong type; allowed: {error.validator_value}"
    return f"{key}: {error.message}"


def validate(params: dict, source: str = "params") -> None:
    """Schema check plus the cross-field checks a schema cannot express. Raises PrunememError."""
    import jsonschema

    registry.check_declared_keys(schema())  # a method may only read keys the schema defines
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(params), key=lambda e: (len(list(e.absolute_path)), _key_path(e)))
    if errors:
        raise PrunememError(f"{source}: {_describe(errors[0])}")

    samples = params["samples"]
    suffix, k_max = samples["suffix_tokens"], max(samples["k"])
    if not any(m.get("enabled", True) for m in params["models"].values()):
        raise PrunememError(f"{source}: models: every model has enabled: false; allowed: at least one enabled model")
    for name, model in params["models"].items():
        _validate_model_sources(name, model, k_max + suffix, source)
        if model["source"] == "embedded":
            if "embedded" not in params:
                raise PrunememError(f"{source}: models.{name}.source is 'embedded' but there is no 'embedded' section")
            emb = params["embedded"]
            context = emb["architecture"]["seq_len"]
            if k_max > context - suffix:
                raise PrunememError(f"{source}: samples.k: {k_max} is larger than the context minus the suffix; "
                                    f"allowed: k <= {context - suffix} (embedded.architecture.seq_len {context} - "
                                    f"samples.suffix_tokens {suffix})")
            if not samples["training_members"] and not any(emb["canaries"]["copies"]):
                raise PrunememError(f"{source}: samples.training_members: 0 with embedded.canaries.copies "
                                    f"{emb['canaries']['copies']} leaves no member samples; allowed: "
                                    "training_members >= 1 or a copy count >= 1")
            canary = emb["canaries"]["tokens"]
            if k_max + suffix > canary:
                raise PrunememError(f"{source}: samples.k: {k_max} + suffix {suffix} exceeds embedded.canaries.tokens "
                                    f"{canary}; allowed: k <= {canary - suffix}")
            if canary > context:
                raise PrunememError(f"{source}: embedded.canaries.tokens: {canary} does not fit the context; "
                                    f"allowed: <= embedded.architecture.seq_len {context}")
            if samples["calibration"]["tokens"] > context:
                raise PrunememError(f"{source}: samples.calibration.tokens: {samples['calibration']['tokens']} exceeds "
                                    f"the model context; allowed: <= embedded.architecture.seq_len {context}")
            if params["perplexity"]["window"] > context:
                raise PrunememError(f"{source}: perplexity.window: {params['perplexity']['window']} exceeds the "
                                    f"model context; allowed: <= embedded.architecture.seq_len {context}")
            arch = emb["architecture"]
            if arch["hidden_size"] % arch["num_heads"]:
                raise PrunememError(f"{source}: embedded.architecture.num_heads: {arch['num_heads']} must divide "
                                    f"hidden_size {arch['hidden_size']}")
            counts = canary_counts(emb["canaries"])
            pool = sum(n for copies, n in counts.items() if copies) + samples["training_members"]
            if samples.get("search_members", 0) >= pool:
                raise PrunememError(f"{source}: samples.search_members: {samples['search_members']} leaves none of "
                                    f"the {pool} embedded members for evaluation; allowed: < {pool}")
            planted = sum(copies * n for copies, n in counts.items())
            rows = emb["training"]["steps"] * emb["training"]["batch_size"]
            if planted > rows:
                raise PrunememError(f"{source}: embedded.canaries: {planted} planted copies need at least as many "
                                    f"training rows; allowed: <= steps x batch_size = {rows}")
    _validate_compress(params, source)
    _validate_prune(params, source)
    ppl = params["perplexity"]
    if ppl["stride"] > ppl["window"]:
        raise PrunememError(f"{source}: perplexity.stride: {ppl['stride']} is larger than perplexity.window "
                            f"{ppl['window']}; allowed: stride <= window")


# Keys each sample-source kind takes (besides `kind`); the schema lists their types.
SOURCE_KEYS = {
    "embedded": ({"split"}, set()),                                   # (required, optional)
    "local": ({"path"}, {"format", "text_field", "max_documents"}),
    "hf": ({"dataset", "revision", "split", "text_field", "split_files"}, {"format", "max_documents"}),
    "pythia-preshuffled": ({"path"}, set()),
}
def _validate_model_sources(name: str, model: dict, window: int, source: str) -> None:
    """Hub models need both sample sources; each source has exactly the keys of its kind."""
    hub_only = [k for k in ("repo", "revision", "members", "heldout", "path", "sha256") if k in model]
    if model["source"] == "embedded" and hub_only:
        raise PrunememError(f"{source}: models.{name}.{hub_only[0]}: only for source: hub or local; an embedded "
                            "model draws its samples from its own training stream")
    wrong = [k for k in ({"hub": ("path", "sha256"), "local": ("repo",)}.get(model["source"], ())) if k in model]
    if wrong:
        allowed = "repo, revision" if model["source"] == "hub" else "path, sha256, revision (the training step)"
        raise PrunememError(f"{source}: models.{name}.{wrong[0]}: not a key of source {model['source']}; allowed: "
                            f"{allowed}")
    for role in ("members", "heldout"):
        spec = model.get(role)
        if spec is None:
            continue
        key = f"models.{name}.{role}"
        required, optional = SOURCE_KEYS[spec["kind"]]
        extra = sorted(set(spec) - required - optional - {"kind"})
        if extra:
            raise PrunememError(f"{source}: {key}.{extra[0]}: not a key of kind {spec['kind']}; allowed: "
                                f"{', '.join(sorted(required | optional))}")
        missing = sorted(required - set(spec))
        if spec["kind"] == "local":
            fmt = local_format(spec)
            if fmt == "txt" and "text_field" in spec:
                raise PrunememError(f"{source}: {key}.text_field: a txt file has one document per line and no "
                                    "fields; allowed: no text_field")
            missing += ["text_field"] if fmt != "txt" and "text_field" not in spec else []
        if missing:
            raise PrunememError(f"{source}: {key}: kind {spec['kind']} needs {', '.join(missing)}")
        if spec["kind"] == "hf" and spec["split"] not in spec["split_files"]:
            raise PrunememError(f"{source}: {key}.split: {spec['split']!r} is not a key of split_files; allowed: "
                                f"{', '.join(sorted(spec['split_files']))}")
        if spec["kind"] == "hf":
            for split, pattern in spec["split_files"].items():
                if "format" not in spec and not pattern.endswith((".jsonl", ".jsonl.zst", ".parquet", ".txt")):
                    raise PrunememError(f"{source}: {key}.split_files.{split}: {pattern!r} names no known file "
                                        "type; allowed: .jsonl, .jsonl.zst, .parquet, .txt, or set format")
        if spec["kind"] == "embedded" and spec["split"] not in ("train", "heldout"):
            raise PrunememError(f"{source}: {key}.split: {spec['split']!r} is not allowed; allowed: train, heldout")
        if spec["kind"] == "pythia-preshuffled":
            if preshuffled_step(model) is None:
                raise PrunememError(f"{source}: {key}: pythia-preshuffled needs the model's revision to be a "
                                    f"training step; allowed: revision stepN (got {model.get('revision')!r})")
            if window > PRESHUFFLED_ROW:
                raise PrunememError(f"{source}: samples.k: max k + suffix = {window} exceeds a preshuffled row; "
                                    f"allowed: <= {PRESHUFFLED_ROW}")


def _validate_localize(params: dict, name: str, i: int, source: str) -> None:
    """prune.localize present; for an embedded model, no budget above its unit count (heads + MLP neurons)."""
    spec = params["prune"].get("localize")
    if spec is None:
        raise PrunememError(f"{source}: prune.localize: required by method {name}; allowed keys: budgets, forget, "
                            "retain, steps, lr, l1, retain_weight, ig_steps, zeroout_batch, threads")
    if "embedded" in params and any(m["source"] == "embedded" for m in params["models"].values()):
        arch = params["embedded"]["architecture"]
        units = arch["num_layers"] * (arch["num_heads"] + 4 * arch["hidden_size"])  # GPT-NeoX: 4x MLP width
        for budget in spec["budgets"]:
            if budget >= 1 and budget > units:
                raise PrunememError(f"{source}: prune.localize.budgets: {budget:g} units exceed the embedded model's "
                                    f"{units} units (heads and MLP neurons); allowed: a count <= {units} or a "
                                    "fraction < 1")


def _validate_prune(params: dict, source: str) -> None:
    """Every method resolves in the registry; N:M patterns fit; each method's settings are present."""
    prune = params["prune"]
    for i, name in enumerate(prune["methods"]):
        try:
            method = registry.resolve(name, params)
        except PrunememError as err:
            raise PrunememError(f"{source}: {str(err).replace('prune.methods:', f'prune.methods[{i}]:', 1)}") from None
        if method.kind != "mask":
            raise PrunememError(f"{source}: prune.methods[{i}]: {name!r} is a {method.kind}, not a pruning method")
        nm = method.nm
        if nm and not 0 < nm[0] < nm[1]:
            raise PrunememError(f"{source}: prune.methods[{i}]: {name!r} must keep fewer than all of each group; "
                                "allowed: N < M, e.g. wanda-2of4")
        if nm and "embedded" in params and params["embedded"]["architecture"]["hidden_size"] % nm[1]:
            raise PrunememError(f"{source}: prune.methods[{i}]: group {nm[1]} does not divide the input dimension "
                                f"{params['embedded']['architecture']['hidden_size']}")
        if "prune.owl" in method.params and "owl" not in prune:
            raise PrunememError(f"{source}: prune.owl: required by method {name}; allowed keys: score, M, lambda")
        if method.forgets:
            _validate_localize(params, name, i, source)
        if method.calibration == "cluster" and "ccds" not in prune:
            raise PrunememError(f"{source}: prune.ccds: required by method {name}; allowed keys: clusters")
        if method.search and "evop" not in prune:
            raise PrunememError(f"{source}: prune.evop: required by method {name}; allowed keys: granularity, "
                                "population, generations, mutation, crossover, elite, tournament, lambda, "
                                "batch_size, threads, device (optional), dtype (optional)")
        if method.width:
            if "width" not in prune:
                raise PrunememError(f"{source}: prune.width: required by method {name}; allowed keys: scope, "
                                    "allocation, owl, allow_empty_sublayer (optional)")
            try:
                check_width_names([], [prune["width"]["allocation"]], "prune.width.allocation")
                if method.trial_search:
                    if "adapruner" not in prune:
                        raise PrunememError(f"prune.adapruner: required by method {name}")
                    check_adapruner_space(prune["adapruner"])
                    if prune["adapruner"]["clusters"] and "ccds" not in prune:
                        raise PrunememError("prune.ccds: required by prune.adapruner.clusters: true; "
                                            "allowed keys: clusters")
            except PrunememError as err:
                raise PrunememError(f"{source}: {err}") from None
        if method.search_split and not params["samples"].get("search_members", 0):
            raise PrunememError(f"{source}: samples.search_members: {name} needs a search split of members kept "
                                "out of evaluation; allowed: >= 1")
    cal = params["samples"]["calibration"]
    if cal.get("pool", cal["sequences"]) < cal["sequences"]:
        raise PrunememError(f"{source}: samples.calibration.pool: {cal['pool']} is smaller than sequences "
                            f"{cal['sequences']}; allowed: >= {cal['sequences']}")
    if "evop" in prune:
        evop = prune["evop"]
        if evop["elite"] >= evop["population"]:
            raise PrunememError(f"{source}: prune.evop.elite: {evop['elite']} leaves no room for children in a "
                                f"population of {evop['population']}; allowed: < {evop['population']}")
        if "embedded" in params and any(registry.resolve(m, params).search for m in prune["methods"]):
            blocks = params["embedded"]["architecture"]["num_layers"]
            for name in params["models"]:
                own = params["models"][name].get("levels")
                key = f"models.{name}.levels" if own else "prune.levels"
                if params["models"][name]["source"] == "embedded":
                    for level in own or prune["levels"]:
                        try:
                            check_evop_level(level, blocks, evop["granularity"], key)
                        except PrunememError as err:
                            raise PrunememError(f"{source}: {err}") from None


def _validate_compress(params: dict, source: str) -> None:
    """Method names must not collide; quantization groups and low-rank ranks must fit the embedded shapes."""
    compress = params.get("compress", {})
    for name, spec in compress.get("quantize", {}).items():
        key = f"compress.quantize.{name}"
        if name in params["prune"]["methods"]:
            raise PrunememError(f"{source}: {key}: the name is already a pruning method; allowed: another int* name")
        group = spec["group_size"]
        if group and "embedded" in params:
            hidden = params["embedded"]["architecture"]["hidden_size"]
            for dim in (hidden, 4 * hidden):
                if dim % group:
                    raise PrunememError(f"{source}: {key}.group_size: {group} does not divide the input dimension "
                                        f"{dim}; allowed: a divisor of {hidden} and {4 * hidden}, or 0 (per channel)")
    keeps = compress.get("lowrank", {}).get("keep", [])
    if keeps and "embedded" in params:
        hidden = params["embedded"]["architecture"]["hidden_size"]
        smallest = min(hidden * 3 * hidden / (4 * hidden), hidden * 4 * hidden / (5 * hidden))
        for keep in keeps:
            if math.floor(keep * smallest + 1e-9) < 1:
                raise PrunememError(f"{source}: compress.lowrank.keep: {keep} leaves rank 0 for the smallest "
                                    f"prunable matrix; allowed: >= {1 / smallest:.4g}")


@dataclass(frozen=True)
class Job:
    """One job of the pipeline, as every tool sees it (the job table: ``Plan.jobs``).

    ``outputs`` are the files and directories the job writes (Snakemake's ``output:``); ``out``
    is what DVC tracks (a directory for the checkpoint, samples and metrics). ``inputs`` names
    upstream jobs by role; ``files`` are inputs that no job makes (a local corpus). ``param_keys``
    are the dotted params keys the job reads: its params digest and its DVC ``params:``.
    ``code`` is the import closure of ``entry`` plus the data files it reads.
    """

    stage: str
    model: str | None
    method: str | None
    level: str | None
    outputs: tuple[Path, ...]
    out: tuple[Path, ...]
    record: Path  # where its provenance lives (a mask's header, a summary's "provenance")
    inputs: tuple[tuple[str, tuple[str, ...]], ...]  # (role, (job ids))
    files: tuple[Path, ...]
    param_keys: tuple[str, ...]
    entry: tuple[str, ...]
    threads_key: str | None = None

    @property
    def id(self) -> tuple:
        return (self.stage, self.model, self.method, self.level)

    @property
    def name(self) -> str:
        """The DVC stage name: mask-tiny-global-0_5."""
        return "-".join(p.replace(".", "_") for p in self.id if p is not None)

    @property
    def args(self) -> str:
        """The CLI arguments of ``prunemem <stage>`` for this job."""
        parts = [("--model", self.model), ("--method", self.method), ("--level", self.level)]
        return " ".join(f"{flag} {value}" for flag, value in parts if value is not None)

    @property
    def code(self) -> tuple[str, ...]:
        return closure(*self.entry)


# Stages whose jobs are per variant; jobs.batch groups them into processes by a grain: one
# variant, a method's levels, or (downstream) every variant of a model.
LEVEL_STAGES = ("mask", "transform", "evaluate", "downstream")
GRAINS = {"variant": 4, "method": 3, "model": 2}  # how much of a job id (stage, model, method, level) a batch shares


@dataclass(frozen=True)
class Batch:
    """The jobs one process runs (``Plan.batches``): one job, or the jobs of a level stage sharing
    a (model, method) or a model, by ``jobs.batch``. It answers what a Snakemake rule or DVC stage
    asks of a job (the unions of its jobs' files, params keys and code), so Snakemake's rules and
    dvc.yaml's stages are made from batches while provenance, freshness and the audit stay per job
    (the artifacts are the same either way: ``tests/test_batches.py``). ``targets`` are what
    Snakemake's rule declares: a batch of several jobs owns its method's (model's) directory.
    """

    jobs: tuple[Job, ...]
    targets: tuple[Path, ...]
    grain: str = "variant"

    @property
    def grouped(self) -> bool:
        return self.grain != "variant"

    @property
    def stage(self) -> str:
        return self.jobs[0].stage

    @property
    def model(self) -> str | None:
        return self.jobs[0].model

    @property
    def method(self) -> str | None:
        return self.jobs[0].method

    @property
    def levels(self) -> list[str]:
        return [job.level for job in self.jobs if job.level is not None]

    @property
    def id(self) -> tuple:
        return self.jobs[0].id[:GRAINS[self.grain]]

    @property
    def name(self) -> str:
        """The DVC stage name: mask-tiny-global-0_5, mask-tiny-global (a method's levels), downstream-tiny."""
        return "-".join(p.replace(".", "_") for p in self.id if p is not None)

    @property
    def args(self) -> str:
        """The CLI arguments of ``prunemem <stage>``: --level repeated for a method's levels; a model's
        batch names the model alone (``prunemem downstream --model tiny``: every variant in turn)."""
        first = self.jobs[0]
        if self.grain == "model":
            return f"--model {first.model}"
        head = " ".join(f"{flag} {value}" for flag, value in (("--model", first.model), ("--method", first.method))
                        if value is not None)
        return " ".join([head, *(f"--level {level}" for level in self.levels)]).strip()

    def _union(self, field: str) -> tuple:
        return tuple(dict.fromkeys(x for job in self.jobs for x in getattr(job, field)))

    @property
    def outputs(self) -> tuple[Path, ...]:
        return self._union("outputs")

    @property
    def out(self) -> tuple[Path, ...]:
        return self._union("out")

    @property
    def inputs(self) -> tuple[tuple[str, tuple], ...]:
        roles: dict[str, list] = {}
        for job in self.jobs:
            for role, ids in job.inputs:
                roles.setdefault(role, []).extend(ids)
        return tuple((role, tuple(dict.fromkeys(ids))) for role, ids in roles.items())

    @property
    def files(self) -> tuple[Path, ...]:
        return self._union("files")

    @property
    def param_keys(self) -> tuple[str, ...]:
        return self._union("param_keys")

    @property
    def code(self) -> tuple[str, ...]:
        return self._union("code")


# Each stage: its CLI verb's entry module (what the job runs, for its code deps). Adding a stage =
# one builder in Plan._jobs_of (paths, inputs, keys), one rule in stages.smk and one CLI verb.
STAGE_ENTRY = {"fetch": ("prunemem.data.fetch",), "checkpoint": ("prunemem.checkpoints",),
               "samples": ("prunemem.data.samples",),
               "mask": ("prunemem.prune.run",), "transform": ("prunemem.compress.run",),
               "evaluate": ("prunemem.evaluate.run",), "downstream": ("prunemem.downstream.run",),
               "report": ("prunemem.report.html",)}
# a checkpoint job's entry by the model's source: the embedded build lives in prunemem.checkpoints;
# the pinned hub download and adopting a local directory (the same weight conversion) in prunemem.hub
CHECKPOINT_ENTRY = {"embedded": ("prunemem.checkpoints",), "hub": ("prunemem.hub",), "local": ("prunemem.hub",)}
# the params keys each stage reads besides its method's (registry.Method.params)
EVALUATE_KEYS = ("samples.k", "samples.suffix_tokens", "perplexity", "evaluate")
# a downstream job: its own section, the device and dtype the variant is loaded in, and the
# embedded split our local tasks are cut from (prunemem.downstream.local)
DOWNSTREAM_KEYS = ("downstream", "evaluate.device", "evaluate.dtype", "evaluate.threads", "embedded.seed",
                   "embedded.split")
DOWNSTREAM_SUMMARY = "summary.json"  # beside it lm-eval's per-sample logs, samples_<task>.jsonl
# stages whose params are the same for every variant: one digest (their records keep no method or level)
SHARED_PARAMS = {"evaluate": EVALUATE_KEYS, "downstream": DOWNSTREAM_KEYS}
SAMPLES_KEYS = tuple(f"samples.{k}" for k in ("seed", "suffix_tokens", "k", "training_members", "perplexity_tokens",
                                               "search_members", "nonmembers", "calibration.tokens"))


def lookup(params: dict, key: str, default=None):
    """params['a']['b'] for 'a.b'; ``default`` when a key on the way is absent."""
    node = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


_ABSENT = object()


@dataclass(frozen=True)
class Plan:
    """The validated experiment: which artifacts exist, where, and what each one is made from."""

    params: dict
    root: Path = Path(".")

    @classmethod
    def load(cls, paths: Iterable[str | Path], root: str | Path = ".") -> "Plan":
        paths = [Path(p) for p in paths]
        params = read_params(paths)
        validate(params, source=", ".join(map(str, paths)))
        return cls(params, Path(root))

    # -- the grid ---------------------------------------------------------------------------
    @property
    def models(self) -> list[str]:
        """The models in the grid (those not marked enabled: false)."""
        return [name for name, spec in self.params["models"].items() if spec.get("enabled", True)]

    @property
    def methods(self) -> list[str]:
        """prune.methods, with a replicate ``random-s<N>`` of the random control after ``random`` for
        every seed N in ``prune.random_seeds`` (its spread is the control's noise floor)."""
        out: list[str] = []
        for name in self.params["prune"]["methods"]:
            out.append(name)
            if self.method(name).replicates:
                out += [registry.replicate_name(name, seed) for seed in self.params["prune"].get("random_seeds", [])]
        return list(dict.fromkeys(out))  # a replicate also named in prune.methods appears once

    @cached_property
    def levels(self) -> list[str]:
        return [level_name(x) for x in self.params["prune"]["levels"]]

    def model_levels(self, model: str | None) -> list[str]:
        """A model's pruning levels: its own `levels` when set, else prune.levels."""
        own = self.params["models"][model].get("levels") if model is not None else None
        return [level_name(x) for x in own] if own else self.levels

    @property
    def downstream(self) -> bool:
        """Whether the grid scores its variants on lm-eval tasks (params ``downstream.tasks``)."""
        return bool(lookup(self.params, "downstream.tasks"))

    @property
    def ks(self) -> list[int]:
        return sorted(self.params["samples"]["k"])

    @property
    def quantizers(self) -> list[str]:
        return list(self.params.get("compress", {}).get("quantize", {}))

    @cached_property
    def lowrank_levels(self) -> list[str]:
        """Low-rank levels, as for pruning the fraction of parameters removed (1 - keep)."""
        return self.method(LOWRANK).levels([], self.params)

    def method(self, name: str) -> registry.Method:
        """The registry's view of a grid name under these params (cached: the plan is immutable)."""
        cache = self.__dict__.setdefault("_methods", {})
        if name not in cache:
            cache[name] = registry.resolve(name, self.params)
        return cache[name]

    @property
    def variant_methods(self) -> list[str]:
        """Every method name evaluated: dense, the masks, the quantizers, low-rank when it has levels."""
        return [DENSE, *self.methods, *self.quantizers, *([LOWRANK] if self.lowrank_levels else [])]

    def mask_levels(self, method: str, model: str | None = None) -> list[str]:
        """A method's levels by its registry level rule (N:M: the single level 1 - N/M)."""
        return self.method(method).levels(self.model_levels(model), self.params)

    def variants(self, model: str | None = None) -> list[tuple[str, str]]:
        """Every (method, level) evaluated for ``model``: dense first, then masks, then transforms.

        Quantization removes no parameters, so its level is 0; its budget is the
        ``compression`` column. Without a model: the union over the grid's models, in order
        (the same list when no model sets its own ``levels``).
        """
        if model is None:
            return list(dict.fromkeys(v for m in self.models for v in self.variants(m)))
        return [(m, lv) for m in self.variant_methods for lv in self.mask_levels(m, model)]

    def kind(self, method: str) -> str:
        """'dense', 'mask' or 'transform': which artifact a variant is evaluated through."""
        return self.method(method).kind

    def transform_spec(self, method: str, level: str) -> dict[str, Any]:
        """The resolved params of one transform variant."""
        if self.method(method).base == LOWRANK:
            return {"kind": "lowrank", "keep": round(1 - float(level), 12)}
        return {"kind": "quantize", **self.params["compress"]["quantize"][method]}

    def calibrated(self, method: str) -> bool:
        """Whether a mask or transform reads the calibration set (Wanda, SparseGPT, OWL, SLEB, GPTQ)."""
        return self.method(method).calibrated

    def param_key(self, method: str) -> str:
        """Where a method's settings live in params, for error messages."""
        found = self.method(method)
        return found.params[0] if found.kind == "transform" else "prune"

    def source(self, model: str) -> str:
        return self.params["models"][model]["source"]

    def fetches(self, model: str) -> bool:
        """Whether a model has a fetch stage: a ``kind: hf`` sample source, whose files it downloads."""
        return bool(hf_specs(self.params["models"][model]))

    def local_source_files(self, model: str) -> dict[str, Path]:
        """The local corpus files a model's sample sources read, by role (members, heldout)."""
        spec = self.params["models"][model]
        return {role: Path(spec[role]["path"]) for role in ("members", "heldout")
                if role in spec and spec[role]["kind"] == "local"}

    # -- paths (the artifact contract, docs/architecture.md "Artifacts") ------------------------
    def fetch_path(self, model: str) -> Path:
        return self.root / "data" / "fetched" / f"{model}.json"

    def checkpoint_dir(self, model: str) -> Path:
        return self.root / "data" / "checkpoints" / model

    def samples_dir(self, model: str) -> Path:
        return self.root / "data" / "samples" / model

    def mask_path(self, model: str, method: str, level: str) -> Path:
        return self.root / "data" / "masks" / model / method / f"{level}.safetensors"

    def transform_path(self, model: str, method: str, level: str) -> Path:
        return self.root / "data" / "transforms" / model / method / f"{level}.json"

    def transform_weights_path(self, model: str, method: str, level: str) -> Path:
        """The stored weights beside a transform record (``prunemem.compress.run.weights_path``)."""
        return self.transform_path(model, method, level).with_suffix(".safetensors")

    def variant_artifact(self, model: str, method: str, level: str) -> Path | None:
        """The mask or transform a variant is evaluated through (None for dense)."""
        kind = self.kind(method)
        if kind == "mask":
            return self.mask_path(model, method, level)
        return self.transform_path(model, method, level) if kind == "transform" else None

    def metrics_dir(self, model: str, method: str, level: str) -> Path:
        return self.root / "data" / "metrics" / model / method / level

    def downstream_dir(self, model: str, method: str, level: str) -> Path:
        """lm-eval's scores of one variant (``prunemem.downstream.run``)."""
        return self.root / "data" / "downstream" / model / method / level

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    # -- the job table -------------------------------------------------------------------------
    def _job(self, stage, model=None, method=None, level=None, *, outputs, out=None, record, inputs=(), files=(),
             keys=(), entry=None, threads=None) -> Job:
        present = tuple(k for k in dict.fromkeys(keys) if lookup(self.params, k, _ABSENT) is not _ABSENT)
        return Job(stage, model, method, level, tuple(outputs), tuple(out or outputs), record,
                   tuple((role, tuple(ids)) for role, ids in inputs if ids), tuple(files), present,
                   entry or STAGE_ENTRY[stage], threads)

    def _jobs_of(self, model: str):
        """The jobs of one model, upstream first."""
        ckpt_dir, samples_dir = self.checkpoint_dir(model), self.samples_dir(model)
        ckpt, samples = ("checkpoint", model, None, None), ("samples", model, None, None)
        source = self.source(model)
        embedded = source == "embedded"
        fetch = ("fetch", model, None, None) if self.fetches(model) else None
        if fetch:  # the hub dataset files its samples read: pinned, verified, in the HF cache
            yield self._job("fetch", model, outputs=[self.fetch_path(model)], record=self.fetch_path(model),
                            keys=[f"models.{model}.{role}" for role in hf_specs(self.params["models"][model])])
        # hub: the pinned download; local: the directory, hashed while copied (an optional sha256 pinned)
        ckpt_keys = ([f"models.{model}.source", "embedded"] if embedded else
                     [f"models.{model}.{k}" for k in ("source", "repo", "revision", "path", "sha256")])
        yield self._job("checkpoint", model, outputs=[ckpt_dir], record=ckpt_dir / CHECKPOINT_PROVENANCE,
                        keys=ckpt_keys, entry=CHECKPOINT_ENTRY[source],
                        threads="embedded.training.threads" if embedded else None)
        yield self._job("samples", model, outputs=[samples_dir / f for f in (*SAMPLE_FILES, SAMPLE_PROVENANCE)],
                        out=[samples_dir], record=samples_dir / SAMPLE_PROVENANCE,
                        inputs=[("checkpoint", [ckpt]), ("fetch", [fetch] if fetch else [])],
                        files=self.local_source_files(model).values(),
                        keys=[f"models.{model}.source", *SAMPLES_KEYS, self._pool_key,
                              *(["embedded.split", "embedded.seed"] if embedded else
                                [f"models.{model}.members", f"models.{model}.heldout"])])
        for name, level in self.variants(model):
            method = self.method(name)
            artifact = None
            if method.kind != "dense":
                artifact = (method.kind, model, name, level)
                path = self.variant_artifact(model, name, level)
                stored = [self.transform_weights_path(model, name, level)] if method.kind == "transform" else []
                yield self._job(method.kind, model, name, level, outputs=[path, *stored], record=path,
                                inputs=[("checkpoint", [ckpt]), ("samples", [samples] if method.calibrated else [])],
                                keys=[*method.params, method.threads], threads=method.threads)
            metrics = self.metrics_dir(model, name, level)
            yield self._job("evaluate", model, name, level, outputs=[metrics / f for f in METRICS_FILES],
                            out=[metrics], record=metrics / "summary.json",
                            inputs=[("checkpoint", [ckpt]), ("samples", [samples]),
                                    (method.kind, [artifact] if artifact else [])],
                            keys=EVALUATE_KEYS, threads="evaluate.threads")
            if self.downstream:  # lm-eval's tasks on the same variant, loaded as evaluation loads it
                scores = self.downstream_dir(model, name, level)
                yield self._job("downstream", model, name, level, outputs=[scores], record=scores / DOWNSTREAM_SUMMARY,
                                inputs=[("checkpoint", [ckpt]), (method.kind, [artifact] if artifact else [])],
                                keys=DOWNSTREAM_KEYS, threads="downstream.threads" if lookup(
                                    self.params, "downstream.threads") else "evaluate.threads")

    @property
    def _pool_key(self) -> str:
        """The samples stage writes a calibration pool of samples.calibration.pool windows (default: sequences)."""
        pool = "samples.calibration.pool"
        return pool if lookup(self.params, pool) is not None else "samples.calibration.sequences"

    @cached_property
    def _job_table(self) -> dict[tuple, Job]:
        jobs = [job for model in self.models for job in self._jobs_of(model)]
        # the report reads every summary and per-sample file, the mask headers (layer sparsity,
        # search history) and the members with each model's tokenizer (the extracted examples)
        by_stage = lambda *stages: [j.id for j in jobs if j.stage in stages]  # noqa: E731
        jobs.append(self._job("report", outputs=[self.reports_dir / n for n in REPORT_FILES],
                              out=[self.reports_dir / n for n in REPORT_FILES if n != "metrics.json"],
                              record=self.reports_dir / "provenance.json",
                              inputs=[("summaries", by_stage("evaluate")), ("masks", by_stage("mask")),
                                      ("downstream", by_stage("downstream")),
                                      ("checkpoints", by_stage("checkpoint")), ("samples", by_stage("samples"))],
                              keys=["report"]))
        return {job.id: job for job in jobs}

    def jobs(self, stage: str | None = None) -> list[Job]:
        """Every job once, upstream before downstream (of one stage when ``stage`` is given)."""
        return [j for j in self._job_table.values() if stage is None or j.stage == stage]

    def job(self, stage: str, model: str | None = None, method: str | None = None, level: str | None = None) -> Job:
        try:
            return self._job_table[(stage, model, method, level)]
        except KeyError:
            raise PrunememError(f"{stage}: no such job in the plan: {model} {method} {level}") from None

    # -- batches: the jobs one process runs (Snakemake rules and DVC stages are made of these) ----
    def batch_grain(self, stage: str) -> str:
        """How ``stage``'s jobs are grouped into processes (jobs.batch): ``variant`` (each job alone, the
        default), ``method`` (a method's levels) or ``model`` (downstream: every variant of a model)."""
        spec = lookup(self.params, "jobs.batch", "variant")
        if isinstance(spec, dict):
            return spec.get(stage, "variant")
        return spec if stage in LEVEL_STAGES else "variant"

    def level_stage_dir(self, stage: str, model: str, method: str | None = None) -> Path:
        """The directory holding every level of one (model, method) of a level stage (every method's, without one)."""
        level_dir = {"mask": self.mask_path, "transform": self.transform_path, "evaluate": self.metrics_dir,
                     "downstream": self.downstream_dir}[stage](model, method or "-", "0").parent
        return level_dir if method is not None else level_dir.parent

    @cached_property
    def _batches(self) -> dict[tuple, Batch]:
        groups: dict[tuple, list[Job]] = {}
        for job in self.jobs():
            key = job.id[:GRAINS[self.batch_grain(job.stage)]]
            groups[key] = [*groups.pop(key, []), job]  # re-inserted: a batch sits where its last job does,
        out = {}                                        # after everything its jobs read (upstream first)
        for key, jobs in groups.items():
            grain = self.batch_grain(jobs[0].stage)
            targets = jobs[0].outputs if grain == "variant" else (self.level_stage_dir(*key),)
            out[key] = Batch(tuple(jobs), tuple(targets), grain)
        return out

    def batches(self, stage: str | None = None) -> list[Batch]:
        """Every batch once, upstream first (of one stage when ``stage`` is given)."""
        return [b for b in self._batches.values() if stage is None or b.stage == stage]

    def batch(self, stage: str, model: str | None = None, method: str | None = None, level: str | None = None) -> Batch:
        """The batch running a job (``level``, ``method`` may be None where the batch spans them)."""
        key = (stage, model, method, level)[:GRAINS[self.batch_grain(stage)]]
        try:
            return self._batches[key]
        except KeyError:
            raise PrunememError(f"{stage}: no such job in the plan: {model} {method} {level or ''}".rstrip()) from None

    def batch_of(self, job: Job) -> Batch:
        return self.batch(*job.id)

    def upstream_batches(self, batch: Batch, role: str | None = None) -> list[Batch]:
        """The batches whose targets ``batch`` reads (those of one role when ``role`` is given)."""
        return list({id(b): b for b in (self.batch_of(up) for job in batch.jobs for up in self.upstream(job, role))
                     }.values())

    def upstream(self, job: Job, role: str | None = None) -> list[Job]:
        """The jobs whose outputs ``job`` reads (those of one role when ``role`` is given)."""
        return [self._job_table[i] for r, ids in job.inputs if role in (None, r) for i in ids]

    def input_paths(self, job: Job, dvc: bool = False) -> list[Path]:
        """What a job reads: its upstream jobs' outputs (DVC: what DVC tracks of them) and its own files."""
        return [p for up in self.upstream(job) for p in (up.out if dvc else up.outputs)] + list(job.files)

    # -- the params each job depends on (for provenance and rerun triggers) -------------------
    def job_params(self, job: Job) -> dict[str, Any]:
        """The allow-list: exactly the params keys the job reads, with their values."""
        spec: dict[str, Any] = {key: lookup(self.params, key) for key in job.param_keys}
        if job.method is not None and job.stage not in SHARED_PARAMS:
            spec = {"method": job.method, "level": job.level, **spec}
        if job.stage == "transform":
            spec["transform"] = self.transform_spec(job.method, job.level)
        return spec

    def stage_params(self, stage: str, model: str | None = None, method: str | None = None,
                     level: str | None = None) -> dict[str, Any]:
        if stage in SHARED_PARAMS:  # one digest for every evaluation (downstream job): they read the same keys
            return {key: lookup(self.params, key) for key in SHARED_PARAMS[stage]
                    if lookup(self.params, key, _ABSENT) is not _ABSENT}
        return self.job_params(self.job(stage, model, method, level))

    def batch_digest(self, batch: Batch) -> str:
        """Snakemake's params trigger of a batch: its one job's digest, or the digest of its jobs' digests."""
        digests = [self.stage_digest(*job.id) for job in batch.jobs]
        return digests[0] if not batch.grouped else digest_json(digests)

    def stage_digest(self, stage: str, model: str | None = None, method: str | None = None,
                     level: str | None = None) -> str:
        return digest_json(self.stage_params(stage, model, method, level))
