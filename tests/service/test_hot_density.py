"""The GET /density hot path answers like the route, and leaves everything else to the route."""

from __future__ import annotations

import uuid

import pytest

from service.api import hot_density


@pytest.fixture
def hot_calls(monkeypatch) -> list[int]:
    """Counts answers computed by the hot path (it wraps the same serving call as the route)."""
    calls: list[int] = []
    real = hot_density.log_density_async

    async def counting(entry, points, field, client=None):
        calls.append(int(points.shape[0]))
        return await real(entry, points, field, client)

    monkeypatch.setattr(hot_density, "log_density_async", counting)
    return calls


def test_hot_path_answers_a_loaded_run_exactly_like_the_route(client, trained_run, hot_calls):
    params = {"run_id": trained_run["id"], "x": ["0.5,1.2", "-1,0"]}
    posted = client.post("/density", json={"run_id": trained_run["id"], "points": [[0.5, 1.2], [-1, 0]]})
    assert posted.status_code == 200  # the route loads the model and the cache remembers the run
    got = client.get("/density", params=params)
    assert hot_calls == [2], "the hot path did not answer a loaded run"
    assert got.status_code == 200 and got.headers["content-type"] == "application/json"
    assert got.json() == posted.json()
    metrics = client.get("/metrics").text
    assert 'route="/density"' in metrics and 'method="GET"' in metrics
    passes = [line for line in metrics.splitlines() if line.startswith("odeserve_batch_requests_count")]
    assert passes and float(passes[0].split()[-1]) >= 2  # the POST's pass and the GET's


@pytest.mark.parametrize(
    ("params", "status", "field"),
    [
        ({"x": "0.5"}, 422, "x"),  # wrong dimension
        ({"x": "0.5,abc"}, 422, "x"),  # not a number
        ({"x": "nan,1"}, 422, "x"),
        ({"run_id": "not-a-uuid", "x": "0,0"}, 422, "run_id"),
        ({"run_id": str(uuid.uuid4()), "x": "0,0"}, 404, "run_id"),
    ],
)
def test_bad_queries_fall_through_to_the_routes_problem_json(
    client, trained_run, hot_calls, problem, params, status, field
):
    client.post("/density", json={"run_id": trained_run["id"], "points": [[0.0, 0.0]]})
    response = client.get("/density", params={"run_id": trained_run["id"], **params})
    problem(response, status, field)


def test_other_queries_are_left_to_the_route(client, trained_run, hot_calls):
    client.post("/density", json={"run_id": trained_run["id"], "points": [[0.0, 0.0]]})
    extra = client.get("/density", params={"run_id": trained_run["id"], "x": "0,0", "debug": "1"})
    many = client.get("/density", params={"run_id": trained_run["id"], "x": ["0,0"] * 65})
    assert extra.status_code == 200 and many.status_code == 200 and len(many.json()["log_density"]) == 65
    assert hot_calls == []
