"""Plot routes: every figure of 1-D, 2-D and latent ODE runs decodes; wrong status or kind is a problem."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

PNG_KINDS = ["density", "samples", "loss", "flow"]
ONE_D: dict[str, Any] = {
    "model": "ffjord",
    "dataset": {"name": "beta_2", "n_train": 300, "n_test": 50},
    "model_config": {"hidden_dims": [8], "time_conditioning": "positional"},
    "solver": {"method": "dopri5", "rtol": 1e-3, "atol": 1e-3},
    "training": {"iterations": 4, "batch_size": 32},
}
LATENT: dict[str, Any] = {
    "model": "latent_ode",
    "dataset": {"name": "periodic"},
    "model_config": {
        "latent_dim": 2,
        "encoder_hidden": 8,
        "dynamics_hidden": [8],
        "decoder_hidden": [8],
        "iwae_samples": 2,
    },
    "solver": {"method": "dopri5", "rtol": 1e-2, "atol": 1e-2},
    "training": {"iterations": 2, "batch_size": 8},
}


def _train(client, queue, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/train", json=body)
    assert response.status_code == 202, response.text
    assert queue.run_pending() == ["succeeded"]
    return response.json()


@pytest.fixture(scope="module")
def one_d_run(client, queue) -> Iterator[dict[str, Any]]:
    run = _train(client, queue, ONE_D)
    yield run
    assert client.delete(f"/runs/{run['id']}").status_code == 204  # other modules count runs


@pytest.fixture(scope="module")
def latent_run(client, queue) -> Iterator[dict[str, Any]]:
    run = _train(client, queue, LATENT)
    yield run
    assert client.delete(f"/runs/{run['id']}").status_code == 204


def _image(response, media: str = "image/png") -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == media
    image = Image.open(io.BytesIO(response.content))
    image.load()
    assert image.size[0] >= 300 and image.size[1] >= 200, image.size
    low, high = image.convert("L").getextrema()
    assert high - low > 100  # not a blank canvas
    return image


@pytest.mark.parametrize("kind", PNG_KINDS)
@pytest.mark.parametrize("which", ["trained_run", "one_d_run"])
def test_every_png_plot_of_a_point_run_decodes(client, request, which, kind):
    run = request.getfixturevalue(which)
    _image(client.get(f"/runs/{run['id']}/plots/{kind}.png"))


@pytest.mark.parametrize("which", ["trained_run", "one_d_run"])
def test_flow_gif_decodes_with_several_frames(client, request, which):
    run = request.getfixturevalue(which)
    image = _image(client.get(f"/runs/{run['id']}/plots/flow.gif"), "image/gif")
    assert image.format == "GIF" and getattr(image, "n_frames", 1) > 1


def test_plots_are_cached_under_the_run_directory(client, settings, trained_run):
    first = client.get(f"/runs/{trained_run['id']}/plots/density.png").content
    plots = settings.models_store / "runs" / trained_run["id"] / "plots"
    cached = [p for p in plots.iterdir() if p.name.startswith("density-")]
    assert len(cached) == 1 and cached[0].read_bytes() == first
    assert client.get(f"/runs/{trained_run['id']}/plots/density.png").content == first


def test_latent_ode_forecast_and_loss_but_no_density(client, latent_run, problem):
    _image(client.get(f"/runs/{latent_run['id']}/plots/forecast.png"))
    _image(client.get(f"/runs/{latent_run['id']}/plots/loss.png"))
    for kind in ("density.png", "samples.png", "flow.gif"):
        problem(client.get(f"/runs/{latent_run['id']}/plots/{kind}"), 422, "kind")


def test_forecast_of_a_flow_is_422_naming_kind(client, trained_run, problem):
    body = problem(client.get(f"/runs/{trained_run['id']}/plots/forecast.png"), 422, "kind")
    assert "density" in body["errors"][0]["message"]


def test_not_succeeded_run_is_409_with_its_status(client, queue, tiny_run, problem):
    run = client.post("/train", json=tiny_run).json()
    for kind in ("density.png", "samples.png", "flow.png", "flow.gif", "loss.png"):
        body = problem(client.get(f"/runs/{run['id']}/plots/{kind}"), 409, "run_id")
        assert body["run_status"] == "queued"
    client.post(f"/runs/{run['id']}/cancel")
    assert queue.run_pending() == [None]
    body = problem(client.get(f"/runs/{run['id']}/plots/density.png"), 409, "run_id")
    assert body["run_status"] == "canceled"


def test_unknown_kind_or_run(client, trained_run, problem):
    problem(client.get(f"/runs/{trained_run['id']}/plots/heatmap.png"), 422, "kind")
    missing = "00000000-0000-4000-8000-000000000000"
    problem(client.get(f"/runs/{missing}/plots/density.png"), 404, "run_id")
