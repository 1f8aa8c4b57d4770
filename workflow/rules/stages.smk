# One rule per stage. Each reads its job from the plan's job table (common.smk): inputs, code
# deps, params digest, threads and resources; the output patterns come from the plan's paths.
W = {"model": "{model}", "method": "{method}", "level": "{level}"}


# Hub dataset files into the HF cache (prunemem.data.fetch). A local rule: with a cluster
# profile it runs where Snakemake runs (the login node, which reaches the hub), never on an
# offline compute node; `--until fetch` pre-fetches everything before the jobs are submitted.
localrules:
    fetch,


rule fetch:
    input:
        unpack(inputs_of("fetch")),
    output:
        str(PLAN.fetch_path(W["model"])),
    params:
        digest=params_digest("fetch"),
    threads: threads_of("fetch")
    resources:
        **resources_of("fetch"),
    log:
        "logs/fetch/{model}.log",
    shell:
        prunemem("fetch --model {wildcards.model}")


rule checkpoint:
    input:
        unpack(inputs_of("checkpoint")),
    output:
        directory(str(PLAN.checkpoint_dir(W["model"]))),
    params:
        digest=params_digest("checkpoint"),
    threads: threads_of("checkpoint")
    resources:
        **resources_of("checkpoint"),
    log:
        "logs/checkpoint/{model}.log",
    shell:
        prunemem("checkpoint --model {wildcards.model}")


rule samples:
    input:
        unpack(inputs_of("samples")),
    output:
        [str(PLAN.samples_dir(W["model"]) / name) for name in (*SAMPLE_FILES, SAMPLE_PROVENANCE)],
    params:
        digest=params_digest("samples"),
    threads: threads_of("samples")
    resources:
        **resources_of("samples"),
    log:
        "logs/samples/{model}.log",
    shell:
        prunemem("samples --model {wildcards.model}")


rule mask:
    input:
        unpack(inputs_of("mask")),
    output:
        level_output("mask", [PLAN.mask_path(W["model"], W["method"], W["level"])]),
    params:
        digest=params_digest("mask"),
        args=batch_args("mask"),
    threads: threads_of("mask")
    priority: priority_of("mask")
    resources:
        **resources_of("mask"),
    log:
        level_log("mask"),
    shell:
        prunemem("mask {params.args}")


rule transform:
    input:
        unpack(inputs_of("transform")),
    output:
        level_output("transform", [PLAN.transform_path(W["model"], W["method"], W["level"]),
                                   PLAN.transform_weights_path(W["model"], W["method"], W["level"])]),  # + weights
    params:
        digest=params_digest("transform"),
        args=batch_args("transform"),
    threads: threads_of("transform")
    priority: priority_of("transform")
    resources:
        **resources_of("transform"),
    log:
        level_log("transform"),
    shell:
        prunemem("transform {params.args}")


rule evaluate:
    input:
        unpack(inputs_of("evaluate")),
    output:
        level_output("evaluate", [PLAN.metrics_dir(W["model"], W["method"], W["level"]) / n for n in METRICS_FILES]),
    params:
        digest=params_digest("evaluate"),
        args=batch_args("evaluate"),
    threads: threads_of("evaluate")
    resources:
        **resources_of("evaluate"),
    log:
        level_log("evaluate"),
    shell:
        prunemem("evaluate {params.args}")


# lm-eval's tasks on a variant (params downstream:; prunemem.downstream.run): its directory holds
# summary.json and one per-sample log per task, whose names follow lm-eval's task expansion.
rule downstream:
    input:
        unpack(inputs_of("downstream")),
    output:
        level_output("downstream", [PLAN.downstream_dir(W["model"], W["method"], W["level"])], is_directory=True),
    params:
        digest=params_digest("downstream"),
        args=batch_args("downstream"),
    threads: threads_of("downstream")
    resources:
        **resources_of("downstream"),
    log:
        level_log("downstream"),
    shell:
        prunemem("downstream {params.args}")


CAPTIONS = {"report.html": "report", "results.csv": "results", "layer_sparsity.csv": "layer_sparsity",
            "search_history.csv": "search_history"}


rule report:
    input:
        unpack(inputs_of("report")),
    output:
        [report(str(PLAN.reports_dir / name), caption=f"../report/{CAPTIONS[name]}.rst", category="Report")
         if name in CAPTIONS else directory(str(PLAN.reports_dir / name)) if name in REPORT_DIRECTORIES
         else str(PLAN.reports_dir / name) for name in REPORT_FILES],
    params:
        digest=params_digest("report"),
    threads: 1
    resources:
        **resources_of("report"),
    log:
        "logs/report.log",
    shell:
        prunemem("report")
