rule checkpoint:
    output:
        directory("data/checkpoints/{model}"),
    params:
        digest=lambda w: PLAN.stage_digest("checkpoint", w.model),
    log:
        "logs/checkpoint/{model}.log",
    threads: checkpoint_threads
    shell:
        prunemem("checkpoint --model {wildcards.model}")
