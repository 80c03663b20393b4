"""FFJORD against exact answers: brute-force change of variables, trace estimators, normalisation."""

from __future__ import annotations

import json
import math

import pytest
import torch

from service.ml import checkpoint
from service.ml.checkpoint import load_checkpoint, save_checkpoint
from service.ml.divergence import brute_force_divergence, hutchinson_divergence, sample_noise
from service.ml.errors import ConfigError
from service.ml.models import build_model, stored_model_config
from service.ml.models.ffjord import FFJORD, FFJORDConfig
from service.ml.ode import SolverConfig
from service.ml.training import init_model

TIGHT = SolverConfig(rtol=1e-9, atol=1e-9, max_num_steps=20_000)
CONDITIONINGS = ["concatsquash", "positional"]


def _model(dim: int, conditioning: str = "concatsquash", seed: int = 0, **cfg: object) -> FFJORD:
    """A float64 model with a deliberately non-trivial (non-identity) flow."""
    torch.manual_seed(seed)
    config = {"hidden_dims": [16, 16], "time_conditioning": conditioning, **cfg}
    model = build_model("ffjord", config, dim, TIGHT).double()
    last = model.dynamics.net.layers[-1].linear
    with torch.no_grad():
        last.weight.normal_(0, 0.6)
        last.bias.normal_(0, 0.3)
        model.loc.normal_(0, 0.5)  # a non-trivial standardising map, as after prepare()
        model.scale.uniform_(0.6, 1.6)
    return model


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_log_prob_matches_brute_force_change_of_variables(conditioning: str) -> None:
    model = _model(2, conditioning)
    x = torch.randn(4, 2, dtype=torch.float64)
    t = model._times(False, x)

    def to_base(point: torch.Tensor) -> torch.Tensor:
        """The whole map data -> base noise, standardisation included."""
        return model._standardise(model.trajectory(point.unsqueeze(0), t)[-1, 0])

    log_prob = model.log_prob(x)
    for i in range(x.shape[0]):
        z = to_base(x[i])
        _, log_det = torch.linalg.slogdet(torch.autograd.functional.jacobian(to_base, x[i]))
        log_normal = -0.5 * (z.square().sum() + 2 * math.log(2 * math.pi))
        assert log_prob[i].item() == pytest.approx((log_normal + log_det).item(), abs=1e-6)


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
@pytest.mark.parametrize("dim", [1, 3])
def test_exact_divergence_equals_autograd_trace(conditioning: str, dim: int) -> None:
    net = _model(dim, conditioning).dynamics.net
    x = torch.randn(6, dim, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(0.3, dtype=torch.float64)
    _, jac = net.forward_with_jacobian(t, x)
    brute = brute_force_divergence(net(t, x), x)
    torch.testing.assert_close(jac.diagonal(dim1=-2, dim2=-1).sum(-1), brute)


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
@pytest.mark.parametrize(("dim", "hidden"), [(2, (5, 4)), (3, (6,)), (1, (4, 4, 3))])
def test_forward_jacobian_equals_autograd_jacobian(conditioning: str, dim: int, hidden: tuple) -> None:
    net = _model(dim, conditioning, hidden_dims=list(hidden)).dynamics.net
    x = torch.randn(4, dim, dtype=torch.float64)
    t = torch.tensor(0.7, dtype=torch.float64)
    _, jac = net.forward_with_jacobian(t, x)
    for b in range(4):
        exact = torch.autograd.functional.jacobian(lambda v: net(t, v.unsqueeze(0))[0], x[b])
        torch.testing.assert_close(jac[b], exact)  # df_i/dx_j at [i, j]


@pytest.mark.parametrize("activation", ["tanh", "softplus", "elu"])
@pytest.mark.parametrize(("dim", "hidden"), [(2, (5, 4)), (3, (6,)), (1, (4, 4, 3))])
def test_lean_serving_net_equals_the_module_path(dim: int, hidden: tuple, activation: str) -> None:
    net = _model(dim, hidden_dims=list(hidden), activation=activation).dynamics.net
    lean = net.lean()
    # Batch sizes and times change between calls: the reused buffers must not leak state.
    for batch, time in [(7, 0.4), (1, 1.3), (7, -0.2)]:
        x = torch.randn(batch, dim, dtype=torch.float64)
        t = torch.tensor(time, dtype=torch.float64)
        with torch.no_grad():
            f, jac = net.forward_with_jacobian(t, x)
            lean_f, lean_jac_t = (v.clone() for v in lean(t, x))
        torch.testing.assert_close(lean_f, f)
        torch.testing.assert_close(lean_jac_t.transpose(1, 2), jac)  # the lean net returns it transposed
        with torch.no_grad():
            torch.testing.assert_close(lean.field(t, x), f)


def test_lean_snapshot_is_reused_until_the_weights_change() -> None:
    model = _model(2, hidden_dims=[6, 5])
    net = model.dynamics.net
    x = torch.randn(9, 2, dtype=torch.float64)

    def fresh_log_prob() -> torch.Tensor:  # a model that never built a snapshot, same weights
        twin = _model(2, hidden_dims=[6, 5], seed=1)
        twin.load_state_dict(model.state_dict())
        with torch.no_grad():
            return twin.log_prob(x)

    first = net.lean()
    assert net.lean() is first
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for change in ("optimizer step", "load_state_dict", "in-place under no_grad"):
        with torch.no_grad():
            before = model.log_prob(x)
        if change == "optimizer step":
            optimizer.zero_grad()
            model.dynamics.net(torch.tensor(0.3, dtype=torch.float64), x).square().sum().backward()
            optimizer.step()
        elif change == "load_state_dict":
            model.load_state_dict(_model(2, hidden_dims=[6, 5], seed=7).state_dict())
        else:
            with torch.no_grad():
                net.layers[0].linear.weight.mul_(1.5)
        with torch.no_grad():
            after = model.log_prob(x)
        assert not torch.allclose(after, before), change
        torch.testing.assert_close(after, fresh_log_prob(), msg=change)
    assert net.lean() is not first


def test_lean_snapshot_keeps_buffers_within_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.ml import nets

    # Three hidden layers: log_prob takes the tangent path (two have a closed-form trace, no buffers).
    model = _model(2, hidden_dims=[6, 5, 4])
    lean = model.dynamics.net.lean()
    t = torch.tensor(0.3, dtype=torch.float64)
    per_point = sum(b.numel() for stacks, slopes in [lean._buffers(1)] for b in (*stacks, *slopes))
    monkeypatch.setattr(nets, "_KEPT_ELEMENTS", 40 * per_point)
    with torch.no_grad():
        for batch in (3, 30, 3):  # both fit: kept, most recently used last
            lean(t, torch.randn(batch, 2, dtype=torch.float64))
        assert list(lean._stacks) == [1, 30, 3]
        # Too large to keep beside the others, or at all once its solve is over: all are dropped.
        model.log_prob(torch.randn(50, 2, dtype=torch.float64))
    assert model.dynamics.net.lean() is lean and list(lean._stacks) == []
    with torch.no_grad():  # and the buffers that stay still give the module's answer
        x = torch.randn(3, 2, dtype=torch.float64)
        torch.testing.assert_close(lean(t, x)[0].clone(), model.dynamics.net(t, x))


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_hutchinson_is_unbiased_for_the_exact_trace(noise: str) -> None:
    net = _model(3).dynamics.net
    x = torch.randn(1, 3, dtype=torch.float64).expand(20_000, 3).clone().requires_grad_(True)
    t = torch.tensor(0.2, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    estimates, _ = hutchinson_divergence(net(t, x), x, sample_noise((20_000, 3), noise, generator, x))
    _, jac = net.forward_with_jacobian(t, x[:1])
    exact = jac[0].trace().item()
    stderr = estimates.std().item() / math.sqrt(estimates.numel())
    assert abs(estimates.mean().item() - exact) < 4 * stderr + 1e-12


def _grid_mass_1d(model: FFJORD) -> float:
    grid = torch.linspace(-12, 12, 4001, dtype=torch.float64).unsqueeze(1)
    with torch.no_grad():
        density = model.log_prob(grid).exp()
    return torch.trapezoid(density, grid[:, 0]).item()


def _grid_mass_2d(model: FFJORD, half_width: float = 9.0, n: int = 241) -> float:
    axis = torch.linspace(-half_width, half_width, n, dtype=torch.float64)
    xx, yy = torch.meshgrid(axis, axis, indexing="ij")
    with torch.no_grad():
        density = model.log_prob(torch.stack([xx.flatten(), yy.flatten()], 1)).exp().view(n, n)
    return torch.trapezoid(torch.trapezoid(density, axis, dim=1), axis).item()


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_untrained_density_integrates_to_one(conditioning: str) -> None:
    assert _grid_mass_1d(_model(1, conditioning)) == pytest.approx(1.0, abs=0.02)
    model = _model(2, conditioning)
    model.solver = SolverConfig(rtol=1e-6, atol=1e-6)
    assert _grid_mass_2d(model) == pytest.approx(1.0, abs=0.02)


def test_sample_and_log_prob_agree() -> None:
    model = _model(2)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        samples, reverse_log_prob = model.sample_with_log_prob(64, generator)
        forward_log_prob = model.log_prob(samples)
    assert torch.isfinite(forward_log_prob).all()
    torch.testing.assert_close(forward_log_prob, reverse_log_prob, rtol=1e-6, atol=1e-6)


def test_sampling_is_deterministic_given_a_generator() -> None:
    model = _model(2)
    with torch.no_grad():
        a = model.sample(10, torch.Generator().manual_seed(5))
        b = model.sample(10, torch.Generator().manual_seed(5))
        c = model.sample(10, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("adjoint", [False, True])
def test_training_loss_gradients_reach_every_parameter(adjoint: bool) -> None:
    cfg = {"divergence": "hutchinson", "kinetic_weight": 0.1, "jacobian_weight": 0.1}
    model = _model(2, **cfg)
    model.solver = SolverConfig(rtol=1e-6, atol=1e-6, adjoint=adjoint)
    out = model.training_loss(torch.randn(8, 2, dtype=torch.float64), torch.Generator(), 1)
    out.loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name
    assert {"nll", "kinetic", "jacobian"} <= set(out.stats)


def test_adjoint_and_backprop_agree_on_the_flow_loss() -> None:
    grads = []
    for adjoint in (False, True):
        model = _model(2, seed=4)
        model.solver = SolverConfig(rtol=1e-10, atol=1e-10, adjoint=adjoint, max_num_steps=20_000)
        x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        model.training_loss(x, torch.Generator(), 1).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path) -> None:
    model = _model(2, "positional").float()
    digest = save_checkpoint(tmp_path / "run", model)
    loaded = load_checkpoint(tmp_path / "run", expected_digest=digest).model
    x = torch.randn(7, 2)
    with torch.no_grad():
        torch.testing.assert_close(loaded.log_prob(x), model.log_prob(x), rtol=0, atol=0)
        a = loaded.sample(5, torch.Generator().manual_seed(0))
        b = model.sample(5, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_capped_learnt_time_stops_at_the_cap_and_gets_no_gradient_beyond_it() -> None:
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    capped = _model(2, seed=2, max_integration_time=1.0)
    fixed = _model(2, seed=2, integration_time=1.0, learn_integration_time=False)
    with torch.no_grad():
        fixed.loc.copy_(capped.loc), fixed.scale.copy_(capped.scale)
        capped.sqrt_end_time.fill_(math.sqrt(3.0))  # learnt past the cap
    assert float(capped.end_time) == 1.0
    with torch.no_grad():  # the flow integrates to exactly the cap: same density as T fixed there
        torch.testing.assert_close(capped.log_prob(x), fixed.log_prob(x), rtol=1e-12, atol=1e-12)
    capped.training_loss(x, torch.Generator(), 1).loss.backward()
    assert capped.sqrt_end_time.grad is not None and float(capped.sqrt_end_time.grad) == 0.0
    below = _model(2, seed=2, max_integration_time=1.0)  # T = 0.5 < cap: T still learns
    below.training_loss(x, torch.Generator(), 1).loss.backward()
    assert float(below.end_time) == pytest.approx(0.5) and float(below.sqrt_end_time.grad) != 0.0


def test_a_time_cap_below_the_initial_time_is_rejected_with_the_fix() -> None:
    with pytest.raises(
        ConfigError, match=r"max_integration_time \(0.2\) is below integration_time \(0.5\)"
    ) as err:
        _model(2, max_integration_time=0.2)
    assert err.value.field == "model_config"


def test_the_default_cap_is_two_or_the_initial_time_and_null_removes_it() -> None:
    assert FFJORDConfig().max_integration_time == 2.0
    assert FFJORDConfig(integration_time=3.0).max_integration_time == 3.0  # never below the start
    assert FFJORDConfig(max_integration_time=None).max_integration_time is None


def test_a_checkpoint_stored_before_the_cap_existed_loads_uncapped(tmp_path) -> None:
    model = _model(2, max_integration_time=None)
    with torch.no_grad():
        model.sqrt_end_time.fill_(math.sqrt(2.6))  # a learnt T past today's default cap
    save_checkpoint(tmp_path / "run", model)
    # Rewrite the checkpoint as an earlier odeserve wrote it: no max_integration_time in its config.
    config_path, manifest_path = tmp_path / "run" / "config.json", tmp_path / "run" / "manifest.json"
    meta = json.loads(config_path.read_text())
    del meta["model_config"]["max_integration_time"]
    config_path.write_text(json.dumps(meta))
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["config.json"] = checkpoint._sha256(config_path)
    manifest["digest"] = checkpoint._combine(manifest["files"])
    manifest_path.write_text(json.dumps(manifest))
    loaded = load_checkpoint(tmp_path / "run").model
    assert loaded.config.max_integration_time is None
    assert float(loaded.end_time) == pytest.approx(2.6)
    x = torch.randn(5, 2, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.double().log_prob(x), model.log_prob(x), rtol=1e-5, atol=1e-5)
    assert stored_model_config("ffjord", {"max_integration_time": 1.5})["max_integration_time"] == 1.5
    assert stored_model_config("latent_ode", {}) == {"anchor": "none"}  # stored before anchors


@pytest.mark.parametrize(("dim", "width"), [(1, 64), (2, 64), (16, 64), (17, 68), (64, 256), (200, 512)])
def test_default_width_grows_with_the_dimension(dim: int, width: int) -> None:
    model = init_model("ffjord", {}, dim, None, 0)
    assert model.config.hidden_dims is None and model.config.widths(dim) == (width, width)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    # each concat-squash layer's main map: in -> out; hidden widths as resolved
    outs = sorted({m.out_features for m in linears if m.out_features not in (dim, 1)})
    assert width in outs
    explicit = init_model("ffjord", {"hidden_dims": [8, 8]}, dim, None, 0)
    assert explicit.config.widths(dim) == (8, 8)
    # a checkpoint's config (hidden_dims null) rebuilds the same shapes
    again = init_model("ffjord", model.config.model_dump(mode="json"), dim, None, 1)
    assert {k: v.shape for k, v in again.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
