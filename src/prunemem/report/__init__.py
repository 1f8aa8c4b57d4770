"""The report: tidy results table, charts and an offline HTML page.

    prunemem report        # -> reports/results.csv, reports/report.html
"""
