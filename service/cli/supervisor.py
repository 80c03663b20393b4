"""Keep one child process alive: ``odeserve up`` supervises its Celery worker with this.

A worker killed by the kernel's OOM killer (a run that did not fit), a segfault or a stray
``kill`` would otherwise leave the embedded service with no worker, and every later run would wait
in ``queued`` forever. The supervisor polls the child; when it exits without being asked to, the
exit is logged with its code and the child is started again after a back-off that doubles from
``min_backoff_s`` to ``max_backoff_s`` while restarts keep failing fast (a child that lived
``healthy_after_s`` resets it). The job the dead worker held is not lost: the reconciler requeues it
once its heartbeat goes stale, and the new worker resumes it from its last checkpoint.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable

__all__ = ["Supervisor"]

log = logging.getLogger(__name__)


class Supervisor:
    """Runs ``start()``'s process and restarts it when it dies, until :meth:`stop`."""

    def __init__(
        self,
        start: Callable[[], subprocess.Popen],
        stop: Callable[[subprocess.Popen], None],
        *,
        name: str = "worker",
        min_backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        healthy_after_s: float = 60.0,
        poll_s: float = 0.5,
    ) -> None:
        self._start, self._stop_child, self.name = start, stop, name
        self.min_backoff_s, self.max_backoff_s = min_backoff_s, max_backoff_s
        self.healthy_after_s, self.poll_s = healthy_after_s, poll_s
        self.restarts = 0
        self.proc: subprocess.Popen | None = None
        self._started_at = 0.0
        self._backoff = min_backoff_s
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name=f"supervise-{name}", daemon=True)

    def start(self) -> subprocess.Popen:
        """Start the child and the watching thread; returns the first process."""
        proc = self._spawn()
        self._thread.start()
        return proc

    def stop(self) -> None:
        """Stop watching, then stop the child (no restart after this)."""
        self._stopping.set()
        self._thread.join(timeout=5)
        with self._lock:
            if self.proc is not None:
                self._stop_child(self.proc)

    def _spawn(self) -> subprocess.Popen:
        with self._lock:
            self.proc = self._start()
            self._started_at = time.monotonic()
        log.info("%s started (pid %d)", self.name, self.proc.pid)
        return self.proc

    def _watch(self) -> None:
        while not self._stopping.wait(self.poll_s):
            proc = self.proc
            if proc is None or proc.poll() is None:
                continue
            lived = time.monotonic() - self._started_at
            if lived >= self.healthy_after_s:
                self._backoff = self.min_backoff_s
            log.error(
                "%s (pid %d) exited with code %s after %.0fs; restarting in %.0fs",
                self.name,
                proc.pid,
                proc.returncode,
                lived,
                self._backoff,
            )
            if self._stopping.wait(self._backoff):
                return
            delay, self._backoff = self._backoff, min(self._backoff * 2, self.max_backoff_s)
            try:
                self._spawn()
                self.restarts += 1
            except OSError as exc:
                log.error("could not restart %s (retrying in %.0fs): %s", self.name, delay, exc)
