"""The GET /density hot path answers like the route, and leaves everything else to the route."""

from __future__ import annotations

import json
import math
import time
import uuid
from types import SimpleNamespace
from urllib.parse import parse_qsl

import pytest
import torch
from fastapi.testclient import TestClient

from service.api import hot_density
from service.api.main import create_app
from service.api.routes import density
from service.api.routes.density import parse_points_param, parse_query_points
from service.api.serving import model_points
from service.db import repository as repo
from service.ml.data import MAX_DIM, points_from_rows
from service.ml.errors import DataError
from service.serving import model_cache


@pytest.fixture
def hot_calls(monkeypatch) -> list[int]:
    """The values count of each answer the hot path sent (it builds every body with density_json)."""
    calls: list[int] = []
    real = hot_density.density_json

    def counting(run_id: str, values: list[float]) -> bytes:
        calls.append(len(values))
        return real(run_id, values)

    monkeypatch.setattr(hot_density, "density_json", counting)
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


def test_hot_path_takes_unescaped_queries_and_other_spellings_of_the_run_id(client, trained_run, hot_calls):
    run_id = trained_run["id"]
    client.post("/density", json={"run_id": run_id, "points": [[0.0, 0.0]]})
    plain = client.get(f"/density?run_id={run_id}&x=0.25,-0.5&x=1e-3,2")
    upper = client.get(f"/density?x=0.25,-0.5&x=1e-3,2&run_id={{{run_id.upper()}}}")
    assert plain.status_code == upper.status_code == 200
    assert plain.json() == upper.json() and plain.json()["run_id"] == run_id
    assert hot_calls == [2, 2]


@pytest.mark.parametrize(
    ("params", "status", "field"),
    [
        ({"x": "0.5"}, 422, "x"),  # wrong dimension
        ({"x": "0.5,abc"}, 422, "x"),  # not a number
        ({"x": "nan,1"}, 422, "x"),
        ({"x": "1e39,1"}, 422, "x"),  # beyond float32
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
    assert hot_calls == []


def test_other_queries_are_left_to_the_route(client, trained_run, hot_calls):
    client.post("/density", json={"run_id": trained_run["id"], "points": [[0.0, 0.0]]})
    extra = client.get("/density", params={"run_id": trained_run["id"], "x": "0,0", "debug": "1"})
    many = client.get("/density", params={"run_id": trained_run["id"], "x": ["0,0"] * 65})
    assert extra.status_code == 200 and many.status_code == 200 and len(many.json()["log_density"]) == 65
    assert hot_calls == []


VALID_X = [["0.5,1.2", "-1,0"], [" 1e-3 , 2_0"], ["3.4028234e38,-1.17549435e-38"], ["0.1,0.2"] * 3]
REJECTED_X = [["nan,0"], ["inf,0"], ["1e39,0"], ["abc,0"], [",0"], ["0x10,0"]]


def _checked(xs: list[str]):
    """The route's checking parser, without the fast path."""
    return points_from_rows(parse_points_param(xs), field="x", max_dim=MAX_DIM)


@pytest.mark.parametrize("xs", VALID_X)
def test_plain_points_equal_the_routes_parse(xs):
    hot = density._plain_query_points(xs)
    assert hot is not None and hot.dtype == torch.float32
    assert torch.equal(hot, _checked(xs)) and torch.equal(parse_query_points(xs), _checked(xs))
    wide = model_points(SimpleNamespace(model=SimpleNamespace(dim=2), dtype=torch.float64), hot, "x")
    assert wide.dtype == torch.float64 and torch.equal(wide, _checked(xs).double())


@pytest.mark.parametrize("xs", REJECTED_X)
def test_plain_points_leave_what_the_route_rejects_to_the_route(xs):
    assert density._plain_query_points(xs) is None
    with pytest.raises(DataError):
        parse_query_points(xs)


def test_plain_points_leave_ragged_rows_and_too_many_coordinates_to_the_route():
    assert density._plain_query_points(["1,2", "3"]) is None
    assert density._plain_query_points([",".join(["1"] * (MAX_DIM + 1))]) is None
    assert density._plain_query_points([]) is None
    with pytest.raises(DataError):
        parse_query_points(["1,2", "3"])


def test_density_json_is_the_routes_object_with_null_for_non_finite():
    values = [-1.5, 1e-05, 3.0000001192092896, math.nan, -math.inf]
    body = hot_density.density_json("abc", values)
    assert body == b'{"run_id":"abc","log_density":[-1.5,1e-05,3.0000001192092896,null,null]}'
    assert json.loads(body) == {"run_id": "abc", "log_density": [-1.5, 1e-05, 3.0000001192092896, None, None]}


@pytest.mark.parametrize("query", ["a=1&b=2", "a=1&&b", "a=b=c&x=", "x=1%2C2&y=a+b", "", "run_id=&x=0,0"])
def test_query_pairs_split_like_parse_qsl(query):
    assert hot_density._query_pairs(query) == parse_qsl(query, keep_blank_values=True)


def test_a_run_under_steady_load_stays_hot_and_a_deletion_elsewhere_ends_it(
    client, queue, sessions, tiny_run, hot_calls, monkeypatch
):
    """The remembered run is read again before its TTL ends; another process's DELETE shows."""
    monkeypatch.setattr(model_cache, "SERVED_RUN_TTL_S", 0.6)  # recalls after 0.1 s refresh
    run_id = client.post("/train", json=tiny_run).json()["id"]
    assert queue.run_pending() == ["succeeded"]
    client.post("/density", json={"run_id": run_id, "points": [[0.0, 0.0]]})
    queries, until = 0, time.monotonic() + 3 * model_cache.SERVED_RUN_TTL_S
    while time.monotonic() < until:
        assert client.get(f"/density?run_id={run_id}&x=0,0").status_code == 200
        queries += 1
        time.sleep(0.02)
    assert len(hot_calls) == queries, "a query fell through to the route: the run expired under load"
    with sessions() as session:  # what DELETE /runs/{id} in another API process does
        assert repo.delete_run(session, run_id) == "deleted"
    deadline = time.monotonic() + model_cache.SERVED_RUN_TTL_S + 1.0
    while (status := client.get(f"/density?run_id={run_id}&x=0,0").status_code) == 200:
        assert time.monotonic() < deadline, "a run deleted elsewhere was served past its TTL"
        time.sleep(0.02)
    assert status == 404


def test_a_busy_model_gets_one_503_after_the_batch_timeout_not_two(settings, sessions, queue, trained_run):
    """The hot path answers the batcher's timeout itself; the route used to wait a second time."""
    timeout_s = 1.0
    app = create_app(
        settings.model_copy(update={"batch_timeout_s": timeout_s}), session_factory=sessions, dispatcher=queue
    )
    with TestClient(app) as busy_client:
        run_id = trained_run["id"]
        assert (
            busy_client.post("/density", json={"run_id": run_id, "points": [[0.0, 0.0]]}).status_code == 200
        )
        entry = app.state.model_cache.loaded(run_id, trained_run["checkpoint_sha256"])
        with entry.lock:  # another pass holds the model past the timeout
            began = time.monotonic()
            response = busy_client.get(f"/density?run_id={run_id}&x=0,0")
            waited = time.monotonic() - began
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert response.json()["type"] == "/problems/model_busy"
        assert waited < 1.8 * timeout_s, f"waited {waited:.2f}s: the timeout was served twice"
        assert 'route="/density",status="503"' in busy_client.get("/metrics").text
