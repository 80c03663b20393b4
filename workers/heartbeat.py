"""A running job's heartbeat thread, which doubles as the watchdog of the hard time limit.

Every ``interval_s`` it stamps ``heartbeat_at`` (fenced); the reconciler requeues a ``running`` run
whose heartbeat went stale, i.e. whose worker died. It runs beside the training loop, so a single slow
iteration (or the final evaluation) does not look like a dead worker. Once the attempt has run for
``hard_limit_s`` it records the run ``failed`` with ``time_limit`` even if the training thread is stuck
inside one iteration; that thread's next fenced write then raises ``StaleAttempt`` and it stops.
"""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType

from sqlalchemy.orm import Session

from service.db import SessionFactory
from service.db import repository as repo
from service.db.leases import beat

__all__ = ["Heartbeat"]


class Heartbeat:
    """Context manager: a daemon thread beating for ``attempt`` until the block exits."""

    def __init__(
        self,
        attempt: repo.Attempt,
        sessions: SessionFactory,
        *,
        interval_s: float,
        hard_limit_s: float,
        log: logging.LoggerAdapter,
    ) -> None:
        self.attempt, self.sessions = attempt, sessions
        self.interval_s, self.hard_limit_s = interval_s, hard_limit_s
        self.log = log
        self.expired = False
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{attempt.run_id[:8]}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            remaining = self.hard_limit_s - (time.monotonic() - self._started)
            if self._stop.wait(max(0.0, min(self.interval_s, remaining))):
                return
            try:
                with self.sessions() as session:
                    if time.monotonic() - self._started >= self.hard_limit_s:
                        self._expire(session)
                        return
                    beat(session, self.attempt)
            except repo.StaleAttempt:
                return  # finished, canceled or taken over: nothing left to watch
            except Exception as exc:  # the database blinked; the next beat retries
                self.log.warning("heartbeat failed: %s", exc)

    def _expire(self, session: Session) -> None:
        detail = f"the attempt ran past the hard time limit of {self.hard_limit_s:g}s"
        repo.finish_failed(session, self.attempt, error_type="time_limit", detail=detail)
        self.expired = True
        self.log.error("failed: %s", detail)
