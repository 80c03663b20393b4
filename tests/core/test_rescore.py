"""The tight re-score (``test_nll_tight``) against a brute-force change of variables."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from service.ml.models import build_model
from service.ml.models.ffjord import FFJORD
from service.ml.ode import SolverConfig
from service.ml.rescore import TIGHT_SOLVER, tight_test_nll
from service.ml.series import load_series_dataset

LOOSE = SolverConfig(rtol=1e-1, atol=1e-1)
REFERENCE = SolverConfig(method="dopri8", rtol=1e-11, atol=1e-11, max_num_steps=100_000)


def _model(dim: int, solver: SolverConfig, seed: int = 3) -> FFJORD:
    """A float32 model (as runs train) whose flow is far from the identity: every net parameter
    tripled, T = 2, a non-trivial standardising map."""
    torch.manual_seed(seed)
    config = {"hidden_dims": [16, 16], "integration_time": 2.0, "max_integration_time": 2.0}
    model = build_model("ffjord", config, dim, solver)
    with torch.no_grad():
        for param in model.dynamics.net.parameters():
            param.mul_(3.0)
        model.loc.normal_(0, 0.5)
        model.scale.uniform_(0.6, 1.6)
    assert isinstance(model, FFJORD)
    return model


def _brute_force_nll(model: FFJORD, x: torch.Tensor) -> float:
    """Mean NLL by ``log N(T(x)) + log|det dT/dx|`` with the Jacobian of the whole map by autograd,
    through torchdiffeq's dopri8 at 1e-11 in float64 (no trace integral, no lean solver)."""
    reference = copy.deepcopy(model).double()
    reference.solver = REFERENCE
    t = reference._times(False, x.double())

    def to_base(point: torch.Tensor) -> torch.Tensor:
        return reference._standardise(reference.trajectory(point.unsqueeze(0), t)[-1, 0])

    total = 0.0
    for point in x.double():
        z = to_base(point)
        _, log_det = torch.linalg.slogdet(torch.autograd.functional.jacobian(to_base, point))
        log_normal = -0.5 * (z.square().sum() + z.numel() * math.log(2 * math.pi))
        total -= float((log_normal + log_det).detach())
    return total / x.shape[0]


@pytest.mark.parametrize("dim", [1, 2])
def test_tight_nll_matches_brute_force_and_exposes_a_loose_solver(dim: int) -> None:
    model = _model(dim, LOOSE)
    x = torch.randn(16, dim, generator=torch.Generator().manual_seed(dim))
    metrics = tight_test_nll(model, x, points=12)
    assert metrics["test_nll_tight_points"] == 12 and metrics["test_nll_tight_s"] > 0
    assert "dopri5 rtol=1e-08 atol=1e-08" in metrics["test_nll_tight_solver"]
    assert "test_nll_tight_error" not in metrics
    assert metrics["test_nll_tight"] == pytest.approx(_brute_force_nll(model, x[:12]), abs=1e-6)
    assert tight_test_nll(model, x)["test_nll_tight"] != pytest.approx(metrics["test_nll_tight"])
    # The loose own solver is off by a measurable amount, and the gap says by how much.
    with torch.no_grad():
        own = -float(model.log_prob(x[:12]).double().mean())
    assert abs(own - metrics["test_nll_tight"]) > 1e-4
    assert metrics["test_nll_tight_gap"] == pytest.approx(metrics["test_nll_tight"] - own, abs=1e-6)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # left untouched


def test_a_tight_run_scores_the_same_at_its_own_solver() -> None:
    model = _model(2, SolverConfig(rtol=1e-7, atol=1e-7))
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    metrics = tight_test_nll(model, x)
    assert metrics["test_nll_tight_points"] == 50
    assert abs(metrics["test_nll_tight_gap"]) < 1e-4


def test_budget_or_solver_failures_give_null_and_a_reason() -> None:
    model = _model(2, LOOSE)
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(0))
    starved = tight_test_nll(model, x, solver=TIGHT_SOLVER.model_copy(update={"max_num_steps": 2}))
    assert starved["test_nll_tight"] is None and starved["test_nll_tight_gap"] is None
    assert "step budget exhausted" in starved["test_nll_tight_error"]
    late = tight_test_nll(model, x, max_seconds=1e-9)
    assert late["test_nll_tight"] is None and "budget of 1e-09 s" in late["test_nll_tight_error"]
    assert model.training  # the mode is restored


def test_series_models_are_rescored_on_their_first_series() -> None:
    """A latent ODE's IWAE bound (fixed draws) re-scored at 1e-8: it differs from a loose own solve,
    agrees with an own solve that is already that tight, and leaves the model as it was."""
    data = load_series_dataset("spirals", seed=0)
    small = {"latent_dim": 4, "encoder_hidden": 8, "dynamics_hidden": [16], "decoder_hidden": [8]}
    loose = build_model("latent_ode", small, data.dim, SolverConfig(method="dopri5", rtol=1e-2, atol=1e-2))
    out = tight_test_nll(loose, data.test, points=12)
    assert out["test_nll_tight_points"] == 12 and "first 12 test series" in out["test_nll_tight_solver"]
    assert "exact trace" not in out["test_nll_tight_solver"]
    assert math.isfinite(out["test_nll_tight"]) and abs(out["test_nll_tight_gap"]) > 1e-6
    assert next(loose.parameters()).dtype == torch.float32 and loose.query_solver is None

    tight = copy.deepcopy(loose).double()
    tight.solver = TIGHT_SOLVER
    own = tight_test_nll(tight, data.test, points=12)
    assert abs(own["test_nll_tight_gap"]) < 1e-6
    assert own["test_nll_tight"] == pytest.approx(out["test_nll_tight"], rel=1e-9)
