"""Two API processes and two Celery workers on one database, broker and models store.

Everything here is a real process (uvicorn, celery) talking over 127.0.0.1; the tests read and
write only through HTTP. Timings are shortened through settings as in test_crash_recovery.
The replicas share one local models store directory (an object store is not supported yet).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from processes import (
    QUICK_RUN,
    ROOT,
    TERMINAL,
    fast_recovery,
    free_port,
    post_run,
    start_worker,
    stop,
    wait_for_run,
    worker_env,
)

from service.config import Settings
from service.serving.model_cache import SERVED_RUN_TTL_S

pytestmark = pytest.mark.integration

SHORT_RUN = {**QUICK_RUN, "training": {"iterations": 6, "batch_size": 32}}
LONG_RUN = {**QUICK_RUN, "training": {"iterations": 60, "batch_size": 64, "seed": 1}}


@pytest.fixture
def replica_settings(settings: Settings) -> Settings:
    return fast_recovery(settings, "replicas", queued_grace_s=5.0)


def _start_api(settings: Settings, log_path: Path, timeout: float = 90) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "--factory", "service.api.main:create_app",
        "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
    ]  # fmt: skip
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=worker_env(settings), stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/livez", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            pytest.fail(f"API did not start:\n{log_path.read_text(errors='replace')[-4000:]}")
        time.sleep(0.2)


@pytest.fixture
def cluster(replica_settings: Settings, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Two workers (one log each) and two APIs; all stopped by PID afterwards."""
    procs: list[subprocess.Popen] = []
    try:
        logs = [tmp_path / f"worker{i}.log" for i in range(2)]
        workers = []
        for log in logs:
            workers.append(start_worker(replica_settings, log))
            procs.append(workers[-1])
        apis = []
        for i in range(2):
            proc, url = _start_api(replica_settings, tmp_path / f"api{i}.log")
            procs.append(proc)
            apis.append(httpx.Client(base_url=url, timeout=30))
        yield {"workers": workers, "logs": logs, "apis": apis}
        for api in apis:
            api.close()
    finally:
        for proc in procs:
            stop(proc)


def _waiter(logs: list[Path]) -> Callable[..., dict[str, Any]]:
    def wait(api: httpx.Client, run_id: str, until: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        return wait_for_run(api, run_id, until, logs)

    return wait


def _started_in(log: Path, run_id: str) -> bool:
    return f"run={run_id} attempt" in log.read_text(errors="replace")


def test_twenty_runs_across_two_apis_each_run_exactly_once(cluster):
    apis, logs = cluster["apis"], cluster["logs"]
    wait = _waiter(logs)
    runs = [post_run(apis[i % 2], {**SHORT_RUN, "name": f"r{i}"}) for i in range(20)]
    finals = [
        wait(apis[(i + 1) % 2], run_id, lambda r: r["status"] in TERMINAL) for i, run_id in enumerate(runs)
    ]
    assert [run["status"] for run in finals] == ["succeeded"] * 20
    assert [run["attempt"] for run in finals] == [1] * 20
    for i, run_id in enumerate(runs):
        history = apis[i % 2].get(f"/runs/{run_id}/metrics").json()
        assert [h["iteration"] for h in history] == list(range(1, 7))
    taken = [{run_id for run_id in runs if _started_in(log, run_id)} for log in logs]
    assert not taken[0] & taken[1], "a run was started by both workers"
    assert taken[0] | taken[1] == set(runs)
    assert taken[0] and taken[1], "one worker did all the work"


def test_a_delete_on_one_api_reaches_the_other_within_the_cache_ttl(cluster):
    first, second = cluster["apis"]
    run_id = post_run(first, SHORT_RUN)
    _waiter(cluster["logs"])(first, run_id, lambda r: r["status"] in TERMINAL)
    assert second.get("/density", params={"run_id": run_id, "x": "0,0"}).status_code == 200  # cached
    assert first.delete(f"/runs/{run_id}").status_code == 204
    deleted_at = time.monotonic()
    while (status := second.get("/density", params={"run_id": run_id, "x": "0,0"}).status_code) == 200:
        assert time.monotonic() - deleted_at < SERVED_RUN_TTL_S + 3.0, "the other API still serves it"
        time.sleep(0.05)
    assert status == 404
    assert second.get(f"/runs/{run_id}").status_code == 404


def test_a_worker_killed_mid_run_is_resumed_by_the_other(cluster):
    apis, logs, workers = cluster["apis"], cluster["logs"], cluster["workers"]
    wait = _waiter(logs)
    run_id = post_run(apis[0], LONG_RUN)
    midway = wait(apis[1], run_id, lambda r: r["checkpoint_sha256"] is not None or r["status"] in TERMINAL)
    assert midway["status"] == "running", "the run finished before it could be killed"
    victim = next(i for i, log in enumerate(logs) if _started_in(log, run_id))
    os.kill(workers[victim].pid, signal.SIGKILL)
    workers[victim].wait(timeout=10)
    done = wait(apis[1], run_id, lambda r: r["status"] in TERMINAL)
    assert done["status"] == "succeeded" and done["attempt"] == 2, done
    survivor = logs[1 - victim].read_text(errors="replace")
    assert f"run={run_id} resuming from iteration" in survivor
    history = apis[0].get(f"/runs/{run_id}/metrics").json()
    assert [h["iteration"] for h in history] == list(range(1, 61))
