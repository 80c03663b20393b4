"""Two API processes and two Celery workers on one database and broker, over two stores.

Everything here is a real process (uvicorn, celery) talking over 127.0.0.1; the tests read and
write only through HTTP. Timings are shortened through settings as in test_crash_recovery. Each
test runs twice: ``shared-dir``, all four processes on one local models store directory (one
host), and ``s3``, ``MODELS_STORE=s3://...`` on a moto server with a separate, empty local cache
directory per process (as on separate hosts): a run trained by one worker is served by either
API and resumed by the other worker only through the object store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from processes import (
    QUICK_RUN,
    TERMINAL,
    fast_recovery,
    post_run,
    start_api,
    start_worker,
    stop,
    wait_for_run,
)

from service.config import Settings
from service.serving.model_cache import SERVED_RUN_TTL_S

pytestmark = pytest.mark.integration

SHORT_RUN = {**QUICK_RUN, "training": {"iterations": 6, "batch_size": 32}}
LONG_RUN = {**QUICK_RUN, "training": {"iterations": 60, "batch_size": 64, "seed": 1}}


@pytest.fixture(scope="module", params=["shared-dir", "s3"])
def replica_settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    fast = fast_recovery(settings, "replicas", queued_grace_s=5.0)
    if request.param == "shared-dir":
        return fast
    s3 = request.getfixturevalue("s3")
    prefix = f"replicas-{fast.queue.rsplit('-', 1)[-1]}"
    return fast.model_copy(update={"models_store": s3.url(prefix), "s3_endpoint_url": s3.endpoint})


def _own_dir(settings: Settings, directory: Path) -> Settings:
    """``settings`` with a local cache directory of its own (only used with an object store)."""
    return settings.model_copy(update={"store_cache_dir": directory})


@pytest.fixture(scope="module")
def cluster(
    request: pytest.FixtureRequest, replica_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """Two workers (one log each) and two APIs, started once per store variant (pytest runs the
    tests of one variant together, in file order: the worker-killing test is last); all stopped
    by PID afterwards."""
    procs: list[subprocess.Popen] = []
    tmp_path = tmp_path_factory.mktemp("replicas")
    try:
        logs = [tmp_path / f"worker{i}.log" for i in range(2)]
        workers = []
        for i, log in enumerate(logs):
            workers.append(start_worker(_own_dir(replica_settings, tmp_path / f"worker{i}"), log))
            procs.append(workers[-1])
        apis = []
        for i in range(2):
            own = _own_dir(replica_settings, tmp_path / f"api{i}")
            proc, url = start_api(own, tmp_path / f"api{i}.log")
            procs.append(proc)
            apis.append(httpx.Client(base_url=url, timeout=30))
        s3 = request.getfixturevalue("s3") if isinstance(replica_settings.models_store, str) else None
        yield {"workers": workers, "logs": logs, "apis": apis, "s3": s3, "settings": replica_settings}
        for api in apis:
            api.close()
    finally:
        for proc in procs:
            stop(proc)


def _waiter(logs: list[Path]) -> Callable[..., dict[str, Any]]:
    def wait(api: httpx.Client, run_id: str, until: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        return wait_for_run(api, run_id, until, logs)

    return wait


def _objects(cluster: dict[str, Any], run_id: str | None = None) -> list[str] | None:
    """Object keys of the run (or of everything) in the s3 variant; None with a shared directory."""
    if cluster["s3"] is None:
        return None
    prefix = cluster["settings"].models_store.split("/", 3)[3]
    return cluster["s3"].keys(f"{prefix}/runs/{run_id}" if run_id else prefix)


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
    if cluster["s3"] is not None:  # each replica serves runs it never trained, from the object store
        for i, run_id in enumerate(runs[:4]):
            answer = apis[i % 2].get("/density", params={"run_id": run_id, "x": "0,0"})
            assert answer.status_code == 200, answer.text


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
    assert _objects(cluster, run_id) in (None, []), "the deleted run's objects are still stored"


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
    keys = _objects(cluster, run_id)
    if keys is not None:  # the survivor had no local copy: it resumed from the published object
        assert [k.rsplit("/", 1)[-1] for k in keys] == [f"checkpoint-{done['checkpoint_sha256']}.tar"]
        assert not [k for k in _objects(cluster) if "/tmp/" in k], "temporary upload keys left behind"
