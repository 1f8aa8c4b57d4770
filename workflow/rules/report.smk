rule report:
    input:
        summaries=all_summaries,
        # extracted examples are decoded from the members with the model's tokenizer
        checkpoints=lambda w: [PLAN.checkpoint_dir(m) for m in PLAN.models],
        samples=lambda w: [PLAN.samples_dir(m) / "provenance.json" for m in PLAN.models],
        code=code("report"),
        stale=lambda w: stale("report"),
    output:
        report("reports/report.html", caption="../report/report.rst", category="Report"),
        report("reports/results.csv", caption="../report/results.rst", category="Report"),
        report("reports/layer_sparsity.csv", caption="../report/layer_sparsity.rst", category="Report"),
        report("reports/search_history.csv", caption="../report/search_history.rst", category="Report"),
        "reports/comparisons.csv",
        "reports/claims.csv",
        directory("reports/figures"),
        "reports/metrics.json",
        "reports/provenance.json",
    params:
        digest=lambda w: PLAN.stage_digest("report"),
    resources:
        **resources_of("report"),
    log:
        "logs/report.log",
    shell:
        prunemem("report")
