"""Fixed-step FFJORD training checks its step against the adaptive (served) density and shrinks it."""

from __future__ import annotations

import pytest
import torch

from service.ml.models import build_model
from service.ml.models.ffjord import FFJORD
from service.ml.ode import SolverConfig

TIGHT_RTOL = 1e-10


def _model(step: float, method: str = "rk4", **cfg: object) -> FFJORD:
    """A float64 flow with strong dynamics over T = 2, trained with ``method`` (rk4) at ``step``."""
    torch.manual_seed(0)
    solver = SolverConfig(method=method, step_size=step, rtol=TIGHT_RTOL, atol=TIGHT_RTOL, max_num_steps=9999)
    config = {"hidden_dims": [16], "integration_time": 2.0, "step_check_interval": 1, **cfg}
    model = build_model("ffjord", config, 2, solver).double()
    with torch.no_grad():
        for layer in model.dynamics.net.layers:
            layer.linear.weight.normal_(0, 1.0)
    return model


def _batch() -> torch.Tensor:
    return torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _loss_stats(model: FFJORD, iteration: int = 1) -> dict[str, float]:
    return dict(model.training_loss(_batch(), torch.Generator().manual_seed(2), iteration).stats)


def test_the_gap_is_the_training_nll_minus_the_served_nll_and_a_large_gap_halves_the_step() -> None:
    model = _model(1.0, step_tolerance=1e-4)
    stats = _loss_stats(model)
    with torch.no_grad():
        served_nll = float(-model.log_prob(_batch()).mean())
    assert stats["step_gap"] == pytest.approx(stats["nll"] - served_nll, abs=1e-12)
    assert abs(stats["step_gap"]) > 8 * 1e-4  # so far off that rk4's order asks for less than 0.5
    assert stats["step_size"] == 1.0  # the step that was checked
    assert float(model.step_scale) == 0.5
    assert model.training_solver.step_size == 0.5
    assert model.solver.step_size == 1.0  # the run's configuration is unchanged


@pytest.mark.parametrize(
    ("method", "step", "over", "factor"),
    [
        ("rk4", 0.5, 1.01, (0.5 / 1.01) ** (1 / 4)),  # 0.84: five steps over T = 2, not eight
        ("rk4", 0.5, 3.0, (0.5 / 3.0) ** (1 / 4)),
        ("midpoint", 0.25, 1.01, (0.5 / 1.01) ** (1 / 2)),
        ("euler", 0.1, 1.01, 0.5),  # order 1 would ask for 0.495: at most halved
    ],
)
def test_a_gap_over_the_tolerance_shrinks_the_step_by_the_factor_the_methods_order_predicts(
    method: str, step: float, over: float, factor: float
) -> None:
    gap = abs(_loss_stats(_model(step, method=method, step_tolerance=10.0))["step_gap"])
    assert gap > 1e-6
    model = _model(step, method=method, step_tolerance=gap / over)  # same weights: the same gap
    _loss_stats(model)
    # the global error of an order-p method scales as h^p: aim the gap at half the tolerance
    assert float(model.step_scale) == pytest.approx(factor, rel=1e-6)
    assert model.training_solver.step_size == pytest.approx(step * factor, rel=1e-6)
    # and it does: the same batch through the shrunk step is within the tolerance again
    assert abs(_loss_stats(model, iteration=2)["step_gap"]) < gap / over


def test_the_gap_shrinks_at_rk4_order_as_the_step_halves() -> None:
    gaps = [abs(_loss_stats(_model(step, step_tolerance=10.0))["step_gap"]) for step in (0.25, 0.125)]
    assert gaps[1] > 0
    assert 8 < gaps[0] / gaps[1] < 32  # fourth order: halving the step divides the error by ~16


def test_no_check_within_tolerance_off_schedule_disabled_or_adaptive() -> None:
    within = _model(1.0, step_tolerance=10.0)
    assert "step_gap" in _loss_stats(within)
    assert float(within.step_scale) == 1.0
    off_schedule = _model(1.0, step_tolerance=1e-4, step_check_interval=3)
    assert "step_gap" not in _loss_stats(off_schedule, iteration=4)
    assert "step_gap" in _loss_stats(off_schedule, iteration=6)
    disabled = _model(1.0, step_tolerance=1e-4, step_check_interval=0)
    assert "step_gap" not in _loss_stats(disabled)
    adaptive = build_model("ffjord", {"step_check_interval": 1}, 2, SolverConfig())
    assert "step_gap" not in _loss_stats(adaptive.double())
    assert float(disabled.step_scale) == float(adaptive.step_scale) == 1.0


def test_hutchinson_training_is_checked_with_the_exact_trace() -> None:
    hutchinson = _model(0.5, step_tolerance=10.0, divergence="hutchinson")
    exact = _model(0.5, step_tolerance=10.0)
    exact.load_state_dict(hutchinson.state_dict())
    exact_stats = _loss_stats(exact)
    # Same weights and step: the recomputed exact-trace gap equals the exact-trained model's gap.
    assert _loss_stats(hutchinson)["step_gap"] == pytest.approx(exact_stats["step_gap"], abs=1e-9)


def test_the_halving_is_part_of_the_state_dict_and_old_state_dicts_still_load() -> None:
    model = _model(1.0, step_tolerance=1e-4)
    _loss_stats(model)
    _loss_stats(model, iteration=2)
    restored = _model(1.0)
    restored.load_state_dict(model.state_dict())
    assert restored.training_solver.step_size == 0.25
    old = {k: v for k, v in model.state_dict().items() if k != "step_scale"}
    fresh = _model(1.0)
    fresh.load_state_dict(old)  # strict: a checkpoint from before the step check
    assert fresh.training_solver.step_size == 1.0


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_a_checked_iteration_counts_its_training_solve_and_the_checks_solves(divergence: str) -> None:
    model = _model(0.5, step_tolerance=10.0, step_check_interval=2, divergence=divergence)
    _loss_stats(model, iteration=1)  # not checked: only the training solve
    training = (model.nfe.forward, model.nfe.backward)
    assert training == (16, 16)  # rk4: 4 evaluations x 4 steps over T = 2, differentiated once
    with torch.no_grad():
        model.log_prob(_batch())
    served = model.nfe.forward
    _loss_stats(model, iteration=2)
    # hutchinson re-solves the training discretisation with the exact trace before comparing
    extra = 16 if divergence == "hutchinson" else 0
    assert (model.nfe.forward, model.nfe.backward) == (16 + extra + served, 16)
