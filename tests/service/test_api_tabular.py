"""Real tables through the API: flow matching on wine (13-D), density, samples, plots, bad inputs."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from service.ml.tabular import load_tabular

WINE_FM: dict[str, Any] = {
    "model": "ffjord",
    "dataset": {"name": "wine"},
    "model_config": {"hidden_dims": [32, 32]},
    "solver": {"method": "dopri5", "rtol": 1e-3, "atol": 1e-3},
    "training": {"iterations": 40, "batch_size": 64, "objective": "flow_matching", "coupling": "ot"},
}


@pytest.fixture(scope="module")
def wine_run(client, queue) -> Iterator[dict[str, Any]]:
    response = client.post("/train", json=WINE_FM)
    assert response.status_code == 202, response.text
    assert queue.run_pending() == ["succeeded"]
    run = client.get(response.headers["location"]).json()
    yield run
    assert client.delete(f"/runs/{run['id']}").status_code == 204  # other modules count runs


def test_builtin_tables_are_listed_with_their_dimension(client):
    items = {d["name"]: d for d in client.get("/datasets").json()["items"] if d["builtin"]}
    assert {items[n]["dim"] for n in ("digits", "wine", "diabetes")} == {64, 13, 11}
    assert all(items[n]["kind"] == "points" for n in ("digits", "wine", "diabetes"))


def test_flow_matching_run_on_wine_succeeds_and_records_its_objective(wine_run):
    assert wine_run["status"] == "succeeded"
    assert wine_run["training"]["objective"] == "flow_matching" and wine_run["training"]["coupling"] == "ot"
    assert wine_run["training"]["lr"] == 1e-2  # flow matching's own default rate, recorded
    assert wine_run["training"]["ema_decay"] is None  # null: the objective's default (0.999)
    assert 0 < wine_run["metrics"]["test_nll"] < 60  # a 13-D standard normal scores 18.4 on its own


def test_density_answers_13_dimensional_points(client, wine_run):
    test = load_tabular("wine").test[:5].tolist()
    post = client.post("/density", json={"run_id": wine_run["id"], "points": test})
    assert post.status_code == 200, post.text
    values = post.json()["log_density"]
    assert len(values) == 5 and all(isinstance(v, float) for v in values)
    query = [("run_id", wine_run["id"])] + [("x", ",".join(map(str, p))) for p in test]
    got = client.get("/density", params=query)
    assert got.status_code == 200 and got.json()["log_density"] == pytest.approx(values, abs=1e-5)


def test_density_with_the_wrong_dimension_is_a_422_naming_it(client, wine_run, problem):
    body = problem(client.post("/density", json={"run_id": wine_run["id"], "points": [[0.0, 1.0]]}), 422)
    assert "13" in body["detail"] + str(body["errors"])


def test_samples_have_13_columns(client, wine_run):
    response = client.get("/sample", params={"run_id": wine_run["id"], "n": 7, "seed": 1})
    assert response.status_code == 200, response.text
    samples = response.json()["samples"]
    assert len(samples) == 7 and all(len(s) == 13 for s in samples)


@pytest.mark.parametrize("kind", ["density.png", "samples.png", "flow.png", "flow.gif", "loss.png"])
def test_plots_of_a_13_dimensional_run_are_images_or_a_clear_4xx(client, wine_run, kind):
    response = client.get(f"/runs/{wine_run['id']}/plots/{kind}")
    if response.status_code == 200:
        Image.open(io.BytesIO(response.content)).load()
    else:
        assert 400 <= response.status_code < 500, response.text
        assert response.headers["content-type"].startswith("application/problem+json")


def test_unknown_objective_is_a_422_listing_the_choices(client, tiny_run, problem):
    tiny_run["training"]["objective"] = "score_matching"
    body = problem(client.post("/train", json=tiny_run), 422, "training.objective")
    assert "flow_matching" in str(body["errors"])


def test_coupling_without_flow_matching_is_a_422_naming_the_fix(client, tiny_run, problem):
    tiny_run["training"]["coupling"] = "ot"
    body = problem(client.post("/train", json=tiny_run), 422)
    assert "set training.objective to flow_matching or drop training.coupling" in str(body)


def test_flow_matching_on_a_latent_ode_is_a_422(client, problem):
    body = {
        "model": "latent_ode",
        "dataset": {"name": "spirals"},
        "training": {"iterations": 2, "objective": "flow_matching"},
    }
    found = problem(client.post("/train", json=body), 422, "training.objective")
    assert "likelihood" in str(found)
