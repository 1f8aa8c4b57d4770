rule transform:
    input:
        unpack(calibrated_inputs),
        code=code("transform"),
        stale=lambda w: stale("transform", w.model, w.method, w.level),
    output:
        "data/transforms/{model}/{method}/{level}.json",
        "data/transforms/{model}/{method}/{level}.safetensors",  # the stored weights (prunemem.compress.run)
    params:
        digest=lambda w: PLAN.stage_digest("transform", w.model, w.method, w.level),
    resources:
        **resources_of("transform"),
    log:
        "logs/transform/{model}/{method}/{level}.log",
    threads: lambda w: config["evaluate"]["threads"]
    shell:
        prunemem("transform --model {wildcards.model} --method {wildcards.method} --level {wildcards.level}")
