rule checkpoint:
    input:
        code=lambda w: code("checkpoint", w.model),
        stale=lambda w: stale("checkpoint", w.model),
    output:
        directory("data/checkpoints/{model}"),
    params:
        digest=lambda w: PLAN.stage_digest("checkpoint", w.model),
    resources:
        **resources_of("checkpoint"),
    log:
        "logs/checkpoint/{model}.log",
    threads: checkpoint_threads
    shell:
        prunemem("checkpoint --model {wildcards.model}")
