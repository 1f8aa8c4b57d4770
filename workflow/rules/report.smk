rule report:
    input:
        all_summaries,
    output:
        "reports/results.csv",
        "reports/report.html",
    log:
        "logs/report.log",
    shell:
        prunemem("report")
