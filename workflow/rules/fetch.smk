# Hub dataset files into the HF cache (prunemem.data.fetch). A local rule: with a cluster
# profile it runs where Snakemake runs (the login node, which reaches the hub), never on an
# offline compute node; `--until fetch` pre-fetches everything before the jobs are submitted.
localrules:
    fetch,


rule fetch:
    input:
        code=code("fetch"),
        stale=lambda w: stale("fetch", w.model),
    output:
        "data/fetched/{model}.json",
    params:
        digest=lambda w: PLAN.stage_digest("fetch", w.model),
    resources:
        **resources_of("fetch"),
    log:
        "logs/fetch/{model}.log",
    shell:
        prunemem("fetch --model {wildcards.model}")
