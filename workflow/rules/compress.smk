rule transform:
    input:
        unpack(calibrated_inputs),
    output:
        "data/transforms/{model}/{method}/{level}.json",
    params:
        digest=lambda w: PLAN.stage_digest("transform", w.model, w.method, w.level),
    log:
        "logs/transform/{model}/{method}/{level}.log",
    threads: lambda w: config["evaluate"]["threads"]
    shell:
        prunemem("transform --model {wildcards.model} --method {wildcards.method} --level {wildcards.level}")
