"""The web page in a real browser: Debian's Chromium driven by Playwright, against a real API process
(uvicorn) and a real Celery worker, both started here and stopped by PID.

Start a short run from the training form, watch its progress bar (fed by the SSE stream) reach
100 %, open its page and see the density picture loaded. With ``CI=true`` a missing Playwright or
Chromium fails the test; elsewhere it skips. Never ``playwright install``: the browser is
``apt-get install chromium`` (``ODESERVE_TEST_CHROMIUM`` names another binary).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from processes import start_api, stop

from service.config import Settings

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("ODESERVE_TEST_CHROMIUM", "/usr/bin/chromium")
REQUIRED = os.environ.get("CI", "").lower() == "true"


def _missing(what: str) -> None:
    message = f"{what} (pip install -e '.[dev]'; apt-get install -y chromium)"
    if REQUIRED:
        pytest.fail(f"CI=true requires {message}")
    pytest.skip(message)


KEY = "k-ui-browser-1"


@pytest.fixture(params=["open", "keyed"])
def api_url(request, settings: Settings, worker: subprocess.Popen, tmp_path: Path) -> Iterator[str]:
    """The API open, or with an API key required for every read (the page then sends it)."""
    keyed = {"ODESERVE_API_KEYS": KEY, "ODESERVE_PROTECT_READS": "true"}
    proc, url = start_api(settings, tmp_path / "api.log", keyed if request.param == "keyed" else {})
    try:
        yield url
    finally:
        stop(proc)


@pytest.fixture
def page() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package")
    if not Path(CHROMIUM).is_file():
        _missing(f"Chromium at {CHROMIUM}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": 900})
            tab.errors = []  # type: ignore[attr-defined]
            tab.on("pageerror", lambda exc: tab.errors.append(str(exc)))  # type: ignore[attr-defined]
            tab.on("console", lambda m: m.type == "error" and tab.errors.append(m.text))  # type: ignore[attr-defined]
            yield tab
        finally:
            browser.close()


def test_train_from_the_form_watch_progress_and_see_the_density(page, api_url, worker, request):
    if request.node.callspec.params["api_url"] == "keyed":
        page.goto(f"{api_url}/ui/#/runs")
        page.locator("#view .problem").wait_for(timeout=15_000)
        assert "401" in page.locator("#view .problem").inner_text()  # no key yet: the page says so
        page.locator("#api-key").fill(KEY)
        page.locator("#key-form button").click()
        page.locator("#runs-table").wait_for(timeout=15_000)
        page.errors.clear()  # the 401 above was logged by the browser on purpose
    page.goto(f"{api_url}/ui/#/train")
    form = page.locator("#train-form")
    form.locator("input[name=name]").fill("ui-e2e")
    form.locator("select[name=dataset]").select_option("name:8gaussians")
    form.locator("input[name=n_train]").fill("300")
    form.locator("input[name=hidden_dims]").fill("8")
    form.locator("input[name=iterations]").fill("30")
    form.locator("input[name=batch_size]").fill("32")
    form.locator("button[type=submit]").click()

    link = page.locator("#new-run-link")
    link.wait_for(timeout=15_000)
    run_id = link.get_attribute("href").rsplit("/", 1)[-1]
    assert page.url.endswith("#/runs")
    row = page.locator(f'#runs-table tr[data-run-id="{run_id}"]')
    bar = row.locator("[role=progressbar]")
    seen: set[int] = set()
    deadline = time.monotonic() + 120
    while (value := int(bar.get_attribute("aria-valuenow") or 0)) < 100:
        seen.add(value)
        if time.monotonic() > deadline:
            log = worker.log_path.read_text(errors="replace")[-3000:]
            pytest.fail(f"progress bar stuck at {value} %: {row.inner_text()}\n{log}")
        time.sleep(0.05)
    seen.add(value)
    assert row.locator(".status").inner_text() == "succeeded"
    assert row.locator(".bar-text").inner_text().startswith("100 % (30/30)")
    assert any(0 <= v < 100 for v in seen), seen  # the bar was drawn before the run ended, then moved

    row.locator(f'a[href="#/runs/{run_id}"]').click()
    page.wait_for_function(
        "() => { const img = document.getElementById('plot-density'); return img && img.naturalWidth > 0; }",
        timeout=60_000,
    )
    assert page.locator("#run-status").inner_text() == "succeeded"
    page.locator("#density-form button[type=submit]").click()
    page.locator("#density-result tr").nth(2).wait_for(timeout=30_000)
    assert page.locator("#density-result tr").count() == 3
    assert page.errors == []  # type: ignore[attr-defined]
