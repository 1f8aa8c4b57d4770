rule report:
    input:
        all_summaries,
    output:
        "reports/results.csv",
        "reports/report.html",
        "reports/layer_sparsity.csv",
        "reports/provenance.json",
    log:
        "logs/report.log",
    shell:
        prunemem("report")
