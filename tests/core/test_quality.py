"""Quality with a small CPU budget, measured against the true distributions (fixed seeds)."""

from __future__ import annotations

import math

import pytest
import torch

from service.ml.data import load_dataset
from service.ml.ode import SolverConfig
from service.ml.training import TrainConfig, fit, init_model

pytestmark = pytest.mark.slow

ENTROPY_8GAUSSIANS = 2.833


def _total_variation_1d(model, true_log_prob, lo: float, hi: float) -> tuple[float, float]:
    grid = torch.linspace(lo, hi, 4001).unsqueeze(1)
    with torch.no_grad():
        learned = model.log_prob(grid).exp()
    truth = true_log_prob(grid).exp()
    tv = 0.5 * torch.trapezoid((learned - truth).abs(), grid[:, 0]).item()
    return tv, torch.trapezoid(learned, grid[:, 0]).item()


def test_normal_1d_reaches_total_variation_below_005() -> None:
    data = load_dataset("normal_1d", seed=0)
    model = init_model("ffjord", {"hidden_dims": [64, 64]}, 1, SolverConfig(rtol=1e-3, atol=1e-3), 0)
    fit(model, data, TrainConfig(iterations=300, batch_size=256, lr=5e-3, seed=0))
    tv, mass = _total_variation_1d(model, data.true_log_prob, 0.0, 12.0)
    assert mass == pytest.approx(1.0, abs=0.02)
    assert tv <= 0.05


FAST = {"kinetic_weight": 0.01, "jacobian_weight": 0.01}


@pytest.mark.parametrize(
    ("extra", "solver", "iterations", "max_kl"),
    [
        (FAST, SolverConfig(method="rk4", step_size=0.5), 500, 0.1),  # the fast preset: RNODE + rk4
        ({}, None, 400, 0.35),  # the defaults: adaptive dopri5 at 1e-3 throughout
    ],
    ids=["fast-rk4-rnode", "default-dopri5"],
)
def test_8gaussians_test_nll_near_entropy(
    extra: dict, solver: SolverConfig | None, iterations: int, max_kl: float
) -> None:
    data = load_dataset("8gaussians", seed=0)
    assert data.entropy == pytest.approx(ENTROPY_8GAUSSIANS, abs=0.01)
    model = init_model("ffjord", {"hidden_dims": [64, 64], **extra}, 2, solver, 0)
    result = fit(model, data, TrainConfig(iterations=iterations, batch_size=256, lr=3e-3, seed=0))
    # Test NLL is computed by the adaptive serving solver, whatever method trained the model.
    assert result.metrics["test_nll"] <= ENTROPY_8GAUSSIANS + max_kl
    # The trained density is still normalised and its samples land on the data's support.
    axis = torch.linspace(-4.5, 4.5, 181)
    xx, yy = torch.meshgrid(axis, axis, indexing="ij")
    with torch.no_grad():
        density = model.log_prob(torch.stack([xx.flatten(), yy.flatten()], 1)).exp().view(181, 181)
        samples = model.sample(2000, torch.Generator().manual_seed(1))
    mass = torch.trapezoid(torch.trapezoid(density, axis, dim=1), axis).item()
    assert mass == pytest.approx(1.0, abs=0.02)
    true_log_density = data.true_log_prob(samples)
    assert true_log_density.mean().item() > -ENTROPY_8GAUSSIANS - 0.6
    assert not math.isnan(true_log_density.mean().item())
