rule report:
    input:
        summaries=all_summaries,
        # extracted examples are decoded from the members with the model's tokenizer
        checkpoints=lambda w: [PLAN.checkpoint_dir(m) for m in PLAN.models],
        samples=lambda w: [PLAN.samples_dir(m) / "provenance.json" for m in PLAN.models],
        code=code("report"),
        stale=lambda w: stale("report"),
    output:
        expand("reports/{name}", name=REPORT_FILES),
    params:
        digest=lambda w: PLAN.stage_digest("report"),
    log:
        "logs/report.log",
    shell:
        prunemem("report")
