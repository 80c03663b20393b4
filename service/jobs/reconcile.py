"""The reconciler: republish runs the broker lost, so every accepted run completes exactly once.

One pass (:func:`reconcile_once`) reads the database (the source of truth) and the broker:

* ``queued`` runs published more than ``ODESERVE_QUEUED_GRACE_S`` ago with no message waiting in the
  queue or recently delivered are published again (Redis restarted empty; publish failed at
  ``POST /train`` while the broker was down);
* ``running`` runs whose heartbeat is older than ``ODESERVE_HEARTBEAT_TIMEOUT_S`` (their worker was
  killed) go back to ``queued`` with a bumped fence and are published; the next attempt resumes
  from the last checkpoint, and attempts are capped by ``ODESERVE_MAX_ATTEMPTS``;
* ``canceling`` runs with a stale heartbeat end ``canceled``.

Claims are conditional updates (:mod:`service.db.recovery`), so concurrent passes in several
workers publish a run once; a duplicate message would be harmless anyway (``start_attempt`` ignores
a run that is finished or running elsewhere with a fresh heartbeat). Workers run a pass when they
start and every ``ODESERVE_RECONCILE_INTERVAL_S`` (``workers.signals``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Protocol

from service.config import Settings
from service.db import SessionFactory
from service.db import recovery as rec
from service.db.models import RunStatus
from service.jobs.broker_scan import BrokerView

__all__ = ["ReconcileReport", "Reconciler", "reconcile_once"]

log = logging.getLogger(__name__)


class Publisher(Protocol):
    def enqueue(self, run_id: str, device: str = "auto") -> None: ...

    def scan(self, delivered_within_s: float) -> BrokerView: ...


@dataclass
class ReconcileReport:
    """What one pass did (run ids)."""

    republished: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    canceled: list[str] = field(default_factory=list)
    skipped_live: list[str] = field(default_factory=list)
    broker_error: str | None = None


def reconcile_once(settings: Settings, sessions: SessionFactory, publisher: Publisher) -> ReconcileReport:
    """One pass; broker errors end it early (reported), database errors propagate."""
    report = ReconcileReport()
    grace, timeout = settings.queued_grace_s, settings.heartbeat_timeout_s
    with sessions() as session:
        lost = rec.find_lost(session, queued_grace_s=grace, heartbeat_timeout_s=timeout)
    if not lost:
        return report
    with sessions() as session:
        for run in [r for r in lost if r.status == RunStatus.canceling.value]:
            if rec.cancel_stale(session, run, heartbeat_timeout_s=timeout):
                log.warning("run=%s worker went silent while canceling; marked canceled", run.run_id)
                report.canceled.append(run.run_id)
    lost = [r for r in lost if r.status != RunStatus.canceling.value]
    if not lost:
        return report
    try:
        view = publisher.scan(grace)
    except Exception as exc:  # broker down: nothing can be published now; the next pass retries
        report.broker_error = f"{type(exc).__name__}: {exc}"
        log.warning("reconcile: broker unavailable, %d run(s) wait: %s", len(lost), report.broker_error)
        return report
    for run in lost:
        queued = run.status == RunStatus.queued.value
        if run.run_id in (view.live if queued else view.waiting):
            report.skipped_live.append(run.run_id)
            continue
        with sessions() as session:
            if queued:
                claimed = rec.claim_queued(session, run)
            else:
                claimed = rec.requeue_stale(session, run, heartbeat_timeout_s=timeout)
        if not claimed:
            continue  # another reconciler or a worker moved it first
        try:
            publisher.enqueue(run.run_id, run.device_request)
        except Exception as exc:
            report.broker_error = f"{type(exc).__name__}: {exc}"
            log.warning("run=%s could not be republished (retried next pass): %s", run.run_id, exc)
            break
        if queued:
            log.warning("run=%s was queued with no broker message; republished", run.run_id)
            report.republished.append(run.run_id)
        else:
            log.warning("run=%s heartbeat stale (worker lost); requeued to resume", run.run_id)
            report.requeued.append(run.run_id)
    return report


class Reconciler:
    """A daemon thread running :func:`reconcile_once` at once, then every ``interval_s`` (0: once).

    No Celery beat is needed: each worker runs one, and their claims do not collide.
    """

    def __init__(
        self, settings: Settings, sessions: SessionFactory, publisher: Publisher, interval_s: float
    ) -> None:
        self.settings, self.sessions, self.publisher = settings, sessions, publisher
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="odeserve-reconciler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            try:
                report = reconcile_once(self.settings, self.sessions, self.publisher)
                if report.republished or report.requeued or report.canceled:
                    log.info("reconcile pass: %s", report)
            except Exception:
                log.exception("reconcile pass failed; retrying in %.0fs", self.interval_s)
            if not self.interval_s or self._stop.wait(self.interval_s):
                return
