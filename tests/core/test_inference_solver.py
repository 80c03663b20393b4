"""The lean inference dopri5 against exact answers and against torchdiffeq; FFJORD routing."""

from __future__ import annotations

import pytest
import torch
from ode_zoo import Linear, Zoo, zoo  # tests/core is on sys.path (rootless test dir)
from torch import Tensor, nn
from torchdiffeq import odeint

from service.ml.errors import SolverError
from service.ml.inference import solve_inference
from service.ml.models import build_model
from service.ml.ode import NfeCounter, SolverConfig

DTYPES = [torch.float32, torch.float64]


class WithTrace(nn.Module):
    """(dy/dt, ds/dt) = (A y, tr A) per row: the shape of FFJORD's (x, logdet) state."""

    def __init__(self, a: Tensor) -> None:
        super().__init__()
        self.a = a

    def forward(self, t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        y, s = state
        return y @ self.a.T, torch.full_like(s, float(self.a.trace()))


def _zoo(dtype: torch.dtype) -> Zoo:
    return zoo(torch.tensor([[1.0, 0.5], [-0.3, 2.0]], dtype=dtype))


def _tol(dtype: torch.dtype) -> float:
    return 1e-7 if dtype == torch.float64 else 1e-5


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reverse", [False, True])
def test_matches_exact_solution_and_torchdiffeq(dtype: torch.dtype, reverse: bool) -> None:
    tol = _tol(dtype)
    config = SolverConfig(rtol=tol, atol=tol, max_num_steps=20_000)
    t = torch.linspace(0, 2, 5, dtype=dtype)
    t = t.flip(0) if reverse else t
    for name, func, _, exact in _zoo(dtype):
        # Exact answers start from y0 at t = 0; going backwards start from the exact y(2).
        start = exact(t[0])
        out = solve_inference(func, start, t, config)
        expected = torch.stack([exact(ti) for ti in t])
        reference = odeint(func, start, t, rtol=tol, atol=tol, method="dopri5")
        assert out.shape == expected.shape and out.dtype == dtype
        err = (out - expected).abs().max().item()
        assert err < 300 * tol, f"{name}: error {err:.2e} vs exact"
        gap = (out - reference).abs().max().item()
        assert gap < 300 * tol, f"{name}: {gap:.2e} from torchdiffeq"


@pytest.mark.parametrize("dtype", DTYPES)
def test_error_shrinks_with_tolerance(dtype: torch.dtype) -> None:
    _, func, y0, exact = _zoo(dtype)[1]
    t = torch.tensor([0.0, 3.0], dtype=dtype)
    loose, tight = (SolverConfig(rtol=tol, atol=tol) for tol in (1e-3, 1e-5))
    errors = [(solve_inference(func, y0, t, c)[-1] - exact(t[-1])).abs().max().item() for c in (loose, tight)]
    assert errors[1] < errors[0] / 10


@pytest.mark.parametrize("dtype", DTYPES)
def test_tuple_state_matches_exact_solution(dtype: torch.dtype) -> None:
    tol = _tol(dtype)
    a = torch.tensor([[-0.5, 1.0], [-1.0, -0.2]], dtype=dtype)
    y0 = torch.tensor([[1.0, -0.5], [0.3, 0.8], [2.0, 0.0]], dtype=dtype)
    t = torch.tensor([0.0, 0.8, 1.5], dtype=dtype)
    counter = NfeCounter()
    config = SolverConfig(rtol=tol, atol=tol)
    y, s = solve_inference(WithTrace(a), (y0, torch.zeros(3, dtype=dtype)), t, config, counter)
    assert y.shape == (3, 3, 2) and s.shape == (3, 3)
    for i, ti in enumerate(t):
        torch.testing.assert_close(y[i], y0 @ torch.linalg.matrix_exp(a * ti).T, rtol=0, atol=300 * tol)
        torch.testing.assert_close(s[i], torch.full_like(s[i], float(a.trace() * ti)), rtol=0, atol=300 * tol)
    # FSAL: two evaluations to start (f0 and the initial-step probe), then six per step.
    assert counter.forward > 2 and (counter.forward - 2) % 6 == 0 and counter.backward == 0


def test_error_norm_is_the_max_over_tensors_of_their_rms() -> None:
    # A zero-derivative companion must not dilute the error (as one RMS over all elements would).
    func = Linear(torch.tensor([[0.0, -2.0], [2.0, 0.0]], dtype=torch.float64))
    y0 = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    t = torch.tensor([0.0, 2.0], dtype=torch.float64)
    config = SolverConfig(rtol=1e-6, atol=1e-6)
    alone, paired = NfeCounter(), NfeCounter()
    solve_inference(func, y0, t, config, alone)

    def with_idle(time: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        return func(time, state[0]), torch.zeros_like(state[1])

    solve_inference(with_idle, (y0, torch.zeros(1000, dtype=torch.float64)), t, config, paired)
    assert alone.forward == paired.forward


def test_step_budget_raises_solver_error_with_fix() -> None:
    func = Linear(torch.tensor([[0.0, -50.0], [50.0, 0.0]]))
    config = SolverConfig(rtol=1e-8, atol=1e-8, max_num_steps=5)
    counter = NfeCounter()
    with pytest.raises(SolverError) as info:
        solve_inference(func, torch.ones(1, 2), torch.tensor([0.0, 10.0]), config, counter)
    assert "step budget exhausted" in str(info.value) and "max_num_steps" in str(info.value)
    assert "loosen rtol/atol" in str(info.value) and info.value.kind == "solver_error"
    assert counter.forward == 2 + 6 * 5


def test_non_finite_state_raises_solver_error() -> None:
    class Blowup(nn.Module):
        def forward(self, t: Tensor, y: Tensor) -> Tensor:
            return torch.where(t > 0.5, torch.full_like(y, float("nan")), y)

    with pytest.raises(SolverError, match="non-finite"):
        solve_inference(Blowup(), torch.ones(1, 1), torch.tensor([0.0, 1.0]), SolverConfig())


def test_failed_solve_does_not_poison_the_next() -> None:
    func = Linear(torch.tensor([[-1.0]]))
    t = torch.tensor([0.0, 1.0])
    y0 = torch.ones(4, 1)
    before = solve_inference(func, y0, t, SolverConfig())
    with pytest.raises(SolverError):
        solve_inference(lambda _t, y: y * float("nan"), y0, t, SolverConfig())
    torch.testing.assert_close(solve_inference(func, y0, t, SolverConfig()), before, rtol=0, atol=0)


def test_rejects_fixed_step_methods_and_bad_times() -> None:
    func = Linear(torch.tensor([[-1.0]]))
    with pytest.raises(ValueError, match="fixed-step"):
        solve_inference(func, torch.ones(1, 1), torch.tensor([0.0, 1.0]), SolverConfig(method="rk4"))
    with pytest.raises(ValueError, match="monotone|increasing"):
        solve_inference(func, torch.ones(1, 1), torch.tensor([0.0, 1.0, 0.5]), SolverConfig())


def test_ffjord_serving_uses_the_inference_path_and_agrees_with_torchdiffeq() -> None:
    torch.manual_seed(0)
    solver = SolverConfig(rtol=1e-8, atol=1e-8, max_num_steps=10_000)
    model = build_model("ffjord", {"hidden_dims": [16, 16]}, 2, solver).double()
    with torch.no_grad():
        model.dynamics.net.layers[-1].linear.weight.normal_(0, 0.6)
    x = torch.randn(8, 2, dtype=torch.float64)
    reference = model.log_prob(x).detach()  # grad enabled: torchdiffeq
    reference_nfe = model.nfe.forward
    with torch.no_grad():
        served = model.log_prob(x)
        samples, sample_log_prob = model.sample_with_log_prob(16, torch.Generator().manual_seed(1))
        roundtrip = model.log_prob(samples)
        alone = model.sample(16, torch.Generator().manual_seed(1))
    torch.testing.assert_close(served, reference, rtol=0, atol=1e-6)
    torch.testing.assert_close(roundtrip, sample_log_prob, rtol=0, atol=1e-6)
    torch.testing.assert_close(alone, samples, rtol=0, atol=1e-6)
    assert model.nfe.forward > 0 and reference_nfe > 0


def test_ffjord_serving_maps_other_adaptive_methods_to_dopri5() -> None:
    torch.manual_seed(0)
    solver = SolverConfig(method="bosh3", rtol=1e-6, atol=1e-6)
    model = build_model("ffjord", {"hidden_dims": [8]}, 2, solver)
    with torch.no_grad():
        model.log_prob(torch.randn(4, 2))
    assert (model.nfe.forward - 2) % 6 == 0  # dopri5's FSAL step pattern
