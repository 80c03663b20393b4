"""``POST /runs/compare`` and ``GET /runs/compare/curves.png``; ``Idempotency-Key`` on ``POST /sweeps``."""

from __future__ import annotations

import io
import uuid
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr

from service.api.main import create_app
from service.api.routes.compare import _labels
from service.db.models import RunRow
from service.plots import losses_png
from service.schemas.compare import flatten


@pytest.fixture(scope="module")
def three_runs(client, queue, trained_run) -> list[dict[str, Any]]:
    """The trained run, a second trained one at another tolerance and a queued one (no history)."""
    body = {
        "model": "ffjord",
        "dataset": {"name": "8gaussians", "n_train": 300, "n_test": 50},
        "model_config": {"hidden_dims": [8]},
        "solver": {"method": "dopri5", "rtol": 1e-2, "atol": 1e-3},
        "training": {"iterations": 6, "batch_size": 32},
        "name": "loose",
    }
    loose = client.post("/train", json=body).json()
    assert queue.run_pending() == ["succeeded"]
    waiting = client.post("/train", json={**body, "name": "waiting", "model_config": {"hidden_dims": [4, 4]}})
    queue.queued.remove(waiting.json()["id"])
    yield [trained_run, client.get(f"/runs/{loose['id']}").json(), waiting.json()]
    client.post(f"/runs/{waiting.json()['id']}/cancel")


def test_compare_lists_only_the_settings_that_differ_and_every_metric(client, three_runs):
    ids = [r["id"] for r in three_runs]
    response = client.post("/runs/compare", json={"run_ids": ids})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["id"] for r in body["runs"]] == ids
    assert [r["status"] for r in body["runs"]] == ["succeeded", "succeeded", "queued"]
    assert body["runs"][1] == {
        "id": ids[1],
        "name": "loose",
        "status": "succeeded",
        "model": "ffjord",
        "dataset": three_runs[1]["dataset"],
    }
    assert body["settings"] == {
        "solver.rtol": [1e-3, 1e-2, 1e-2],
        "model_config.hidden_dims": [[8], [8], [4, 4]],
    }
    keys = sorted(three_runs[0]["metrics"])
    assert sorted(body["metrics"]) == keys
    for key in keys:
        assert body["metrics"][key] == [three_runs[0]["metrics"][key], three_runs[1]["metrics"][key], None]
    assert body["curves_png"] == f"/runs/compare/curves.png?run_ids={','.join(ids)}"


def test_compare_keeps_the_order_given(client, three_runs):
    ids = [three_runs[2]["id"], three_runs[0]["id"]]
    body = client.post("/runs/compare", json={"run_ids": ids}).json()
    assert [r["id"] for r in body["runs"]] == ids
    assert body["settings"]["solver.rtol"] == [1e-2, 1e-3]


def test_flatten_nests_dotted_paths_and_keeps_lists_whole():
    value = {"a": {"b": 1, "c": {"d": None}}, "e": [1, 2], "f": {}}
    assert flatten(value, "p") == {"p.a.b": 1, "p.a.c.d": None, "p.e": [1, 2], "p.f": {}}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"run_ids": [str(uuid.uuid4())]}, "run_ids"),
        ({"run_ids": [str(uuid.uuid4()) for _ in range(21)]}, "run_ids"),
        ({"run_ids": ["not-a-uuid", str(uuid.uuid4())]}, "run_ids.0"),
        ({"ids": [str(uuid.uuid4()), str(uuid.uuid4())]}, "run_ids"),
        ({"run_ids": [str(uuid.uuid4()), str(uuid.uuid4())], "extra": 1}, "extra"),
    ],
)
def test_bad_compare_requests_are_422_naming_the_field(client, problem, body, field):
    problem(client.post("/runs/compare", json=body), 422, field)


def test_compare_refuses_duplicates_and_names_an_unknown_id(client, problem, three_runs):
    known = three_runs[0]["id"]
    body = problem(client.post("/runs/compare", json={"run_ids": [known, known]}), 422, "run_ids")
    assert "twice" in body["detail"]
    unknown = str(uuid.uuid4())
    body = problem(client.post("/runs/compare", json={"run_ids": [known, unknown]}), 404, "run_ids.1")
    assert unknown in body["detail"]


def _png(response) -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(response.content))


def test_curves_png_overlays_the_runs(client, three_runs):
    ids = ",".join(r["id"] for r in three_runs)
    image = _png(client.get("/runs/compare/curves.png", params={"run_ids": ids}))
    assert image.width > image.height
    response = client.get("/runs/compare/curves.png", params={"run_ids": ids})
    assert response.headers["cache-control"] == "no-store"  # a queued run may still train
    done = client.get("/runs/compare/curves.png", params={"run_ids": ids.rsplit(",", 1)[0]})
    assert "cache-control" not in done.headers
    # The overlay draws each run's curve: two runs give more coloured pixels than one.
    pixels = lambda img: int((np.asarray(img.convert("RGB")).std(axis=2) > 30).sum())  # noqa: E731
    one = Image.open(io.BytesIO(losses_png([("a", _history(1.0))])))
    two = Image.open(io.BytesIO(losses_png([("a", _history(1.0)), ("b", _history(3.0))])))
    assert pixels(two) > pixels(one) * 1.3


def _history(offset: float) -> list[dict[str, Any]]:
    return [
        {
            "iteration": i,
            "wall_s": 0.1 * i,
            "loss": offset + 1 / i,
            "test_nll": offset + 1 / i if i % 5 == 0 else None,
        }
        for i in range(1, 31)
    ]


def test_curve_labels_are_names_with_the_id_where_they_clash():
    rows = [RunRow(id=f"{c * 8}-rest", name=n) for c, n in zip("abcd", ["x", "y", "x", None], strict=True)]
    assert _labels(rows) == ["x aaaaaaaa", "y", "x cccccccc", "dddddddd"]


@pytest.mark.parametrize(
    ("run_ids", "status", "field"),
    [
        ("only-one", 422, "run_ids"),
        (str(uuid.uuid4()), 422, "run_ids"),
        (",".join(str(uuid.uuid4()) for _ in range(21)), 422, "run_ids"),
        ("{0},{0}".format(uuid.uuid4()), 422, "run_ids"),
        (f"{uuid.uuid4()},{uuid.uuid4()}", 404, "run_ids.0"),
    ],
)
def test_bad_curves_requests_are_problems(client, problem, run_ids, status, field):
    problem(client.get("/runs/compare/curves.png", params={"run_ids": run_ids}), status, field)
    problem(client.get("/runs/compare/curves.png"), 422, "run_ids")


def test_compare_needs_a_key_when_reads_are_protected(settings, sessions, queue, three_runs, problem):
    keyed = settings.model_copy(update={"api_keys": SecretStr("k-compare-1"), "protect_reads": True})
    ids = [r["id"] for r in three_runs[:2]]
    with TestClient(create_app(keyed, session_factory=sessions, dispatcher=queue)) as client:
        problem(client.post("/runs/compare", json={"run_ids": ids}), 401, "Authorization")
        problem(client.get("/runs/compare/curves.png", params={"run_ids": ",".join(ids)}), 401)
        headers = {"Authorization": "Bearer k-compare-1"}
        assert client.post("/runs/compare", json={"run_ids": ids}, headers=headers).status_code == 200
        curves = client.get("/runs/compare/curves.png", params={"run_ids": ",".join(ids)}, headers=headers)
        _png(curves)


# --- Idempotency-Key on POST /sweeps ---------------------------------------------------------------

SWEEP = {
    "base": {
        "model": "ffjord",
        "dataset": {"name": "normal_1d", "n_train": 300, "n_test": 50},
        "model_config": {"hidden_dims": [8]},
        "training": {"iterations": 4, "batch_size": 32},
    },
    "grid": {"solver.atol": [1e-2, 1e-4]},
}


def test_sweep_idempotency_key_replays_the_sweep(client, queue, problem):
    headers = {"Idempotency-Key": f"sweep-{uuid.uuid4()}"}
    first = client.post("/sweeps", json=SWEEP, headers=headers)
    assert first.status_code == 202 and "idempotent-replayed" not in first.headers
    queued = list(queue.queued)
    again = client.post("/sweeps", json=SWEEP, headers=headers)
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == f"/sweeps/{first.json()['id']}"
    assert [r["id"] for r in again.json()["runs"]] == [r["id"] for r in first.json()["runs"]]
    assert queue.queued == queued  # nothing published twice
    other = {**SWEEP, "name": "another body"}
    body = problem(client.post("/sweeps", json=other, headers=headers), 409, "Idempotency-Key")
    assert first.json()["id"] in body["detail"]
    fresh = client.post("/sweeps", json=SWEEP)  # no key: a new sweep every time
    assert fresh.json()["id"] != first.json()["id"]
    for sweep in (first, fresh):
        client.post(f"/sweeps/{sweep.json()['id']}/cancel")
    queue.queued.clear()


def test_sweep_idempotency_keys_are_scoped_per_api_key(settings, sessions, queue):
    keyed = settings.model_copy(update={"api_keys": SecretStr("k-sweep-1,k-sweep-2")})
    with TestClient(create_app(keyed, session_factory=sessions, dispatcher=queue)) as client:
        ids = []
        for key in ("k-sweep-1", "k-sweep-2", "k-sweep-1"):
            headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "shared-value"}
            response = client.post("/sweeps", json=SWEEP, headers=headers)
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
        assert ids[0] == ids[2] != ids[1]
        for sweep_id in set(ids):
            client.post(f"/sweeps/{sweep_id}/cancel", headers={"Authorization": "Bearer k-sweep-1"})
    queue.queued.clear()


def test_sweep_tags_reach_every_run(client, queue):
    body = {**SWEEP, "base": {**SWEEP["base"], "tags": ["swept"]}}
    sweep = client.post("/sweeps", json=body).json()
    assert [r["tags"] for r in sweep["runs"]] == [["swept"], ["swept"]]
    client.post(f"/sweeps/{sweep['id']}/cancel")
    queue.queued.clear()
