"""Concurrent cold loads and renders of one thing happen once (service.storage.single_flight)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.serving import model_cache
from service.serving.model_cache import ModelCache
from service.storage.models_store import ModelStore
from service.storage.single_flight import SingleFlight

THREADS = 8


def _together(fn, n: int = THREADS) -> list:
    """Call ``fn`` from ``n`` threads released at once; their results in order."""
    barrier = threading.Barrier(n)

    def call(_: int):
        barrier.wait()
        return fn()

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(call, range(n)))


def _slow(value, calls: list, seconds: float = 0.2):
    def work():
        calls.append(1)
        time.sleep(seconds)  # long enough for every thread to arrive during the flight
        return value

    return work


def test_one_call_serves_every_concurrent_caller_and_the_key_frees_after() -> None:
    flight: SingleFlight[object] = SingleFlight()
    calls: list[int] = []
    value = object()
    results = _together(lambda: flight.do("k", _slow(value, calls)))
    assert len(calls) == 1 and all(r is value for r in results)
    assert flight.coalesced == THREADS - 1
    flight.do("k", _slow(value, calls, 0))
    assert len(calls) == 2  # done flights are not cached: the next call works again


def test_an_error_reaches_every_waiter_and_the_next_call_retries() -> None:
    flight: SingleFlight[int] = SingleFlight()
    calls: list[int] = []

    def failing() -> int:
        calls.append(1)
        time.sleep(0.2)
        raise OSError("store down")

    def call() -> object:
        try:
            return flight.do("k", failing)
        except OSError as exc:
            return exc

    errors = _together(call)
    assert len(calls) == 1 and all(isinstance(e, OSError) for e in errors)
    assert flight.do("k", lambda: 7) == 7


def test_concurrent_cold_queries_load_a_checkpoint_once(trained_run, settings, monkeypatch) -> None:
    loads: list[int] = []
    real = model_cache.load_checkpoint

    def counting(*args, **kwargs):
        loads.append(1)
        time.sleep(0.2)
        return real(*args, **kwargs)

    monkeypatch.setattr(model_cache, "load_checkpoint", counting)
    cache = ModelCache(ModelStore(settings.models_store))
    entries = _together(lambda: cache.get(trained_run["id"], trained_run["checkpoint_sha256"]))
    assert len(loads) == 1
    assert all(e is entries[0] for e in entries)


def test_concurrent_requests_for_an_unrendered_figure_render_it_once(tmp_path) -> None:
    store = ModelStore(tmp_path)
    calls: list[int] = []
    key = "runs/00000000-0000-0000-0000-000000000001/plots/density.png"
    results = _together(lambda: store.cached(key, _slow(b"\x89PNG", calls)))
    assert len(calls) == 1 and set(results) == {b"\x89PNG"}
    assert store.cached(key, _slow(b"other", calls)) == b"\x89PNG"  # then read from the store
    assert len(calls) == 1


@pytest.mark.parametrize("threads", [2, THREADS])
def test_different_keys_do_not_wait_for_each_other(threads: int) -> None:
    flight: SingleFlight[int] = SingleFlight()
    started = time.monotonic()
    counter = iter(range(threads))
    lock = threading.Lock()

    def call() -> int:
        with lock:
            key = next(counter)
        return flight.do(key, lambda: time.sleep(0.3) or key)

    assert sorted(_together(call, threads)) == list(range(threads))
    assert time.monotonic() - started < 0.3 * threads  # ran side by side, not one after another
