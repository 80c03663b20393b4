"""``GET /runs/{id}/events``: Server-Sent Events built from the rows a worker writes.

A writer thread moves a run through the repository functions the worker calls (start, progress with
metric rows, finish) while the stream is read; the TestClient hands the body back once the stream
ends, so every test also checks that it ends on its own.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from service.api.main import create_app
from service.db import repository as repo

FAST = {"events_poll_s": 0.02, "events_heartbeat_s": 0.05, "events_max_s": 20.0}


@pytest.fixture(scope="module")
def fast_client(settings, sessions, queue) -> Iterator[TestClient]:
    app = create_app(settings.model_copy(update=FAST), session_factory=sessions, dispatcher=queue)
    with TestClient(app) as client:
        yield client


def parse(body: str) -> list[dict[str, Any]]:
    """SSE frames as dicts: ``event``, ``data`` (decoded JSON), ``id``, ``retry``, ``comment``."""
    frames = []
    for block in body.split("\n\n"):
        if not block.strip():
            continue
        frame: dict[str, Any] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "":
                frame["comment"] = value
            elif name == "data":
                frame["data"] = json.loads(value)
            else:
                frame[name] = value
        frames.append(frame)
    return frames


def _queued_run(client: TestClient, queue, tiny_run) -> str:
    run_id = client.post("/train", json=tiny_run).json()["id"]
    queue.queued.remove(run_id)
    return run_id


def _point(iteration: int) -> dict[str, float]:
    return {"iteration": iteration, "wall_s": 0.1 * iteration, "loss": 3.0 - 0.1 * iteration,
            "nfe_forward": 20, "nfe_backward": 30}  # fmt: skip


def _train_slowly(sessions, run_id: str, pause: float, fail: bool = False) -> threading.Thread:
    """Thread: start the run, record iterations 1..6 two at a time, then finish (or fail)."""

    def work() -> None:
        time.sleep(pause)
        with sessions() as session:
            attempt = repo.start_attempt(session, run_id, device="cpu", worker="t", max_attempts=3)
            assert attempt is not None
            for it in (2, 4, 6):
                time.sleep(pause)
                history = [_point(it - 1), _point(it)]
                repo.record_progress(
                    session, attempt, iteration=it, wall_s=0.1 * it, metrics={"loss": 3.0}, history=history
                )
            time.sleep(pause)
            if fail:
                repo.finish_failed(session, attempt, error_type="solver_error", detail="step size underflow")
            else:
                done = {"test_nll": 2.5, "wall_clock_s": 0.6}
                repo.finish_succeeded(
                    session, attempt, metrics=done, sha256="0" * 64, iteration=6, wall_s=0.6
                )

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_stream_follows_a_run_to_success_in_order_and_ends(fast_client, sessions, queue, tiny_run):
    run_id = _queued_run(fast_client, queue, tiny_run)
    writer = _train_slowly(sessions, run_id, pause=0.15)
    started = time.monotonic()
    response = fast_client.get(f"/runs/{run_id}/events")
    writer.join(5)
    assert time.monotonic() - started < 10  # it ended on the terminal status, not the 20 s lifetime
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-store"
    frames = parse(response.text)
    assert frames[0] == {"retry": "2000"}
    events = [f for f in frames if "event" in f]
    # First snapshot: the queued status, zero progress, no points yet.
    assert [e["event"] for e in events[:3]] == ["progress", "metrics", "status"]
    assert events[0]["data"] == {"iteration": 0, "total": 6, "fraction": 0.0, "eta_s": None}
    assert events[1]["data"] == {"points": [], "summary": {}}
    assert events[2]["data"] == {"status": "queued", "error": None}
    statuses = [e["data"]["status"] for e in events if e["event"] == "status"]
    assert statuses == ["queued", "running", "succeeded"]
    assert events[-1] == {"event": "status", "data": {"status": "succeeded", "error": None}}
    progress = [e["data"] for e in events if e["event"] == "progress"]
    fractions = [p["fraction"] for p in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(set(fractions)) >= 3
    assert progress[-1] == {"iteration": 6, "total": 6, "fraction": 1.0, "eta_s": 0.0}
    running = [p for p in progress if 0 < p["fraction"] < 1]
    assert running and all(p["eta_s"] is not None and p["eta_s"] > 0 for p in running)
    metrics = [e for e in events if e["event"] == "metrics"]
    iterations = [p["iteration"] for e in metrics for p in e["data"]["points"]]
    assert iterations == [1, 2, 3, 4, 5, 6]  # every point once, in order
    assert metrics[-1]["id"] == "6" and metrics[-1]["data"]["summary"]["test_nll"] == 2.5
    assert set(metrics[1]["data"]["points"][0]) >= {
        "iteration",
        "wall_s",
        "loss",
        "nfe_forward",
        "nfe_backward",
    }


def test_failed_run_reports_its_error_and_ends(fast_client, sessions, queue, tiny_run):
    run_id = _queued_run(fast_client, queue, tiny_run)
    writer = _train_slowly(sessions, run_id, pause=0.05, fail=True)
    events = [f for f in parse(fast_client.get(f"/runs/{run_id}/events").text) if "event" in f]
    writer.join(5)
    last_status = [e for e in events if e["event"] == "status"][-1]["data"]
    assert last_status == {
        "status": "failed",
        "error": {"type": "solver_error", "detail": "step size underflow"},
    }


def test_finished_run_sends_one_snapshot_and_last_event_id_resumes(fast_client, sessions, queue, tiny_run):
    run_id = _queued_run(fast_client, queue, tiny_run)
    _train_slowly(sessions, run_id, pause=0.0).join(5)
    events = [f for f in parse(fast_client.get(f"/runs/{run_id}/events").text) if "event" in f]
    assert [e["event"] for e in events] == ["progress", "metrics", "status"]
    assert [p["iteration"] for p in events[1]["data"]["points"]] == [6]  # the newest point only
    resumed = parse(fast_client.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": "3"}).text)
    points = [p["iteration"] for f in resumed if f.get("event") == "metrics" for p in f["data"]["points"]]
    assert points == [4, 5, 6]


def test_idle_stream_sends_heartbeats_and_ends_at_its_lifetime(settings, sessions, queue, tiny_run):
    short = settings.model_copy(update={**FAST, "events_max_s": 0.4})
    with TestClient(create_app(short, session_factory=sessions, dispatcher=queue)) as client:
        run_id = _queued_run(client, queue, tiny_run)
        started = time.monotonic()
        frames = parse(client.get(f"/runs/{run_id}/events").text)
    assert time.monotonic() - started < 5
    comments = [f["comment"] for f in frames if "comment" in f]
    assert comments.count("keepalive") >= 2
    assert "lifetime" in comments[-1]
    assert [f["event"] for f in frames if "event" in f] == ["progress", "metrics", "status"]


def test_unknown_run_and_bad_last_event_id_are_problems(fast_client, queue, tiny_run, problem):
    problem(fast_client.get("/runs/00000000-0000-4000-8000-000000000000/events"), 404, "run_id")
    problem(fast_client.get("/runs/not-a-uuid/events"), 422, "run_id")
    run_id = _queued_run(fast_client, queue, tiny_run)
    problem(
        fast_client.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": "soon"}), 422, "Last-Event-ID"
    )
    fast_client.post(f"/runs/{run_id}/cancel")


def test_protected_reads_accept_the_key_as_a_query_parameter(settings, sessions, queue, tiny_run, problem):
    keyed = settings.model_copy(update={**FAST, "api_keys": SecretStr("k-events-1"), "protect_reads": True})
    with TestClient(create_app(keyed, session_factory=sessions, dispatcher=queue)) as client:
        auth = {"Authorization": "Bearer k-events-1"}
        run_id = client.post("/train", json=tiny_run, headers=auth).json()["id"]
        queue.queued.remove(run_id)
        client.post(f"/runs/{run_id}/cancel", headers=auth)
        url = f"/runs/{run_id}/events"
        problem(client.get(url), 401, "Authorization")
        problem(client.get(url, params={"api_key": "wrong"}), 403, "Authorization")
        for response in (client.get(url, params={"api_key": "k-events-1"}), client.get(url, headers=auth)):
            assert response.status_code == 200
            status = [f for f in parse(response.text) if f.get("event") == "status"]
            assert status[0]["data"]["status"] == "canceled"
        problem(
            client.get(f"/runs/{run_id}", params={"api_key": "k-events-1"}), 401
        )  # other routes: header only
