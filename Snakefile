# prunemem workflow: `snakemake --cores all` runs the experiment in params.yaml.
# Every rule calls the `prunemem` CLI, exactly as the matching stage in dvc.yaml does.

include: "workflow/rules/common.smk"
include: "workflow/rules/fetch.smk"
include: "workflow/rules/checkpoint.smk"
include: "workflow/rules/samples.smk"
include: "workflow/rules/masks.smk"
include: "workflow/rules/compress.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        rules.report.output,
    default_target: True


onsuccess:
    if DVC_TRACKED:
        write_dvc_yaml(PLAN, PARAMS_FILES)  # the grid in params.yaml may have changed
        shell("dvc commit --force --quiet > logs/dvc-commit.log 2>&1 "
              "|| echo 'prunemem: dvc.lock not updated; see logs/dvc-commit.log' >&2")
