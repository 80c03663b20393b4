"""The closed-form exact trace (service.ml.trace) against brute force, in values and gradients."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from torch.func import functional_call

from service.ml.divergence import brute_force_divergence
from service.ml.models import build_model
from service.ml.models.ffjord import FFJORD
from service.ml.nets import ACTIVATIONS, ODENet, build_odenet
from service.ml.ode import SolverConfig

TIGHT = SolverConfig(rtol=1e-9, atol=1e-9, max_num_steps=20_000)
HIDDEN = [(7,), (5, 6)]


def _net(dim: int, hidden: tuple[int, ...], activation: str = "tanh", seed: int = 0, **kw: str) -> ODENet:
    """A float64 net with every parameter random (gates and time shifts included), far from identity."""
    torch.manual_seed(seed)
    net = build_odenet(dim, hidden, activation, **kw).double()  # type: ignore[arg-type]
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.7)
    return net


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("dim", [1, 2, 5, 64])
def test_closed_form_trace_equals_brute_force(dim: int, hidden: tuple[int, ...], activation: str) -> None:
    net = _net(dim, hidden, activation)
    assert net.trace_path == "closed_form"
    x = torch.randn(9, dim, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(0.4, dtype=torch.float64)
    brute = brute_force_divergence(net(t, x), x)
    f, div = net.forward_with_trace(t, x)
    torch.testing.assert_close(f, net(t, x), rtol=0, atol=1e-12)
    torch.testing.assert_close(div, brute, rtol=0, atol=1e-10)
    with torch.no_grad():
        lean_f, lean_div = net.lean().field_and_trace(t, x.detach())  # type: ignore[union-attr]
    torch.testing.assert_close(lean_f, f.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(lean_div, brute.detach(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("hidden", HIDDEN)
def test_closed_form_trace_gradients_match_brute_force(hidden: tuple[int, ...]) -> None:
    dim = 3
    net = _net(dim, hidden, "softplus", seed=1)
    names = [name for name, _ in net.named_parameters()]
    x = torch.randn(4, dim, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(0.6, dtype=torch.float64)
    weights = torch.rand(4, dtype=torch.float64)  # a loss that weighs points differently

    def closed(*params: torch.Tensor) -> torch.Tensor:
        f, div = functional_call(net, dict(zip(names, params, strict=True)), (t, x), {})
        return (div * weights).sum() + f.square().sum()

    def brute(*params: torch.Tensor) -> torch.Tensor:
        f = functional_call(net, dict(zip(names, params, strict=True)), (t, x))
        return (brute_force_divergence(f, x) * weights).sum() + f.square().sum()

    net.forward = net.forward_with_trace  # type: ignore[method-assign]  # functional_call runs forward
    params = tuple(p.detach().clone().requires_grad_(True) for p in net.parameters())
    got = torch.autograd.grad(closed(*params), (*params, x))
    del net.forward
    want = torch.autograd.grad(brute(*params), (*params, x))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-10)
    net.forward = net.forward_with_trace  # type: ignore[method-assign]
    assert torch.autograd.gradcheck(closed, params)


def _ffjord(dim: int, **cfg: object) -> FFJORD:
    torch.manual_seed(0)
    config = {"hidden_dims": [8, 8], **cfg}
    model = build_model("ffjord", config, dim, TIGHT).double()
    with torch.no_grad():
        for p in model.dynamics.net.parameters():
            p.normal_(0, 0.5)
    return model  # type: ignore[return-value]


@pytest.mark.parametrize(("dim", "hidden"), [(2, [8, 8]), (5, [6]), (64, [16, 16])])
def test_log_prob_and_training_gradients_unchanged_from_the_tangent_path(dim: int, hidden: list) -> None:
    # The kinetic penalty alone needs no Jacobian either: the four-entry state takes the closed form.
    model = _ffjord(dim, hidden_dims=hidden, kinetic_weight=0.1, jacobian_weight=0.0)
    # Densities at a tight tolerance; training on fixed rk4 steps, so both paths take the same steps.
    model.query_solver = TIGHT
    model.solver = SolverConfig(method="rk4", step_size=0.25)
    x = torch.randn(5, dim, dtype=torch.float64)
    net = model.dynamics.net
    results = {}
    for path in ("closed_form", "tangents"):
        net.trace_path = path  # type: ignore[assignment]
        with torch.no_grad():
            log_prob = model.log_prob(x)
        assert model.dynamics.divergence_path == path
        model.zero_grad()
        model.training_loss(x, torch.Generator().manual_seed(0), 1).loss.backward()
        assert model.dynamics.divergence_path == path
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results[path] = (log_prob, grads)
    torch.testing.assert_close(results["closed_form"][0], results["tangents"][0], rtol=0, atol=1e-6)
    for g, w in zip(*(results[p][1] for p in ("closed_form", "tangents")), strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    ("cfg", "path"),
    [
        ({}, "closed_form"),
        ({"hidden_dims": [6]}, "closed_form"),
        ({"hidden_dims": [6, 6, 6]}, "tangents"),
        ({"time_conditioning": "positional"}, "tangents"),
    ],
)
def test_the_closed_form_serves_one_or_two_hidden_layers_and_others_fall_back(cfg: dict, path: str) -> None:
    model = _ffjord(3, **cfg)
    assert model.dynamics.net.trace_path == path
    with torch.no_grad():
        model.log_prob(torch.randn(4, 3, dtype=torch.float64))
    assert model.dynamics.divergence_path == path
    with pytest.raises(ValueError, match="no closed-form trace") if path == "tangents" else nullcontext():
        model.dynamics.net.forward_with_trace(torch.tensor(0.0), torch.zeros(1, 3, dtype=torch.float64))


def test_rnode_training_keeps_the_full_jacobian_for_its_frobenius_norm() -> None:
    model = _ffjord(3)  # default RNODE weights: the Frobenius penalty needs df/dx, not only its trace
    model.training_loss(torch.randn(4, 3, dtype=torch.float64), torch.Generator().manual_seed(0), 1)
    assert model.dynamics.divergence_path == "tangents"
