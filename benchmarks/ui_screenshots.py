"""PNG screenshots of the web page (``/ui``) for the docs: runs table, a run page, the compare view.

Starts ``odeserve up`` on a temporary data directory (SQLite, embedded Redis, one worker), trains
three small FFJORD runs on 8gaussians at different tolerances plus a long one that is still running
when the table is shot, then drives Debian's Chromium with Playwright. Writes ``docs/img/ui_runs.png``,
``docs/img/ui_run.png`` and ``docs/img/ui_compare.png``. The long run is canceled and every process
started here is stopped by its PID.

    python -m benchmarks.ui_screenshots [--out docs/img] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from service.cli.embedded import stop_process

ROOT = Path(__file__).resolve().parents[1]
TOLERANCES = [1e-2, 1e-4, 1e-6]


def _body(name: str, tol: float, iterations: int, tags: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "model": "ffjord",
        "dataset": {"name": "8gaussians", "n_train": 2000, "n_test": 500},
        "model_config": {"hidden_dims": [32, 32]},
        "solver": {"method": "dopri5", "rtol": tol, "atol": tol},
        "training": {"iterations": iterations, "batch_size": 128, "seed": 1},
        "tags": tags,
    }


def _train(client: httpx.Client, body: dict[str, Any]) -> str:
    response = client.post("/train", json=body)
    response.raise_for_status()
    return response.json()["id"]


def _wait(client: httpx.Client, run_id: str, timeout: float = 900) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (run := client.get(f"/runs/{run_id}").json())["status"] not in ("succeeded", "failed", "canceled"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} is still {run['status']}")
        time.sleep(0.5)
    return run


def _start_service(data_dir: Path, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "MODELS_STORE")}
    env |= {"ODESERVE_TORCH_THREADS": "1", "ODESERVE_PROGRESS_EVERY": "5", "ODESERVE_LOG_LEVEL": "WARNING"}
    env["PYTHONPATH"] = str(ROOT)
    command = [
        sys.executable,
        "-m",
        "service.cli.main",
        "up",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
    ]
    proc = subprocess.Popen(command, cwd=ROOT, env=env)
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/livez", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc, 10)
            raise RuntimeError("odeserve up did not start")
        time.sleep(0.3)


def _shoot(url: str, out: Path, chromium: str, run_ids: list[str], live_id: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 760})
        page.goto(f"{url}/ui/#/runs?tag=toy&sort=metrics.test_nll")
        row = page.locator(f'tr[data-run-id="{live_id}"] [role=progressbar]')
        page.wait_for_function(
            "el => Number(el.getAttribute('aria-valuenow')) >= 10", arg=row.element_handle(), timeout=120_000
        )
        page.screenshot(path=out / "ui_runs.png")
        page.goto(f"{url}/ui/#/runs/{run_ids[1]}")
        for kind in ("density", "samples", "loss"):
            page.wait_for_function(
                f"() => document.getElementById('plot-{kind}')?.naturalWidth > 0", timeout=120_000
            )
        page.locator("#density-form button[type=submit]").click()
        page.locator("#density-result tr").first.wait_for()
        page.screenshot(path=out / "ui_run.png", full_page=True)
        page.goto(f"{url}/ui/#/compare?ids={','.join(run_ids)}")
        curves = "() => document.querySelector('#compare-curves')?.naturalWidth > 0"
        page.wait_for_function(curves, timeout=60_000)
        page.wait_for_timeout(500)
        page.screenshot(path=out / "ui_compare.png", full_page=True)
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--iterations", type=int, default=150)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="odeserve-ui-") as tmp:
        proc = _start_service(Path(tmp), args.port)
        url = f"http://127.0.0.1:{args.port}"
        try:
            with httpx.Client(base_url=url, timeout=30) as client:
                run_ids = []
                for tol in TOLERANCES:
                    body = _body(f"8gauss tol {tol:g}", tol, args.iterations, ["toy", f"tol-{tol:g}"])
                    run_ids.append(_train(client, body))
                for run_id in run_ids:
                    print(run_id, _wait(client, run_id)["status"], flush=True)
                live_id = _train(client, _body("8gauss long", 1e-3, 5000, ["toy", "long"]))
                try:
                    _shoot(url, args.out, args.chromium, run_ids, live_id)
                finally:
                    client.post(f"/runs/{live_id}/cancel")
                    _wait(client, live_id, timeout=120)
        finally:
            stop_process(proc, 30)
    for name in ("ui_runs.png", "ui_run.png", "ui_compare.png"):
        print(args.out / name)


if __name__ == "__main__":
    main()
