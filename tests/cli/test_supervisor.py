"""The embedded worker's supervisor, on real child processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from service.cli.embedded import stop_process
from service.cli.supervisor import Supervisor

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]
CRASHER = [sys.executable, "-c", "raise SystemExit(3)"]


def _until(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _stop(proc: subprocess.Popen) -> None:
    stop_process(proc, timeout=5)


def test_a_killed_child_is_restarted_and_stop_ends_it_for_good() -> None:
    supervisor = Supervisor(lambda: subprocess.Popen(SLEEPER), _stop, min_backoff_s=0.1, poll_s=0.05)
    first = supervisor.start()
    try:
        os.kill(first.pid, signal.SIGKILL)
        assert _until(lambda: supervisor.proc is not first and supervisor.proc.poll() is None)
        assert supervisor.restarts == 1
        second = supervisor.proc
    finally:
        supervisor.stop()
    assert second.poll() is not None  # stopped, by its PID
    time.sleep(0.3)
    assert supervisor.proc is second and supervisor.restarts == 1  # and not restarted


def test_a_child_that_keeps_dying_is_restarted_with_growing_backoff() -> None:
    starts: list[float] = []

    def start() -> subprocess.Popen:
        starts.append(time.monotonic())
        return subprocess.Popen(CRASHER)

    supervisor = Supervisor(start, _stop, min_backoff_s=0.1, max_backoff_s=0.4, poll_s=0.02)
    supervisor.start()
    try:
        assert _until(lambda: len(starts) >= 5)
    finally:
        supervisor.stop()
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2 and gaps[2] >= 0.4 and gaps[3] >= 0.4
    assert gaps[3] < 0.4 + 1.0  # capped at max_backoff_s (plus polling and start-up)
