"""The model cache's memory of succeeded runs: TTL, read-ahead refresh, deletion seen."""

from __future__ import annotations

import threading
import time

import pytest

from service.serving import model_cache
from service.serving.model_cache import ModelCache, ServedRun
from service.storage.models_store import ModelStore

RUN = ServedRun(id="r1", model="ffjord", status="succeeded", checkpoint_sha256="ab" * 32)


def _until(condition, timeout_s: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@pytest.fixture
def short_ttl(monkeypatch) -> float:
    ttl = model_cache.REFRESH_AHEAD_S / 2  # every recall falls in the read-ahead window
    monkeypatch.setattr(model_cache, "SERVED_RUN_TTL_S", ttl)
    return ttl


def test_without_confirm_a_remembered_run_expires_after_its_ttl(tmp_path, short_ttl):
    cache = ModelCache(ModelStore(tmp_path))
    cache.remember(RUN)
    assert cache.recall("r1") == RUN and cache.recall("r2") is None
    time.sleep(short_ttl + 0.05)
    assert cache.recall("r1") is None


def test_a_recall_near_the_end_reads_the_run_again_once_and_extends_it(tmp_path, short_ttl):
    release, calls = threading.Event(), []

    def confirm(run_id: str) -> ServedRun:
        calls.append(run_id)
        release.wait(5)
        return RUN

    cache = ModelCache(ModelStore(tmp_path), confirm=confirm)
    cache.remember(RUN)
    for _ in range(20):  # one read in flight at a time
        assert cache.recall("r1") == RUN
    assert _until(lambda: calls == ["r1"])
    time.sleep(short_ttl + 0.05)
    assert cache.recall("r1") is None  # the read has not answered: the TTL still holds
    release.set()
    assert _until(lambda: cache.recall("r1") == RUN), "the confirmed run was not remembered again"


def test_a_run_gone_from_the_database_is_forgotten_before_its_ttl_ends(tmp_path, monkeypatch):
    monkeypatch.setattr(model_cache, "SERVED_RUN_TTL_S", model_cache.REFRESH_AHEAD_S + 5.0)
    cache = ModelCache(ModelStore(tmp_path), confirm=lambda run_id: None)
    cache.remember(RUN)
    assert cache.recall("r1") == RUN  # 5 s left: no read yet
    monkeypatch.setattr(model_cache, "REFRESH_AHEAD_S", 10.0)
    assert cache.recall("r1") == RUN  # inside the window now: read, and the run is gone
    assert _until(lambda: cache.recall("r1") is None)


def test_a_failed_read_keeps_the_run_until_its_ttl_and_is_tried_again(tmp_path, short_ttl, caplog):
    calls = []

    def confirm(run_id: str) -> ServedRun:
        calls.append(run_id)
        raise ConnectionError("database away")

    cache = ModelCache(ModelStore(tmp_path), confirm=confirm)
    cache.remember(RUN)
    assert cache.recall("r1") == RUN
    assert _until(lambda: len(calls) == 1 and not cache._refreshing)
    assert cache.recall("r1") == RUN  # still within the TTL; a new read starts
    assert _until(lambda: len(calls) == 2)
    assert "could not read run r1 again" in caplog.text
    time.sleep(short_ttl + 0.05)
    assert cache.recall("r1") is None
