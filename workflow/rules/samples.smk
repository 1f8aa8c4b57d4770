rule samples:
    input:
        unpack(samples_inputs),
        code=lambda w: code("samples", w.model),
        stale=lambda w: stale("samples", w.model),
    output:
        "data/samples/{model}/members.parquet",
        "data/samples/{model}/nonmembers.parquet",
        "data/samples/{model}/perplexity.parquet",
        "data/samples/{model}/calibration.parquet",
        "data/samples/{model}/provenance.json",
    params:
        digest=lambda w: PLAN.stage_digest("samples", w.model),
    resources:
        **resources_of("samples"),
    log:
        "logs/samples/{model}.log",
    shell:
        prunemem("samples --model {wildcards.model}")
