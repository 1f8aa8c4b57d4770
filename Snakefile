# prunemem workflow: `snakemake --cores all` runs the experiment in params.yaml.
# Every rule calls the `prunemem` CLI, exactly as the matching stage in dvc.yaml does.

include: "workflow/rules/common.smk"
include: "workflow/rules/stages.smk"


rule all:
    input:
        rules.report.output,
    default_target: True


onsuccess:
    dvc_commit_after_run()
