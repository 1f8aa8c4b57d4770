"""The report in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

    make test-browser        # installs the [browser] extra and runs this file

Skipped, with the reason, where Playwright's Python package or a Chromium binary is missing (CI
installs neither from the repo's files: Playwright's own browser download is off-limits offline).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("PRUNEMEM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is not installed "
                                 "(pip install -e '.[browser]', or run `make test-browser`)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (Debian: apt-get install "
                                "chromium; or set PRUNEMEM_CHROMIUM); run `make test-browser` where it is")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync"]


def inspect(page_path: Path, width: int = 1280) -> dict:
    """Open ``page_path`` in headless Chromium and report what a reader's browser would see."""
    errors, requests = [], []
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("file:", "data:", "blob:"))
                    else None)
            start = time.perf_counter()
            page.goto(page_path.resolve().as_uri(), wait_until="load")
            # loaded = the page parsed and the charts in the first screen drawn (the rest draw on scroll)
            page.wait_for_function("""() => Array.from(document.querySelectorAll('div.chart')).filter(d => {
                const r = d.getBoundingClientRect(); return r.top < innerHeight; })
                .every(d => d.querySelector('svg, canvas'))""", timeout=30000)
            loaded = time.perf_counter() - start
            page.evaluate("drawAllCharts()")
            page.wait_for_function("""() => Array.from(document.querySelectorAll('div.chart'))
                .every(d => d.querySelector('svg, canvas'))""", timeout=60000)
            result = page.evaluate("""() => ({
                charts: Array.from(document.querySelectorAll('div.chart')).map(d => {
                    const s = d.querySelector('svg, canvas'); const r = s ? s.getBoundingClientRect() : null;
                    return {id: d.id, marks: s ? s.querySelectorAll('path, rect, circle, text, line').length : 0,
                            width: r ? r.width : 0, height: r ? r.height : 0}; }),
                scrollWidth: document.documentElement.scrollWidth, clientWidth: document.documentElement.clientWidth,
                findings: document.querySelectorAll('#findings-list li').length,
                toc: document.querySelectorAll('nav a').length})""")
        finally:
            browser.close()
    return {**result, "errors": errors, "requests": requests, "load_s": loaded}


def test_the_report_renders_offline_in_chromium(pipeline):
    seen = inspect(pipeline / "reports" / "report.html")
    assert seen["errors"] == [], seen["errors"]
    assert seen["requests"] == [], seen["requests"]
    assert seen["charts"] and all(c["marks"] > 0 and c["width"] > 0 and c["height"] > 0 for c in seen["charts"]), \
        seen["charts"]
    assert seen["scrollWidth"] <= seen["clientWidth"], (seen["scrollWidth"], seen["clientWidth"])
    assert seen["findings"] > 0 and seen["toc"] > 5


def test_a_paper_sized_report_loads_in_two_seconds_and_fits_the_window(tmp_path):
    """The 1,000-row synthetic grid of test_report_render: size, load time, errors, width, every chart drawn."""
    from test_report_render import EMPTY_DUP, synthetic_context, synthetic_grid

    from prunemem.report import html

    results, layers = synthetic_grid()
    page, _, _ = html.render(results, layers, EMPTY_DUP, synthetic_context(results))
    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")
    seen = inspect(path)
    assert len(page.encode()) <= 3_000_000
    assert seen["errors"] == [] and seen["requests"] == []
    assert all(c["marks"] > 0 and c["width"] > 0 for c in seen["charts"]) and len(seen["charts"]) >= 20
    assert seen["scrollWidth"] <= seen["clientWidth"] and seen["findings"] >= len(results["model"].unique())
    assert seen["load_s"] <= 2.0, seen["load_s"]
    print(f"page {len(page.encode()) / 1e6:.2f} MB, loaded in {seen['load_s']:.2f} s, {len(seen['charts'])} charts")
