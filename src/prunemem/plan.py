"""params.yaml -> a validated experiment plan: the single source of truth for Snakemake and DVC.

    prunemem validate --params params.yaml      # one line per problem, exit 1

Every path an artifact lives at is defined here and nowhere else.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import yaml

from prunemem.errors import PrunememError
from prunemem.provenance import digest_json

DENSE = "dense"
DENSE_LEVEL = "0"
LOWRANK = "lowrank"


# what the report stage writes under reports/ (results.csv ... its own provenance, written last)
REPORT_FILES = ("results.csv", "layer_sparsity.csv", "search_history.csv", "metrics.json", "report.html",
                "provenance.json")


def schema() -> dict:
    return yaml.safe_load(resources.files("prunemem").joinpath("schemas/params.schema.yaml").read_text())


def level_name(level: float) -> str:
    """The canonical spelling of a level in paths and tables: 0.5 -> '0.5', 0.30 -> '0.3'."""
    return f"{level:g}"


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
            pool = emb["canaries"]["per_copy_count"] * sum(1 for c in emb["canaries"]["copies"] if c) + \
                samples["training_members"]
            if samples.get("search_members", 0) >= pool:
                raise PrunememError(f"{source}: samples.search_members: {samples['search_members']} leaves none of "
                                    f"the {pool} embedded members for evaluation; allowed: < {pool}")
            planted = emb["canaries"]["per_copy_count"] * sum(emb["canaries"]["copies"])
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
PRESHUFFLED_ROW = 2049  # tokens per row of Pythia's preshuffled memmap (2048 context + 1 label)


def local_format(spec: dict) -> str:
    """A local file's format: explicit, else from its extension."""
    if "format" in spec:
        return spec["format"]
    for fmt in ("jsonl.zst", "jsonl", "parquet", "txt"):
        if spec["path"].endswith("." + fmt):
            return fmt
    raise PrunememError(f"{spec['path']}: unknown file type; allowed: .jsonl, .jsonl.zst, .parquet, .txt, "
                        "or set format")


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


def preshuffled_step(model: dict) -> int | None:
    """The training step of a hub revision named stepN: rows before step * 1024 were trained on."""
    revision = model.get("revision", "")
    return int(revision[4:]) if revision.startswith("step") and revision[4:].isdigit() else None


def _validate_prune(params: dict, source: str) -> None:
    """N:M patterns must be sensible and fit the embedded shapes; OWL needs its settings."""
    from prunemem.prune import EVOP, base_method, calibration_sampling, nm_pattern

    prune = params["prune"]
    for i, method in enumerate(prune["methods"]):
        nm = nm_pattern(method)
        if nm and not 0 < nm[1] < nm[2]:
            raise PrunememError(f"{source}: prune.methods[{i}]: {method!r} must keep fewer than all of each group; "
                                "allowed: N < M, e.g. wanda-2of4")
        if nm and "embedded" in params and params["embedded"]["architecture"]["hidden_size"] % nm[2]:
            raise PrunememError(f"{source}: prune.methods[{i}]: group {nm[2]} does not divide the input dimension "
                                f"{params['embedded']['architecture']['hidden_size']}")
        if base_method(method) == "owl" and "owl" not in prune:
            raise PrunememError(f"{source}: prune.owl: required by method owl; allowed keys: score, M, lambda")
        if method == "owl-ccds" and prune["owl"]["score"] != "wanda":
            raise PrunememError(f"{source}: prune.methods[{i}]: 'owl-ccds' reads no calibration set with "
                                "prune.owl.score magnitude; allowed: prune.owl.score wanda, or plain owl")
        if calibration_sampling(method) == "cluster" and "ccds" not in prune:
            raise PrunememError(f"{source}: prune.ccds: required by method {method}; allowed keys: clusters")
        if method in EVOP and "evop" not in prune:
            raise PrunememError(f"{source}: prune.evop: required by method {method}; allowed keys: granularity, "
                                "population, generations, mutation, crossover, elite, tournament, lambda, "
                                "batch_size, threads, device (optional), dtype (optional)")
        if method == "evop-mem" and not params["samples"].get("search_members", 0):
            raise PrunememError(f"{source}: samples.search_members: evop-mem needs a search split of members kept "
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
        if "embedded" in params and any(m in EVOP for m in prune["methods"]):
            from prunemem.prune import check_evop_level

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


def uses_calibration(spec: dict) -> bool:
    """Whether a transform spec reads the calibration set (GPTQ)."""
    return spec.get("algorithm", "rtn") == "gptq"


@dataclass(frozen=True)
class Plan:
    """The validated experiment: which artifacts exist and where."""

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
        return list(self.params["prune"]["methods"])

    @cached_property
    def levels(self) -> list[str]:
        return [level_name(x) for x in self.params["prune"]["levels"]]

    def model_levels(self, model: str | None) -> list[str]:
        """A model's pruning levels: its own `levels` when set, else prune.levels."""
        own = self.params["models"][model].get("levels") if model is not None else None
        return [level_name(x) for x in own] if own else self.levels

    @property
    def ks(self) -> list[int]:
        return sorted(self.params["samples"]["k"])

    @property
    def quantizers(self) -> list[str]:
        return list(self.params.get("compress", {}).get("quantize", {}))

    @cached_property
    def lowrank_levels(self) -> list[str]:
        """Low-rank levels, as for pruning the fraction of parameters removed (1 - keep)."""
        return [level_name(1 - keep) for keep in self.params.get("compress", {}).get("lowrank", {}).get("keep", [])]

    def mask_levels(self, method: str, model: str | None = None) -> list[str]:
        """N:M methods have the single level 1 - N/M; every other method has the model's levels."""
        from prunemem.prune import nm_pattern

        nm = nm_pattern(method)
        return [level_name(1 - nm[1] / nm[2])] if nm else self.model_levels(model)

    def variants(self, model: str | None = None) -> list[tuple[str, str]]:
        """Every (method, level) evaluated for ``model``: dense first, then masks, then transforms.

        Quantization removes no parameters, so its level is 0; its budget is the
        ``compression`` column. Without a model: the union over the grid's models, in order
        (the same list when no model sets its own ``levels``).
        """
        if model is None:
            return list(dict.fromkeys(v for m in self.models for v in self.variants(m)))
        return ([(DENSE, DENSE_LEVEL)] + [(m, lv) for m in self.methods for lv in self.mask_levels(m, model)]
                + [(q, DENSE_LEVEL) for q in self.quantizers] + [(LOWRANK, lv) for lv in self.lowrank_levels])

    def kind(self, method: str) -> str:
        """'dense', 'mask' or 'transform': which artifact a variant is evaluated through."""
        if method == DENSE:
            return "dense"
        return "transform" if method == LOWRANK or method in self.quantizers else "mask"

    def transform_spec(self, method: str, level: str) -> dict[str, Any]:
        """The resolved params of one transform variant."""
        if method == LOWRANK:
            return {"kind": "lowrank", "keep": round(1 - float(level), 12)}
        return {"kind": "quantize", **self.params["compress"]["quantize"][method]}

    def calibrated(self, method: str) -> bool:
        """Whether a mask or transform reads the calibration set (Wanda, SparseGPT, OWL, SLEB, GPTQ)."""
        if self.kind(method) == "mask":
            from prunemem.prune import needs_calibration

            return needs_calibration(method, self.params["prune"])
        return uses_calibration(self.params.get("compress", {}).get("quantize", {}).get(method, {}))

    def param_key(self, method: str) -> str:
        """Where a method's settings live in params, for error messages."""
        if method == LOWRANK:
            return "compress.lowrank.keep"
        if method in self.quantizers:
            return f"compress.quantize.{method}"
        return "prune"

    def source(self, model: str) -> str:
        return self.params["models"][model]["source"]

    def fetches(self, model: str) -> bool:
        """Whether a model has a fetch stage: a ``kind: hf`` sample source, whose files it downloads."""
        from prunemem.data.fetch import hf_specs

        return bool(hf_specs(self.params["models"][model]))

    def local_source_files(self, model: str) -> dict[str, Path]:
        """The local corpus files a model's sample sources read, by role (members, heldout)."""
        spec = self.params["models"][model]
        return {role: Path(spec[role]["path"]) for role in ("members", "heldout")
                if role in spec and spec[role]["kind"] == "local"}

    # -- paths (the artifact contract, DESIGN.md section 4) ------------------------------------
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

    def variant_artifact(self, model: str, method: str, level: str) -> Path | None:
        """The mask or transform a variant is evaluated through (None for dense)."""
        kind = self.kind(method)
        if kind == "mask":
            return self.mask_path(model, method, level)
        return self.transform_path(model, method, level) if kind == "transform" else None

    def metrics_dir(self, model: str, method: str, level: str) -> Path:
        return self.root / "data" / "metrics" / model / method / level

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    # -- the params each stage depends on (for provenance and rerun triggers) -----------------
    def stage_params(self, stage: str, model: str | None = None, method: str | None = None,
                     level: str | None = None) -> dict[str, Any]:
        p = self.params
        if stage == "fetch":
            from prunemem.data.fetch import stage_params

            return stage_params(p, model)
        if stage == "checkpoint":
            spec = {k: v for k, v in p["models"][model].items() if k in ("source", "repo", "revision", "path", "sha256")}
            if spec["source"] == "embedded":
                spec["embedded"] = p["embedded"]
            return spec
        if stage == "samples":  # the checkpoint is an input (by hash), not a param
            spec = {"samples": p["samples"], "source": p["models"][model]["source"]}
            spec.update({k: v for k, v in p["models"][model].items() if k in ("members", "heldout")})
            return spec
        if stage == "mask":  # the grid lists, and settings of other methods, are not inputs of a single mask
            from prunemem.prune import EVOP, calibration_sampling

            skip = {"methods", "levels"} | ({"evop"} if method not in EVOP else set()) | \
                ({"ccds"} if method is None or calibration_sampling(method) != "cluster" else set())
            spec = {"method": method, "level": level, "prune": {k: v for k, v in p["prune"].items() if k not in skip},
                    "threads": p["evaluate"]["threads"]}
            if method is not None and self.calibrated(method):
                spec["calibration"] = p["samples"]["calibration"]
            if method == "evop-mem":  # which windows of the search split are scored
                spec["search"] = {"k": max(p["samples"]["k"]), "suffix_tokens": p["samples"]["suffix_tokens"]}
            return spec
        if stage == "transform":
            return {"method": method, "level": level, **self.transform_spec(method, level)}
        if stage == "evaluate":
            return {"samples": p["samples"], "perplexity": p["perplexity"], "evaluate": p["evaluate"]}
        if stage == "report":
            return p.get("report", {})
        raise KeyError(stage)

    def stage_digest(self, stage: str, model: str | None = None, method: str | None = None,
                     level: str | None = None) -> str:
        return digest_json(self.stage_params(stage, model, method, level))
