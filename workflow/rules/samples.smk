rule samples:
    input:
        unpack(samples_inputs),
        code=lambda w: code("samples", w.model),
        stale=lambda w: stale("samples", w.model),
    output:
        expand("data/samples/{{model}}/{name}", name=[*SAMPLE_FILES, SAMPLE_PROVENANCE]),
    params:
        digest=lambda w: PLAN.stage_digest("samples", w.model),
    resources:
        **resources_of("samples"),
    log:
        "logs/samples/{model}.log",
    shell:
        prunemem("samples --model {wildcards.model}")
