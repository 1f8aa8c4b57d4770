rule mask:
    input:
        unpack(calibrated_inputs),
        code=code("mask"),
        stale=lambda w: stale("mask", w.model, w.method, w.level),
    output:
        "data/masks/{model}/{method}/{level}.safetensors",
    params:
        digest=lambda w: PLAN.stage_digest("mask", w.model, w.method, w.level),
    threads: mask_threads
    resources:
        **resources_of("mask"),
    log:
        "logs/mask/{model}/{method}/{level}.log",
    shell:
        prunemem("mask --model {wildcards.model} --method {wildcards.method} --level {wildcards.level}")
