"""Coalesce concurrent work on one key: the first caller does it, the others wait for its result.

A burst of queries on a run that is not loaded yet (or a page asking for a figure that is not
rendered yet) used to load the checkpoint (or render the figure) once per request thread, each
copy costing the load time and its memory. With :class:`SingleFlight` the first caller for a key
does the work and every caller that arrives meanwhile gets the same result, or the same exception;
once it is done the key is free again, so a failure is retried by the next request. Per process:
API replicas may still do the work once each, which the stores' atomic writes make harmless.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

__all__ = ["SingleFlight"]

V = TypeVar("V")


class _Flight:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self.waiters = 0


class SingleFlight(Generic[V]):
    """``do(key, work)`` runs ``work()`` once for all concurrent callers of ``key``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[Hashable, _Flight] = {}
        self.coalesced = 0  # callers that waited for another's result instead of working

    def do(self, key: Hashable, work: Callable[[], V]) -> V:
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
            else:
                flight.waiters += 1
                self.coalesced += 1
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.value
        try:
            flight.value = work()
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.set()
        return flight.value
