"""Latent ODE routes: POST /predict, trajectories from GET /sample, series densities, series uploads.

The queried run is a tiny latent ODE trained through the core and recorded as a succeeded run (no
mocks); one test also trains on an uploaded series dataset through the worker code.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from service.db import repository as repo
from service.ml.checkpoint import load_checkpoint, save_checkpoint
from service.ml.ode import SolverConfig
from service.ml.series import load_series_dataset
from service.ml.series_io import series_from_json
from service.ml.training import TrainConfig, fit, init_model
from service.schemas.series import MAX_PREDICT_SAMPLES, MAX_PREDICT_TIMES, MAX_TRAJECTORY_VALUES
from service.storage.models_store import ModelStore

SMALL = {
    "latent_dim": 3,
    "encoder_hidden": 8,
    "dynamics_hidden": [8],
    "decoder_hidden": [8],
    "iwae_samples": 4,
}
SOLVER = SolverConfig(rtol=1e-3, atol=1e-4)
TINY_LATENT: dict[str, Any] = {
    "model": "latent_ode",
    "model_config": SMALL,
    "solver": {"rtol": 1e-3, "atol": 1e-4},
    "training": {"iterations": 3, "batch_size": 8},
}
OBSERVED = {"times": [0.0, 0.4, 0.9, 1.5], "values": [[0.2], [0.6], [None], [0.1]]}


def _wave(i: int, n: int = 8, shift: float = 0.0) -> dict[str, Any]:
    times = [0.3 * j + shift for j in range(n)]
    return {"times": times, "values": [[math.sin(t + i)] for t in times]}


@pytest.fixture(scope="module")
def latent_run(settings, sessions, client) -> Iterator[dict[str, Any]]:
    """A succeeded latent ODE run on ``periodic`` (1-D), trained for 5 steps through the core.

    Runs made here are deleted afterwards, so other modules' listings of the shared DB stay clean.
    """
    data = load_series_dataset("periodic", seed=0, n_series=30)
    model = init_model("latent_ode", SMALL, data.dim, SOLVER, seed=0)
    config = TrainConfig(iterations=5, batch_size=8, lr=1e-2)
    result = fit(model, data, config)
    run_id = str(uuid.uuid4())
    with sessions() as session:
        repo.create_run(
            session,
            id=run_id,
            name="latent",
            model="latent_ode",
            dataset={"name": "periodic"},
            dataset_name="periodic",
            model_config=model.config.model_dump(mode="json"),
            solver=SOLVER.model_dump(mode="json"),
            training=config.model_dump(mode="json"),
            total=config.iterations,
        )
        attempt = repo.start_attempt(session, run_id, device="cpu", worker="test", max_attempts=1)
        digest = save_checkpoint(
            ModelStore(settings.models_store).run_dir(run_id), model, train_config=config
        )
        repo.finish_succeeded(
            session, attempt, metrics=result.metrics, sha256=digest, iteration=5, wall_s=result.wall_s
        )
    yield {"id": run_id}
    assert client.delete(f"/runs/{run_id}").status_code == 204


def _core_model(settings, run_id: str):
    return load_checkpoint(ModelStore(settings.models_store).run_dir(run_id)).model


def test_predict_shapes_determinism_and_agreement_with_the_core(client, latent_run, settings):
    body = {"run_id": latent_run["id"], **OBSERVED, "predict_times": [0.2, 1.0, 2.0, 3.0], "seed": 4}
    got = client.post("/predict", json=body)
    assert got.status_code == 200, got.text
    out = got.json()
    assert out["run_id"] == latent_run["id"] and out["predict_times"] == body["predict_times"]
    assert out["n_samples"] == 20 and out["seed"] == 4
    assert [len(row) for row in out["mean"]] == [1] * 4 and [len(row) for row in out["std"]] == [1] * 4
    assert all(math.isfinite(v) for row in out["mean"] for v in row)
    assert all(v > 0 for row in out["std"] for v in row)
    assert client.post("/predict", json=body).json() == out
    assert client.post("/predict", json={**body, "seed": 5}).json()["mean"] != out["mean"]
    mean, std = _core_model(settings, latent_run["id"]).predict(
        OBSERVED["times"],
        [[0.2], [0.6], [0.0], [0.1]],
        [[1.0], [1.0], [0.0], [1.0]],
        body["predict_times"],
        n_samples=20,
        generator=torch.Generator().manual_seed(4),
    )
    assert out["mean"] == mean.tolist() and out["std"] == std.tolist()
    point = client.post("/predict", json={**body, "n_samples": 0}).json()
    assert len(point["mean"]) == 4


def test_predict_reports_validation_rmse_of_model_and_last_value(client, latent_run, settings):
    body = {"run_id": latent_run["id"], **OBSERVED, "predict_times": [2.0]}
    out = client.post("/predict", json=body).json()
    model = _core_model(settings, latent_run["id"])
    assert out["val_rmse"] == pytest.approx(float(model.val_rmse))
    assert out["val_rmse_last_value"] == pytest.approx(float(model.val_rmse_last_value))
    assert out["val_rmse"] > 0 and out["val_rmse_last_value"] > 0
    assert out["beats_last_value"] == (out["val_rmse"] < out["val_rmse_last_value"])


def test_checkpoint_without_validation_buffers_loads_as_unknown(settings, latent_run):
    model = _core_model(settings, latent_run["id"])
    assert math.isfinite(float(model.val_rmse))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("val_")}
    fresh = init_model("latent_ode", SMALL, 1, SOLVER, seed=0)
    fresh.load_state_dict(state)  # an older checkpoint: no validation buffers
    assert math.isnan(float(fresh.val_rmse)) and math.isnan(float(fresh.val_rmse_last_value))
    assert torch.equal(fresh.loc, model.loc) and torch.equal(fresh.time_scale, model.time_scale)


def test_sample_returns_prior_trajectories(client, latent_run):
    params = {"run_id": latent_run["id"], "n": 3, "seed": 2, "t": "0,0.5,1.0,2.5"}
    got = client.get("/sample", params=params)
    assert got.status_code == 200, got.text
    out = got.json()
    assert out["times"] == [0.0, 0.5, 1.0, 2.5]
    assert [[len(point) for point in path] for path in out["samples"]] == [[1] * 4] * 3
    assert client.get("/sample", params=params).json()["samples"] == out["samples"]
    assert client.get("/sample", params={**params, "seed": 3}).json()["samples"] != out["samples"]
    default = client.get("/sample", params={"run_id": latent_run["id"], "n": 2}).json()
    assert len(default["times"]) == 100 and len(default["samples"][0]) == 100


def test_density_of_series_is_the_core_bound(client, latent_run, settings):
    series = [_wave(0), _wave(1, n=5, shift=0.5)]
    got = client.post("/density", json={"run_id": latent_run["id"], "series": series})
    assert got.status_code == 200, got.text
    values = got.json()["log_density"]
    assert len(values) == 2 and all(math.isfinite(v) for v in values)
    with torch.no_grad():
        expected = _core_model(settings, latent_run["id"]).log_prob(series_from_json(series))
    assert values == pytest.approx(expected.tolist())


def test_run_resource_reports_latent_metrics(client, latent_run):
    metrics = client.get(f"/runs/{latent_run['id']}").json()["metrics"]
    for key in (
        "test_nll",
        "test_mse_interp",
        "test_mse_extrap",
        "test_rmse_extrap",
        "test_rmse_extrap_baseline",
    ):
        assert math.isfinite(metrics[key]), key


def test_series_upload_then_train_through_the_worker(client, queue):
    created = client.post("/datasets", json={"name": "waves", "series": [_wave(i) for i in range(10)]})
    assert created.status_code == 201, created.text
    dataset = created.json()
    assert {k: dataset[k] for k in ("name", "kind", "dim", "n")} == {
        "name": "waves",
        "kind": "series",
        "dim": 1,
        "n": 10,
    }
    run = client.post("/train", json={**TINY_LATENT, "dataset": {"id": dataset["id"]}})
    assert run.status_code == 202, run.text
    assert queue.run_pending() == ["succeeded"]
    done = client.get(f"/runs/{run.json()['id']}").json()
    metrics = done["metrics"]
    for key in ("train_loss", "train_elbo", "test_nll", "test_mse_interp", "test_mse_extrap"):
        assert math.isfinite(metrics[key]), key
    for key in ("test_rmse_extrap", "test_rmse_extrap_baseline", "nfe_forward_mean", "wall_clock_s"):
        assert math.isfinite(metrics[key]), key
    predicted = client.post(
        "/predict", json={"run_id": done["id"], **_wave(3, n=4), "predict_times": [0.1, 5.0]}
    )
    assert predicted.status_code == 200 and len(predicted.json()["mean"]) == 2
    assert client.delete(f"/runs/{done['id']}").status_code == 204


def test_series_csv_upload_keeps_missing_values(client):
    csv = b"series_id,time,value_1,value_2\n" + b"".join(
        f"{sid},{t * 0.5},{t},{'' if t == 1 else -t}\n".encode() for sid in "ab" for t in range(4)
    )
    created = client.post("/datasets", files={"file": ("s.csv", csv, "text/csv")}, data={"name": "long"})
    assert created.status_code == 201, created.text
    assert created.json()["kind"] == "series" and created.json()["dim"] == 2 and created.json()["n"] == 2


def test_builtin_series_datasets_are_listed(client):
    items = {d["name"]: d for d in client.get("/datasets").json()["items"] if d["builtin"]}
    assert items["spirals"]["kind"] == "series" and items["spirals"]["dim"] == 2
    assert items["periodic"]["kind"] == "series" and items["periodic"]["dim"] == 1
    names = client.get("/openapi.json").json()["components"]["schemas"]["DatasetName"]["enum"]
    assert {"spirals", "periodic"} <= set(names)


def test_queries_on_unfinished_latent_run_are_409(client, queue, problem):
    run = client.post("/train", json={**TINY_LATENT, "dataset": {"name": "periodic"}}).json()
    try:
        body = {"run_id": run["id"], **OBSERVED, "predict_times": [1.0]}
        problem(client.post("/predict", json=body), 409, "run_id")
        assert client.post("/predict", json=body).json()["run_status"] == "queued"
    finally:
        client.post(f"/runs/{run['id']}/cancel")
        queue.queued.remove(run["id"])
        client.delete(f"/runs/{run['id']}")


LATENT = "{latent}"
POINTS = "{points}"
PREDICT = {"run_id": LATENT, **OBSERVED, "predict_times": [1.0, 2.0]}

CASES = [
    # (id, method, path, request kwargs, status, field, text the detail must contain)
    ("predict unsorted times", "POST", "/predict",
     {"json": {**PREDICT, "times": [0, 1, 0.5, 2]}}, 422, "times", "strictly increasing"),
    ("predict duplicate times", "POST", "/predict",
     {"json": {**PREDICT, "times": [0, 1, 1, 2]}}, 422, "times", "strictly increasing"),
    ("predict ragged values", "POST", "/predict",
     {"json": {**PREDICT, "values": [[1], [1, 2], [1], [1]]}}, 422, "values", "1 entries"),
    ("predict values count", "POST", "/predict",
     {"json": {**PREDICT, "values": [[1], [2]]}}, 422, "values", "value rows"),
    ("predict nan", "POST", "/predict",
     {"content": b'{"run_id":"{latent}","times":[0,1],"values":[[NaN],[1]],"predict_times":[2]}',
      "headers": {"content-type": "application/json"}}, 422, "values", "NaN"),
    ("predict too many samples", "POST", "/predict",
     {"json": {**PREDICT, "n_samples": MAX_PREDICT_SAMPLES + 1}}, 422, "n_samples", ""),
    ("predict too many times", "POST", "/predict",
     {"json": {**PREDICT, "predict_times": [1.0] * (MAX_PREDICT_TIMES + 1)}}, 422, "predict_times", ""),
    ("predict no predict_times", "POST", "/predict",
     {"json": {**PREDICT, "predict_times": []}}, 422, "predict_times", ""),
    ("predict on a point run", "POST", "/predict",
     {"json": {**PREDICT, "run_id": POINTS}}, 422, "run_id", "latent_ode"),
    ("predict unknown run", "POST", "/predict",
     {"json": {**PREDICT, "run_id": str(uuid.uuid4())}}, 404, "run_id", ""),
    ("get density on latent run", "GET", "/density",
     {"params": {"run_id": LATENT, "x": "1"}}, 422, "run_id", "POST /density with series"),
    ("post points to latent run", "POST", "/density",
     {"json": {"run_id": LATENT, "points": [[1.0]]}}, 422, "run_id", ""),
    ("post series to point run", "POST", "/density",
     {"json": {"run_id": POINTS, "series": [_wave(0)]}}, 422, "run_id", "points"),
    ("density points and series", "POST", "/density",
     {"json": {"run_id": LATENT, "points": [[1.0]], "series": [_wave(0)]}}, 422, "body", "exactly one"),
    ("density unsorted series", "POST", "/density",
     {"json": {"run_id": LATENT, "series": [_wave(0), {"times": [0, 2, 1], "values": [[1], [2], [3]]}]}},
     422, "series[1].times", "sort"),
    ("density short series", "POST", "/density",
     {"json": {"run_id": LATENT, "series": [{"times": [0, 1], "values": [[1], [2]]}]}},
     422, "series[0]", "3 to"),
    ("density wrong dim", "POST", "/density",
     {"json": {"run_id": LATENT, "series": [{"times": [0, 1, 2], "values": [[1, 1]] * 3}]}},
     422, "values", "1 values per time"),
    ("sample bad t", "GET", "/sample", {"params": {"run_id": LATENT, "t": "0,a"}}, 422, "t", "t[1]"),
    ("sample inf t", "GET", "/sample", {"params": {"run_id": LATENT, "t": "0,inf"}}, 422, "t", ""),
    ("sample too many points", "GET", "/sample",
     {"params": {"run_id": LATENT, "n": MAX_TRAJECTORY_VALUES // 100 + 1, "t": ",".join(["1"] * 100)}},
     422, "n", "at most"),
    ("sample t on point run", "GET", "/sample", {"params": {"run_id": POINTS, "t": "0,1"}}, 422, "t", ""),
    ("upload unsorted series", "POST", "/datasets",
     {"json": {"name": "u", "series": [_wave(0), {"times": [0, 2, 1], "values": [[1], [2], [3]]}]}},
     422, "series[1].times", "sort"),
    ("upload ragged series", "POST", "/datasets",
     {"json": {"name": "u", "series": [{"times": [0, 1, 2], "values": [[1], [1, 2], [3]]}, _wave(0)]}},
     422, "series[0].values[1]", "same number"),
    ("upload values count", "POST", "/datasets",
     {"json": {"name": "u", "series": [{"times": [0, 1, 2], "values": [[1], [2]]}, _wave(0)]}},
     422, "series[0].values", "value rows"),
    ("upload nan series", "POST", "/datasets",
     {"content": b'{"name":"u","series":[{"times":[0,1,2],"values":[[1],[NaN],[2]]},'
                 b'{"times":[0,1,2],"values":[[1],[1],[2]]}]}',
      "headers": {"content-type": "application/json"}}, 422, "series[0].values[1]", "NaN"),
    ("upload short series", "POST", "/datasets",
     {"json": {"name": "u", "series": [{"times": [0, 1], "values": [[1], [2]]}, _wave(0)]}},
     422, "series[0]", "3 to"),
    ("upload one series", "POST", "/datasets", {"json": {"name": "u", "series": [_wave(0)]}},
     422, "series", ""),
    ("upload csv unsorted", "POST", "/datasets",
     {"files": {"file": ("s.csv", b"series_id,time,v\na,0,1\na,2,1\na,1,1\nb,0,1\nb,1,1\nb,2,1\n")}},
     422, "series_id=a.times", "sort"),
    ("upload csv not a number", "POST", "/datasets",
     {"files": {"file": ("s.csv", b"series_id,time,v\na,0,1\na,1,x\na,2,1\n")}},
     422, "csv line 3", "not a number"),
    ("upload csv one series", "POST", "/datasets",
     {"files": {"file": ("s.csv", b"series_id,time,v\na,0,1\na,1,2\na,2,1\n")}}, 422, "file", "at least 2"),
    ("ffjord on series", "POST", "/train",
     {"json": {"model": "ffjord", "dataset": {"name": "periodic"}}}, 422, "dataset", "ffjord"),
    ("latent on points", "POST", "/train",
     {"json": {"model": "latent_ode", "dataset": {"name": "moons"}}}, 422, "dataset", "latent_ode"),
]  # fmt: skip


def _fill(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str | bytes):
        for key, run_id in ids.items():
            value = (
                value.replace(key, run_id)
                if isinstance(value, str)
                else value.replace(key.encode(), run_id.encode())
            )
        return value
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, ids) for v in value]
    return value


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "field", "needle"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_bad_latent_input_is_a_problem_naming_the_field(
    client, latent_run, trained_run, problem, method, path, kwargs, status, field, needle
):
    ids = {LATENT: latent_run["id"], POINTS: trained_run["id"]}
    kwargs = {k: (v if k == "files" else _fill(v, ids)) for k, v in kwargs.items()}
    body = problem(client.request(method, path, **kwargs), status, field)
    assert needle in body["detail"] + " ".join(e["message"] for e in body["errors"]), body


def test_a_trained_latent_run_records_its_tight_re_score(client, queue):
    run = client.post("/train", json={**TINY_LATENT, "dataset": {"name": "periodic"}}).json()
    try:
        assert queue.run_pending() == ["succeeded"]
        metrics = client.get(f"/runs/{run['id']}").json()["metrics"]
        assert math.isfinite(metrics["test_nll_tight"]) and math.isfinite(metrics["test_nll_tight_gap"])
        assert "test series" in metrics["test_nll_tight_solver"]
        assert 1 <= metrics["test_nll_tight_points"] <= 100
    finally:
        client.delete(f"/runs/{run['id']}")
