# Validation and input functions. The plan's job table (prunemem.plan.Plan.jobs) is the single
# source of truth: paths, inputs, params keys, code deps, threads and resources all come from it.
# Nothing here imports torch, so building the DAG costs a parse of params.yaml and the job table.
import shlex
import sys
from pathlib import Path

from snakemake.utils import validate

from prunemem.freshness import FRESH, HashCache, judge, settled
from prunemem.dvcgen import write_dvc_yaml
from prunemem.errors import PrunememError
from prunemem.plan import METRICS_FILES, REPORT_DIRECTORIES, REPORT_FILES, SAMPLE_FILES, SAMPLE_PROVENANCE, Plan, read_params
from prunemem.plan import validate as validate_params
from prunemem.cluster import batch_priority, batch_resources, batch_threads


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

PLAN = Plan(config)


wildcard_constraints:
    model="|".join(PLAN.models),
    method="|".join(dict.fromkeys(method for method, _ in PLAN.variants())),
    level=r"[0-9.e-]+",


def prunemem(verb):
    """The shell command for a stage; logs capture both the CLI's output and its progress."""
    return f"prunemem {PARAMS_ARGS} {verb} > {{log}} 2>&1"


# A rule's job is a batch of the job table (prunemem.plan.Batch): one job, or (jobs.batch) every
# level of a (model, method), or every variant of a model, run in one process and owning its directory.
WILDCARDS = {"variant": "{model}/{method}/{level}", "method": "{model}/{method}", "model": "{model}"}


def batch_of(stage, wildcards):
    return PLAN.batch(stage, wildcards.get("model"), wildcards.get("method"), wildcards.get("level"))


def level_output(stage, files, is_directory=False):
    """A level stage's output: the variant's files (or directory), or the directory of its batch."""
    grain = PLAN.batch_grain(stage)
    if grain != "variant":
        return directory(str(PLAN.level_stage_dir(stage, W["model"], W["method"] if grain == "method" else None)))
    return [directory(str(f)) if is_directory else str(f) for f in files]


def level_log(stage):
    return f"logs/{stage}/{WILDCARDS[PLAN.batch_grain(stage)]}.log"


def batch_args(stage):
    """The CLI arguments of the rule's batch (``Batch.args``: DVC's stage runs the same command)."""
    return lambda wildcards: batch_of(stage, wildcards).args


# Judge every existing artifact by its own provenance record before the DAG is built
# (prunemem.freshness): stale ones are rerun, good ones are not rerun for their mtimes alone.
# This is what keeps a fresh clone + `dvc pull` + a param change honest. It writes only under
# .snakemake/ (the hash cache and stale stamps), so a dry run leaves the working tree unchanged.
#
# Only the main Snakemake process judges. A cluster job's own Snakemake processes (the SLURM
# plugin starts two per job, `--mode remote` with --force) run the one job the main process
# chose: judging again would rehash the study in every job and race on the shared hash cache.
if workflow.is_main_process:
    FILE_HASHES = HashCache(Path(".snakemake/prunemem/sha256-cache.json"))
    VERDICTS = judge(PLAN, FILE_HASHES)
    FILE_HASHES.save()
    SETTLED = settled(PLAN, VERDICTS, Path(workflow.basedir))
else:
    VERDICTS, SETTLED = {}, set()
STALE_STAMPS = Path(".snakemake/prunemem/stale")


def _stale_stamp(batch):
    """A freshly written stamp (under .snakemake/) as an extra input of a batch with a stale output."""
    reasons = [VERDICTS[job.id] for job in batch.jobs if VERDICTS.get(job.id, FRESH) is not FRESH]
    if not reasons:
        return []
    stamp = STALE_STAMPS / batch.name
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text("\n".join(reasons) + "\n")
    return [str(stamp)]


def inputs_of(stage):
    """The input function of a rule: upstream outputs by role, code deps, and a stale stamp."""
    def inputs(wildcards):
        batch = batch_of(stage, wildcards)
        # an artifact that follows from its record is not rerun for its inputs' mtimes (dvc pull)
        wrap = ancient if all(job.id in SETTLED for job in batch.jobs) else (lambda path: path)
        named = {}
        for role, _ in batch.inputs:
            named[role] = [wrap(str(p)) for up in PLAN.upstream_batches(batch, role) for p in up.targets]
        if batch.files:
            named["files"] = [wrap(str(p)) for p in batch.files]
        # Snakemake's own code trigger covers only the shell command: these are the real imports
        named["code"] = [str(Path(workflow.basedir) / f) for f in batch.code]
        named["stale"] = _stale_stamp(batch)
        return named

    return inputs


def params_digest(stage):
    return lambda wildcards: PLAN.batch_digest(batch_of(stage, wildcards))


def threads_of(stage):
    return lambda wildcards: batch_threads(PLAN, batch_of(stage, wildcards))


def priority_of(stage):
    return lambda wildcards: batch_priority(PLAN, batch_of(stage, wildcards))


def resources_of(stage):
    """gpu, cpus_per_gpu, mem_mb and runtime of a rule's jobs, scaled per model (prunemem.cluster)."""
    def one(key):
        return lambda wildcards: batch_resources(PLAN, batch_of(stage, wildcards))[key]

    return {key: one(key) for key in ("gpu", "cpus_per_gpu", "mem_mb", "runtime")}


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
    outs = [p for job in PLAN.jobs() for p in job.outputs]  # what the DVC stages track, file by file
    missing = [p for p in outs if not p.exists()]
    if missing:
        print(f"prunemem: dvc.lock not updated: {len(missing)} of {len(outs)} job outputs are not built (a partial "
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

