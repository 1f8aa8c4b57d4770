rule checkpoint:
    output:
        directory("data/checkpoints/{model}"),
    params:
        digest=lambda w: PLAN.stage_digest("checkpoint", w.model),
    log:
        "logs/checkpoint/{model}.log",
    threads: lambda w: config["embedded"]["training"]["threads"]
    shell:
        prunemem("checkpoint --model {wildcards.model}")
