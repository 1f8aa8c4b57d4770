rule mask:
    input:
        checkpoint="data/checkpoints/{model}",
    output:
        "data/masks/{model}/{method}/{level}.safetensors",
    params:
        digest=lambda w: PLAN.stage_digest("mask"),
    log:
        "logs/mask/{model}/{method}/{level}.log",
    shell:
        prunemem("mask --model {wildcards.model} --method {wildcards.method} --level {wildcards.level}")
