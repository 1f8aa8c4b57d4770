rule evaluate:
    input:
        unpack(evaluate_inputs),
        code=code("evaluate"),
        stale=lambda w: stale("evaluate", w.model, w.method, w.level),
    output:
        "data/metrics/{model}/{method}/{level}/memorization.parquet",
        "data/metrics/{model}/{method}/{level}/mia.parquet",
        "data/metrics/{model}/{method}/{level}/perplexity_windows.parquet",
        "data/metrics/{model}/{method}/{level}/summary.json",
    params:
        digest=lambda w: PLAN.stage_digest("evaluate"),
    resources:
        **resources_of("evaluate"),
    log:
        "logs/evaluate/{model}/{method}/{level}.log",
    threads: lambda w: config["evaluate"]["threads"]
    shell:
        prunemem("evaluate --model {wildcards.model} --method {wildcards.method} --level {wildcards.level}")
