# Validation and input functions. The plan (prunemem.plan) is the single source of truth:
# paths, the grid and the params each stage depends on all come from it.
import shlex
import sys
from pathlib import Path

from snakemake.utils import validate

from prunemem.freshness import HashCache, settle
from prunemem.dvcgen import code_deps, write_dvc_yaml
from prunemem.data.samples import FILES as SAMPLE_FILES, PROVENANCE as SAMPLE_PROVENANCE
from prunemem.errors import PrunememError
from prunemem.plan import Plan, read_params
from prunemem.prune import EVOP
from prunemem.plan import validate as validate_params
from prunemem.resources import job_resources


# params.yaml unless --configfile names others: a preset such as workflow/configs/pythia.yaml
# is a whole experiment and replaces the embedded default instead of being merged into it.
if not workflow.overwrite_configfiles:
    workflow.configfile("params.yaml")


PARAMS_FILES = [str(p) for p in workflow.configfiles]
PARAMS_ARGS = " ".join(f"--params {shlex.quote(p)}" for p in PARAMS_FILES)

try:
    validate_params(config, source=", ".join(PARAMS_FILES))
    if read_params(PARAMS_FILES) != config:
        raise PrunememError("--config: overrides on the command line do not reach the prunemem jobs; "
                            "put them in a params file and pass it with --configfile")
except PrunememError as err:
    print(f"prunemem: error: {err}", file=sys.stderr)
    sys.exit(1)

validate(config, "../schemas/params.schema.yaml")
PLAN = Plan(config)


wildcard_constraints:
    model="|".join(PLAN.models),
    method="|".join(dict.fromkeys(method for method, _ in PLAN.variants())),
    level=r"[0-9.e-]+",


def prunemem(verb):
    """The shell command for a stage; logs capture both the CLI's output and its progress."""
    return f"prunemem {PARAMS_ARGS} {verb} > {{log}} 2>&1"


def evaluate_inputs(wildcards):
    inputs = {
        "checkpoint": PLAN.checkpoint_dir(wildcards.model),
        "samples": PLAN.samples_dir(wildcards.model) / "provenance.json",
    }
    artifact = PLAN.variant_artifact(wildcards.model, wildcards.method, wildcards.level)
    if artifact is not None:
        inputs[PLAN.kind(wildcards.method)] = artifact
    return inputs


def calibrated_inputs(wildcards):
    """A mask or transform reads its checkpoint, and the calibration set when it is calibrated."""
    inputs = {"checkpoint": PLAN.checkpoint_dir(wildcards.model)}
    if PLAN.calibrated(wildcards.method):
        inputs["samples"] = PLAN.samples_dir(wildcards.model) / "provenance.json"
    return inputs


def all_summaries(wildcards):
    return [PLAN.metrics_dir(m, method, level) / "summary.json"
            for m in PLAN.models for method, level in PLAN.variants(m)]


def mask_threads(wildcards):
    """EvoP's search uses prune.evop.threads cores; every other mask job one evaluation thread."""
    if wildcards.method in EVOP:
        return config["prune"]["evop"]["threads"]
    return config["evaluate"]["threads"]


def checkpoint_threads(wildcards):
    """Training threads for the embedded model; a hub download is I/O bound."""
    if PLAN.source(wildcards.model) == "embedded":
        return config["embedded"]["training"]["threads"]
    return 1


def samples_inputs(wildcards):
    """The checkpoint (its tokenizer), the fetch record of hub datasets, and local corpus files."""
    inputs = {"checkpoint": PLAN.checkpoint_dir(wildcards.model)}
    if PLAN.fetches(wildcards.model):
        inputs["fetched"] = PLAN.fetch_path(wildcards.model)
    inputs.update({role: path for role, path in PLAN.local_source_files(wildcards.model).items()})
    return inputs


def code(stage, model=None):
    """The package files a stage's outputs depend on: the same code deps as its DVC stage.

    Snakemake's own code trigger covers only the rule's shell command, so without these an edit
    to, say, prunemem/evaluate would leave stale metrics that DVC (rightly) calls changed.
    """
    files = []
    for dep in code_deps(PLAN, stage, model):
        path = Path(workflow.basedir) / dep
        files += sorted(str(f) for f in path.rglob("*.py")) if path.is_dir() else [str(path)]
    return files


def _code_mtime(stage, model):
    return max((Path(f).stat().st_mtime for f in code(stage, model)), default=0.0)


# Judge every existing artifact by its own provenance record before the DAG is built
# (prunemem.freshness): stale ones are rerun, good ones are not rerun for their mtimes alone.
# This is what keeps a fresh clone + `dvc pull` + a param change honest.
FILE_HASHES = HashCache(Path(".snakemake/prunemem/sha256-cache.json"))
STALE = settle(PLAN, FILE_HASHES, _code_mtime)
FILE_HASHES.save()
STALE_STAMPS = Path(".snakemake/prunemem/stale")


def stale(stage, model=None, method=None, level=None):
    """A freshly written stamp as an extra input of a job whose output is stale, else nothing."""
    reason = STALE.get((stage, model, method, level))
    if reason is None:
        return []
    stamp = STALE_STAMPS / "-".join(str(part) for part in (stage, model, method, level) if part is not None)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(reason + "\n")
    return [str(stamp)]


# After a successful run of params.yaml in a DVC repository, record what was built in dvc.lock
# (`dvc commit`): the outputs are exactly those the stages in dvc.yaml would make, so `dvc status`
# is clean and `dvc push` publishes what ran. Presets (--configfile) are not what dvc.yaml tracks.
DVC_TRACKED = not workflow.overwrite_configfiles and Path(".dvc").is_dir() and Path("dvc.yaml").is_file()


def dvc_commit_after_run():
    """`dvc commit` after a run that built every output of params.yaml; otherwise one line saying why not.

    A partial run (--until, a file target, a failed `-k` job) leaves DVC outputs unbuilt, and
    committing then would fail (or record half a study), so it is skipped with the reason.
    """
    import subprocess

    if not DVC_TRACKED:
        if Path(".dvc").is_dir():
            print("prunemem: dvc.lock not updated: dvc.yaml tracks params.yaml, and this run used --configfile "
                  f"{' '.join(PARAMS_FILES)}", file=sys.stderr)
        return
    write_dvc_yaml(PLAN, PARAMS_FILES)  # the grid in params.yaml may have changed
    from prunemem.dvcgen import stages

    outs = [o for stage in stages(PLAN)["stages"].values() for o in stage["outs"] + stage.get("metrics", [])]
    missing = [o for o in outs if not Path(o).exists()]
    if missing:
        print(f"prunemem: dvc.lock not updated: {len(missing)} of {len(outs)} DVC outputs are not built (a partial "
              f"run: --until, a target or a failed job), e.g. {missing[0]}; run the whole workflow to record it",
              file=sys.stderr)
        return
    Path("logs").mkdir(exist_ok=True)
    with open("logs/dvc-commit.log", "w") as log:
        done = subprocess.run(["dvc", "commit", "--force"], stdout=log, stderr=subprocess.STDOUT, check=False)
    if done.returncode:
        lines = [line for line in Path("logs/dvc-commit.log").read_text().splitlines() if line.strip()]
        print(f"prunemem: dvc.lock not updated: dvc commit failed ({lines[-1] if lines else 'no output'}); "
              "see logs/dvc-commit.log", file=sys.stderr)


def resources_of(stage):
    """gpu, cpus_per_gpu, mem_mb and runtime of a rule's jobs, scaled per model (prunemem.resources)."""
    def one(key):
        return lambda wildcards: job_resources(PLAN, stage, wildcards.get("model"), wildcards.get("method"))[key]

    return {key: one(key) for key in ("gpu", "cpus_per_gpu", "mem_mb", "runtime")}
