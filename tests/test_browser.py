"""The report in a real browser: headless Chromium (Debian's ``chromium``, driven by Playwright without a browser
download) opens ``index.html`` from disk; every figure must load with a non-zero natural size, the page must log no
console error, and each figure must have content (pixel variance), not only exist."""

from __future__ import annotations

import shutil

import pytest

from fewshot.report.page import build_report
from tests.test_report import pixel_std, runs  # noqa: F401  (runs: the session's two tiny trained runs)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def report(runs, tmp_path):  # noqa: F811
    return build_report(list(runs), tmp_path / "report"), tmp_path


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install -y chromium); "
                                             "the browser check of the report is skipped")
def test_report_loads_in_headless_chromium(report):
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download is "
                                                                   "needed: the system chromium is used)")
    page_path, tmp = report
    errors = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1366, "height": 768})      # a laptop screen
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_path.resolve().as_uri())
        page.wait_for_load_state("load")
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.getAttribute('src'), e.complete, "
                                                  "e.naturalWidth, e.naturalHeight])")
        page.screenshot(path=str(tmp / "screenshot.png"), full_page=True)
        browser.close()
    assert images and all(done and w > 0 and h > 0 for _, done, w, h in images), images
    assert not errors, errors
    for src, *_ in images:
        assert pixel_std(page_path.parent / src) > 10, src
    assert pixel_std(tmp / "screenshot.png") > 10
