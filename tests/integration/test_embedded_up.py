"""``odeserve up`` (what ``make run`` starts) as a user runs it: a worker killed with SIGKILL (the
OOM killer, say) is restarted, its run resumes, later runs do not wait forever, and SIGTERM stops
everything. Embedded SQLite and Redis by design: this is the no-Docker path."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from processes import QUICK_RUN, ROOT, TERMINAL, free_port, post_run, stop, wait_for_run, wait_until_serving

pytestmark = pytest.mark.integration

FAST = {
    "ODESERVE_HEARTBEAT_INTERVAL_S": "0.3",
    "ODESERVE_HEARTBEAT_TIMEOUT_S": "2",
    "ODESERVE_RECONCILE_INTERVAL_S": "0.5",
    "ODESERVE_QUEUED_GRACE_S": "2",
    "ODESERVE_CHECKPOINT_EVERY": "10",
    "ODESERVE_PROGRESS_EVERY": "2",
    "ODESERVE_TORCH_THREADS": "1",
    "ODESERVE_DEVICE": "cpu",
}
LONG_RUN = {**QUICK_RUN, "training": {"iterations": 300, "batch_size": 32, "seed": 1}}


def _worker_pids(log: Path) -> list[int]:
    return [int(p) for p in re.findall(r"worker started \(pid (\d+)\)", log.read_text(errors="replace"))]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def embedded(tmp_path: Path):
    port, log = free_port(), tmp_path / "up.log"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "MODELS_STORE")}
    env |= FAST | {"PYTHONPATH": str(ROOT)}
    command = [
        sys.executable,
        "-m",
        "service.cli.main",
        "up",
        "--port",
        str(port),
        "--data-dir",
        str(tmp_path),
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    wait_until_serving(proc, f"http://127.0.0.1:{port}/readyz", log, timeout=120, log_says="ready")
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    yield proc, client, log
    client.close()
    stop(proc, timeout=40)


def test_a_killed_worker_is_restarted_and_its_run_resumes(embedded):
    proc, client, log = embedded
    run_id = post_run(client, LONG_RUN)
    wait_for_run(client, run_id, lambda r: r["checkpoint_sha256"] is not None, [log], timeout=120)
    (first,) = _worker_pids(log)
    os.kill(first, signal.SIGKILL)

    done = wait_for_run(client, run_id, lambda r: r["status"] in TERMINAL, [log], timeout=180)
    assert done["status"] == "succeeded" and done["attempt"] == 2, done
    later = post_run(client, QUICK_RUN)  # the service still trains: nothing waits forever
    assert wait_for_run(client, later, lambda r: r["status"] in TERMINAL, [log])["status"] == "succeeded"
    text = log.read_text(errors="replace")
    assert re.search(rf"worker \(pid {first}\) exited with code -9", text), text[-3000:]
    assert f"run={run_id} resuming from iteration" in text

    pids = _worker_pids(log)
    assert len(pids) == 2 and _alive(pids[1])
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=40) is not None
    assert not _alive(pids[1]), "the worker is stopped with the service"
