"""service.plots: every figure decodes as a real image, for 1-D and 2-D FFJORD models."""

from __future__ import annotations

import io
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from service.ml.errors import ConfigError, DataError
from service.ml.models import build_model
from service.ml.ode import SolverConfig
from service.plots import (
    density_png,
    flow_gif,
    flow_png,
    forecast_png,
    loss_png,
    samples_png,
    sweep_png,
)

MIN_BYTES = 5_000  # a blank 6x4 in figure is ~2 KB; real content is well above this


def _gaussian_log_prob(x: torch.Tensor) -> torch.Tensor:
    return -0.5 * (x.square().sum(-1) + x.shape[-1] * math.log(2 * math.pi))


def _model_and_data(dim: int) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model("ffjord", {"hidden_dims": [8, 8]}, dim, SolverConfig(rtol=1e-3, atol=1e-3))
    data = torch.randn(400, dim, generator=torch.Generator().manual_seed(1)) * 1.5 + 0.5
    model.prepare(SimpleNamespace(train=data))
    return model.eval(), data


@pytest.fixture(scope="module", params=[1, 2], ids=["1d", "2d"])
def model_data(request: pytest.FixtureRequest) -> tuple[torch.nn.Module, torch.Tensor]:
    return _model_and_data(request.param)


def _image(data: bytes, fmt: str = "PNG") -> Image.Image:
    assert len(data) > MIN_BYTES
    image = Image.open(io.BytesIO(data))
    image.load()  # decodes every byte: a truncated file fails here
    assert image.format == fmt
    assert image.width >= 300 and image.height >= 200
    return image


def test_density_png(model_data: tuple[torch.nn.Module, torch.Tensor]) -> None:
    model, data = model_data
    plain = _image(density_png(model, data))
    with_truth = _image(density_png(model, data, _gaussian_log_prob))
    if model.dim == 2:  # the true density adds a third panel
        assert with_truth.width > plain.width


def test_density_png_above_two_dims_shows_samples() -> None:
    model, data = _model_and_data(3)
    _image(density_png(model, data))


def test_samples_png_is_seeded(model_data: tuple[torch.nn.Module, torch.Tensor]) -> None:
    model, data = model_data
    first = samples_png(model, data, n=300, seed=0)
    _image(first)
    assert samples_png(model, data, n=300, seed=0) == first
    assert samples_png(model, data, n=300, seed=1) != first


def test_flow_png(model_data: tuple[torch.nn.Module, torch.Tensor]) -> None:
    model, data = model_data
    _image(flow_png(model, data))


def test_flow_gif_has_frames(model_data: tuple[torch.nn.Module, torch.Tensor]) -> None:
    model, data = model_data
    image = _image(flow_gif(model, data, frames=5), fmt="GIF")
    assert image.n_frames == 5


def test_point_plots_reject_wrong_inputs() -> None:
    model, _ = _model_and_data(2)
    with pytest.raises(DataError, match=r"shape \(N, 2\)"):
        density_png(model, torch.zeros(10, 3))
    series_model = SimpleNamespace(name="latent_ode", data_kind="series", dim=2)
    with pytest.raises(ConfigError) as info:
        samples_png(series_model, torch.zeros(10, 2))  # type: ignore[arg-type]
    assert info.value.fix


def _history(n: int = 40) -> list[dict[str, float]]:
    return [
        {
            "iteration": i,
            "wall_s": 0.05 * i,
            "loss": 3.0 / i,
            "nfe_forward": 20 + i % 3,
            "nfe_backward": 26,
            **({"test_nll": 2.0} if i % 10 == 0 else {}),
        }
        for i in range(1, n + 1)
    ]


def test_loss_png_has_four_panels() -> None:
    image = _image(loss_png(_history()))
    assert image.width > image.height  # 2 x 2 panels in an 8 x 5.5 in figure
    _image(loss_png([]))  # a queued run still gets a figure


def _rows() -> list[dict]:
    rows = []
    for atol in (1e-1, 1e-4, 1e-7):
        for lr in (1e-3, 1e-2):
            failed = atol == 1e-7 and lr == 1e-2
            rows.append(
                {
                    "solver.atol": atol,
                    "training.lr": lr,
                    "wall_clock_s": None if failed else 1.0 + math.log10(1 / atol),
                    "nfe_forward_mean": None if failed else 20.5,
                    "nfe_backward_mean": None,
                    "train_loss": None,
                    "test_nll": None if failed else 2.0 + atol,
                    "test_nll_tight": None if failed else 2.0 + 2 * atol,
                    "test_nll_tight_gap": None if failed else atol,
                    "kl_to_truth": None,
                    "status": "failed" if failed else "succeeded",
                }
            )
    return rows


def test_sweep_png_numeric_and_categorical() -> None:
    _image(sweep_png(_rows(), "solver.atol"))
    _image(sweep_png(_rows(), "training.lr", group_keys=["solver.atol"]))
    methods = [
        {"solver.method": m, "wall_clock_s": w, "test_nll": 2.0, "status": "succeeded"}
        for m, w in (("dopri5", 3.0), ("rk4", 1.0), ("euler", 0.5))
    ]
    _image(sweep_png(methods, "solver.method"))


def test_sweep_png_draws_the_tight_nll() -> None:
    rows = _rows()
    assert sweep_png(rows, "solver.atol") == sweep_png(rows, "solver.atol")  # deterministic
    untight = [{**r, "test_nll_tight": None} for r in rows]
    assert sweep_png(rows, "solver.atol") != sweep_png(untight, "solver.atol")
    moved = [{**r, "test_nll_tight": 1.0} for r in rows]
    assert sweep_png(rows, "solver.atol") != sweep_png(moved, "solver.atol")


def test_forecast_png() -> None:
    times = np.linspace(0, 5, 20)
    values = np.stack([np.sin(times), np.cos(times)], axis=1)
    values[3, 1] = np.nan  # an unobserved value is simply not drawn
    grid = np.linspace(0, 8, 60)
    mean = np.stack([np.sin(grid), np.cos(grid)], axis=1)
    std = np.full_like(mean, 0.1)
    two = _image(forecast_png(times, values, grid, mean, std))
    one = _image(forecast_png(times.tolist(), values[:, 0], grid, mean[:, 0], std[:, 0]))
    assert two.height > one.height  # one panel per channel
    with pytest.raises(DataError, match="channels"):
        forecast_png(times, values[:, :1], grid, mean, std)
    with pytest.raises(DataError, match="shape"):
        forecast_png(times, values, grid[:-1], mean, std)
