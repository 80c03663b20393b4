"""ODE zoo with exact solutions: accuracy per solver, gradients, budgets, NFE counting."""

from __future__ import annotations

import math

import pytest
import torch
from ode_zoo import Linear, Zoo, zoo  # tests/core is on sys.path (rootless test dir)
from torch import nn

from service.ml.errors import SolverError
from service.ml.ode import SOLVERS, NfeCounter, SolverConfig, solve

ADAPTIVE = [m for m, info in SOLVERS.items() if info.adaptive]
FIXED = [m for m, info in SOLVERS.items() if not info.adaptive]


def _zoo(dtype: torch.dtype) -> Zoo:
    return zoo(torch.tensor([[1.0, 0.5]], dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ADAPTIVE)
def test_adaptive_solvers_match_exact_solution(method: str, dtype: torch.dtype) -> None:
    tol = 1e-6 if dtype == torch.float64 else 1e-5
    config = SolverConfig(method=method, rtol=tol, atol=tol, max_num_steps=20_000)
    # dopri5 has a 4th-order dense output; the others are checked at their step endpoints.
    t = torch.linspace(0, 2, 5, dtype=dtype) if method == "dopri5" else torch.tensor([0.0, 2.0])
    t = t.to(dtype)
    # Global error is a multiple of the local tolerance; low-order methods accumulate more.
    factor = 300 if SOLVERS[method].order >= 3 else 3000
    for name, func, y0, exact in _zoo(dtype):
        out = solve(func, y0, t, config)
        expected = torch.stack([exact(ti) for ti in t])
        err = (out - expected).abs().max().item()
        assert err < factor * tol, f"{method} on {name}: error {err:.2e}"


@pytest.mark.parametrize("method", FIXED)
def test_fixed_step_solvers_converge_at_their_order(method: str) -> None:
    func, y0, exact = _zoo(torch.float64)[1][1:]
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    errors = []
    for h in (0.1, 0.05):
        out = solve(func, y0, t, SolverConfig(method=method, step_size=h))
        errors.append((out[-1] - exact(t[-1])).abs().max().item())
    observed_order = math.log2(errors[0] / errors[1])
    assert observed_order == pytest.approx(SOLVERS[method].order, abs=0.35)


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_adjoint_and_backprop_gradients_agree(method: str) -> None:
    a0 = torch.tensor([[-0.5, 1.0], [-1.0, -0.2]], dtype=torch.float64)
    y0 = torch.tensor([[1.0, -0.5], [0.3, 0.8]], dtype=torch.float64)
    t = torch.tensor([0.0, 0.7, 1.5], dtype=torch.float64)
    grads = []
    for adjoint in (False, True):
        func = Linear(a0.clone())
        config = SolverConfig(
            method=method,
            rtol=1e-9,
            atol=1e-9,
            adjoint=adjoint,
            step_size=0.01,
            max_num_steps=10_000,
        )
        out = solve(func, y0, t, config)
        (out[1:].square().sum()).backward()
        grads.append(func.a.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_gradient_matches_analytic_derivative() -> None:
    # y(T) = y0 exp(k T) for dy/dt = k y; d y(T)/dk = T y0 exp(k T).
    func = Linear(torch.tensor([[-0.8]], dtype=torch.float64))
    y0 = torch.tensor([[2.0]], dtype=torch.float64)
    t = torch.tensor([0.0, 1.5], dtype=torch.float64)
    out = solve(func, y0, t, SolverConfig(rtol=1e-10, atol=1e-10, max_num_steps=10_000))
    out[-1].sum().backward()
    expected = 1.5 * 2.0 * math.exp(-0.8 * 1.5)
    assert func.a.grad.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("adjoint", [False, True])
def test_gradcheck_float64(adjoint: bool) -> None:
    func = Linear(torch.tensor([[-0.3, 0.4], [-0.4, -0.1]], dtype=torch.float64))
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    # Fixed steps make the map smooth in y0, as gradcheck's finite differences require.
    config = SolverConfig(method="rk4", step_size=0.1, adjoint=adjoint)

    def flow(y0: torch.Tensor) -> torch.Tensor:
        return solve(func, y0, t, config)[-1]

    y0 = torch.tensor([[0.2, -1.0]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(flow, (y0,))


def test_step_budget_raises_solver_error_with_fix() -> None:
    func = Linear(torch.tensor([[0.0, -50.0], [50.0, 0.0]]))
    config = SolverConfig(rtol=1e-8, atol=1e-8, max_num_steps=5)
    with pytest.raises(SolverError) as info:
        solve(func, torch.ones(1, 2), torch.tensor([0.0, 10.0]), config)
    assert "max_num_steps" in str(info.value) and "loosen rtol/atol" in str(info.value)
    assert info.value.kind == "solver_error"


def test_fixed_step_budget_is_checked_before_solving() -> None:
    config = SolverConfig(method="euler", step_size=0.01, max_num_steps=10)
    with pytest.raises(SolverError, match="exceed max_num_steps"):
        solve(Linear(torch.eye(1)), torch.ones(1, 1), torch.tensor([0.0, 1.0]), config)


def test_non_finite_state_raises_solver_error() -> None:
    class Blowup(nn.Module):
        def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return y * y * 1e3

    with pytest.raises(SolverError):
        solve(
            Blowup(),
            torch.ones(1, 1),
            torch.tensor([0.0, 10.0]),
            SolverConfig(method="euler", step_size=0.5),
        )


def test_nfe_counted_separately_for_adjoint_backward() -> None:
    func = Linear(torch.tensor([[-1.0]]))
    counter = NfeCounter()
    out = solve(func, torch.ones(1, 1), torch.tensor([0.0, 1.0]), SolverConfig(adjoint=True), counter)
    forward_only = counter.forward
    assert forward_only > 0 and counter.backward == 0
    out[-1].sum().backward()
    assert counter.forward == forward_only and counter.backward > 0


@pytest.mark.parametrize(
    "bad",
    [
        {"rtol": 0.0},
        {"atol": -1e-3},
        {"rtol": float("nan")},
        {"method": "nope"},
        {"max_num_steps": 0},
        {"unknown": 1},
    ],
)
def test_solver_config_rejects_bad_values(bad: dict) -> None:
    with pytest.raises(ValueError):
        SolverConfig(**bad)
