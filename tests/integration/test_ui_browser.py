"""The web page in a real browser: Debian's Chromium driven by Playwright, against a real API process
(uvicorn) and a real Celery worker, both started here and stopped by PID.

Start a short run from the training form, watch its progress bar (fed by the SSE stream) reach
100 %, open its page and see the density picture loaded. Sort the runs table by its headers,
compare two runs and retry a canceled one. With ``CI=true`` a missing Playwright or
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

import httpx
import pytest
from processes import QUICK_RUN, start_api, stop

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
    # The last progress event can come one poll before the terminal status (final evaluation).
    row.locator(".status", has_text="succeeded").wait_for(timeout=30_000)
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


def _row_names(page: Any) -> list[str]:
    return page.locator("#runs-table tbody tr td:nth-child(2)").all_inner_texts()


def test_sort_headers_compare_and_retry(page, settings: Settings, tmp_path: Path):
    """No worker needed: three runs are queued and canceled through the API, then the page sorts,
    compares and retries them."""
    idle = settings.model_copy(update={"queue": f"{settings.queue}-no-worker"})  # runs stay queued
    proc, url = start_api(idle, tmp_path / "api.log")
    try:
        tag = f"ui-{os.getpid()}-{time.monotonic_ns() % 10**8}"
        ids = {}
        with httpx.Client(base_url=url, timeout=30) as http:
            for name, rtol in (("cmp-b", 1e-3), ("cmp-a", 1e-2), ("cmp-c", 1e-4)):
                body = {
                    **QUICK_RUN,
                    "name": name,
                    "tags": [tag],
                    "solver": {"method": "dopri5", "rtol": rtol},
                }
                created = http.post("/train", json=body)
                assert created.status_code == 202, created.text
                ids[name] = created.json()["id"]
                assert http.post(f"/runs/{ids[name]}/cancel").json()["status"] == "canceled"
        page.goto(f"{url}/ui/#/runs?tag={tag}")
        page.locator("#runs-table tbody tr[data-run-id]").nth(2).wait_for(timeout=15_000)
        assert _row_names(page) == ["cmp-c", "cmp-a", "cmp-b"]  # newest first
        page.locator('#runs-table th[data-sort="name"] a').click()
        page.wait_for_function(
            "() => location.hash.includes('sort=name') && location.hash.includes('order=asc')"
        )
        page.wait_for_function(
            "() => document.querySelector('#runs-table tbody td:nth-child(2)')?.innerText === 'cmp-a'"
        )
        assert _row_names(page) == ["cmp-a", "cmp-b", "cmp-c"]
        assert page.locator('#runs-table th[data-sort="name"]').get_attribute("aria-sort") == "ascending"
        page.locator('#runs-table th[data-sort="name"] a').click()
        page.wait_for_function(
            "() => document.querySelector('#runs-table tbody td:nth-child(2)')?.innerText === 'cmp-c'"
        )
        assert _row_names(page) == ["cmp-c", "cmp-b", "cmp-a"]

        for name in ("cmp-a", "cmp-b"):
            page.locator(f'#runs-table tr[data-run-id="{ids[name]}"] input[type=checkbox]').check()
        page.locator("#compare-button").click()
        loaded = (
            "() => { const img = document.getElementById('compare-curves'); return img?.naturalWidth > 0; }"
        )
        page.wait_for_function(loaded, timeout=30_000)
        settings_table = page.locator("table.compare").first.inner_text()
        assert "solver.rtol" in settings_table and "0.01" in settings_table

        page.goto(f"{url}/ui/#/runs/{ids['cmp-a']}")
        page.locator("#retry-button").wait_for(timeout=15_000)
        assert tag in page.locator("#run-tags").inner_text()
        page.locator("#retry-button").click()
        page.locator("#retry-of").wait_for(timeout=15_000)
        new_id = page.url.rsplit("/", 1)[-1]
        assert new_id != ids["cmp-a"]
        with httpx.Client(base_url=url, timeout=30) as http:
            retried = http.get(f"/runs/{new_id}").json()
            assert retried["retry_of"] == ids["cmp-a"] and retried["tags"] == [tag]
            http.post(f"/runs/{new_id}/cancel")
        assert page.errors == []  # type: ignore[attr-defined]
    finally:
        stop(proc)
