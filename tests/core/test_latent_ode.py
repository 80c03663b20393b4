"""Latent ODE (arXiv:1907.03907): invariants, masks and ragged grids, learning, series validation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from service.ml.checkpoint import load_checkpoint, save_checkpoint
from service.ml.errors import DataError
from service.ml.models.latent_ode import LatentODE
from service.ml.ode import SolverConfig
from service.ml.series import (
    Series,
    SeriesBatch,
    collate,
    load_series_dataset,
    make_series,
    make_spirals,
    series_data_from_list,
)
from service.ml.series_io import series_from_csv, series_from_json
from service.ml.training import TrainConfig, fit, init_model

SOLVER = SolverConfig(rtol=1e-3, atol=1e-4)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: extra threads only add contention on shared CI machines."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


SMALL = {"latent_dim": 4, "encoder_hidden": 16, "dynamics_hidden": [16], "decoder_hidden": [16]}


def _model(encoder: str = "gru", solver: SolverConfig = SOLVER, **cfg: object) -> LatentODE:
    model = init_model("latent_ode", {**SMALL, "encoder": encoder, **cfg}, 2, solver, seed=0)
    assert isinstance(model, LatentODE)
    return model


@pytest.fixture(scope="module")
def spirals():
    return series_data_from_list("spirals", make_spirals(60, seed=1), seed=1)


def _batch(data, n: int = 6, seed: int = 0) -> SeriesBatch:
    return data.batch(n, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("encoder", ["gru", "ode_rnn"])
def test_shapes_finiteness_and_gradients_reach_every_parameter(spirals, encoder: str) -> None:
    # The ODE-RNN solves once per observation gap; a fixed-step solver keeps the test fast.
    model = _model(encoder, SOLVER if encoder == "gru" else SolverConfig(method="rk4", step_size=0.25))
    model.prepare(spirals)
    batch = _batch(spirals)
    assert len(set(batch.valid.sum(1).tolist())) > 1  # ragged lengths in one batch
    out = model.training_loss(batch, torch.Generator().manual_seed(0), iteration=5)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert {"elbo", "kl", "mse"} <= out.stats.keys()
    out.loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name
    assert model.nfe.forward > 0 and (encoder == "gru") == (model.encoder_nfe.forward == 0)

    log_prob = model.log_prob(batch)
    assert log_prob.shape == (6,) and torch.isfinite(log_prob).all()
    samples = model.sample(5, torch.Generator().manual_seed(0), times=[0.0, 0.5, 2.0])
    assert samples.shape == (5, 3, 2) and torch.isfinite(samples).all()
    series = spirals.test[0]
    query = torch.tensor([-0.5, 0.3, 7.0], dtype=torch.float64)  # before, inside and after
    mean, std = model.predict(series.times, series.values, None, query, 4, torch.Generator())
    assert mean.shape == std.shape == (3, 2) and (std > 0).all()
    metrics = model.evaluate(spirals.test, torch.Generator().manual_seed(0))
    expected = {"test_nll", "test_mse_interp", "test_mse_extrap", "test_rmse_extrap"}
    assert expected <= metrics.keys() and all(math.isfinite(v) for v in metrics.values())


def test_different_time_grids_and_lengths_in_one_batch(spirals) -> None:
    model = _model(solver=SolverConfig(method="rk4", step_size=0.02, max_num_steps=5000))
    model.prepare(spirals)
    a, b = spirals.test[0], spirals.test[1]
    b = Series(b.times * 0.7 + 3.3, b.values, b.mask, b.n_observed)  # its own, shifted grid
    assert torch.unique(torch.cat([a.times, b.times])).numel() == len(a) + len(b)
    batch = collate([a, b])
    assert torch.isfinite(model.training_loss(batch, torch.Generator(), 1).loss)
    assert torch.isfinite(model.log_prob(batch)).all()

    length = max(len(a), len(b))
    times = torch.zeros(2, length, dtype=torch.float64)
    values, mask = torch.zeros(2, length, 2), torch.zeros(2, length, 2)
    for i, s in enumerate((a, b)):
        times[i, : len(s)], values[i, : len(s)], mask[i, : len(s)] = s.times, s.values, 1
    offsets = torch.tensor([0.2, 1.7, 4.9, 6.0], dtype=torch.float64)
    query = times[:, :1] + offsets  # (B, P): each series' own times
    mean, std = model.predict(times, values, mask, query, n_samples=0)
    assert mean.shape == std.shape == (2, 4, 2)
    for i, s in enumerate((a, b)):
        alone, _ = model.predict(s.times, s.values, None, query[i], n_samples=0)
        torch.testing.assert_close(mean[i], alone, atol=2e-4, rtol=2e-4)


def test_checkpoint_round_trip_gives_identical_outputs(spirals, tmp_path) -> None:
    model = _model()
    model.prepare(spirals)
    fit(model, spirals, TrainConfig(iterations=3, batch_size=8, lr=1e-2, seed=0))
    digest = save_checkpoint(tmp_path / "run", model)
    loaded = load_checkpoint(tmp_path / "run", expected_digest=digest).model
    assert isinstance(loaded, LatentODE)
    model.eval()
    batch = collate(spirals.test[:4])
    torch.testing.assert_close(loaded.log_prob(batch), model.log_prob(batch), rtol=0, atol=0)
    s = spirals.test[0]
    args = (s.times, s.values, None, s.times + 0.25, 3)
    first = model.predict(*args, generator=torch.Generator().manual_seed(4))
    second = loaded.predict(*args, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    for name in ("loc", "scale", "time_scale", "train_span"):
        assert torch.equal(getattr(loaded, name), getattr(model, name)), name


def test_masked_out_values_do_not_change_the_loss(spirals) -> None:
    model = _model()
    model.prepare(spirals)
    batch = _batch(spirals)
    mask = batch.mask.clone()
    mask[0, 1:5, 0] = 0  # missing channel 0 at some times
    mask[2, 3, 1] = 0  # missing channel 1 once
    clean = SeriesBatch(batch.times, batch.values * mask, mask, batch.valid, batch.observed)
    junk = batch.values + 100.0 * (1 - mask) * torch.randn(batch.values.shape)
    noisy = SeriesBatch(batch.times, junk, mask, batch.valid, batch.observed)
    losses = [model.training_loss(b, torch.Generator().manual_seed(0), 7).loss for b in (clean, noisy)]
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    full = model.training_loss(batch, torch.Generator().manual_seed(0), 7).loss
    assert not torch.equal(full, losses[0])  # the mask does matter


@pytest.fixture(scope="module")
def trained_periodic():
    torch.manual_seed(0)
    data = load_series_dataset("periodic", seed=0, n_series=200)
    model = init_model("latent_ode", {**SMALL, "kl_anneal_iterations": 20}, 1, SOLVER, seed=0)
    model.prepare(data)  # fit() does this too; the bound before training must use the same units
    before = model.evaluate(data.test, torch.Generator().manual_seed(0))["test_nll"]
    # settings pinned (lr, no clipping): the test is about learning, not about the defaults
    config = TrainConfig(iterations=80, batch_size=32, lr=1e-2, grad_clip=0, seed=0, val_fraction=0)
    return data, model, before, fit(model, data, config)


def test_elbo_increases_on_periodic_within_a_small_budget(trained_periodic) -> None:
    _, _, before, result = trained_periodic
    elbo = [h["elbo"] for h in result.history]
    first, last = sum(elbo[:10]) / 10, sum(elbo[-10:]) / 10
    assert last > first + 0.3 * abs(first)
    assert result.metrics["test_nll"] < before - 0.3 * abs(before)


def test_posterior_prediction_reproduces_observations_within_the_noise() -> None:
    truth = make_spirals(100, seed=5, noise_std=0.0)
    noisy = make_spirals(100, seed=5, noise_std=0.02)
    data = series_data_from_list("few", noisy, seed=0, test_fraction=0.1)
    model = init_model("latent_ode", {"kl_anneal_iterations": 50}, 2, SOLVER, seed=0)
    fit(model, data, TrainConfig(iterations=300, batch_size=50, lr=1e-2, seed=0))
    observed_noise, residual = [], []
    for clean, s in zip(truth, noisy, strict=True):
        if not any(s is t for t in data.train):
            continue
        n = s.n_observed
        mean, _ = model.predict(s.times[:n], s.values[:n], None, s.times[:n], n_samples=0)
        residual.append((mean - s.values[:n]).square().mean())
        observed_noise.append((clean.values[:n] - s.values[:n]).square().mean())
    rmse = float(torch.stack(residual).mean().sqrt())
    noise = float(torch.stack(observed_noise).mean().sqrt())
    assert noise == pytest.approx(0.02, rel=0.2)
    assert rmse < 3 * noise, (rmse, noise)


# ------------------------------------------------------------------------------- series validation
GOOD = {"times": [0.0, 1.0, 2.5], "values": [[1.0, 2.0], [None, 3.0], [0.5, -1.0]]}


@pytest.mark.parametrize(
    ("items", "field", "needle"),
    [
        ([], "series", "no series"),
        ("nope", "series", "must be a list"),
        ([{"times": [0, 1, 2]}], "series[0]", "'times' and 'values'"),
        ([{"times": [0, 2, 1], "values": [[1], [2], [3]]}], "series[0].times", "not sorted"),
        ([{"times": [0, 1, 1], "values": [[1], [2], [3]]}], "series[0].times", "duplicate"),
        ([{"times": [0, 1, 2], "values": [[1], [2]]}], "series[0].values", "value rows"),
        ([{"times": [0, 1, 2], "values": [[1], [2, 3], [3]]}], "series[0].values[1]", "row of 1"),
        ([GOOD, {"times": [0, 1, 2], "values": [[1], [2], [3]]}], "series[1].values[0]", "row of 2"),
        ([{"times": [0, 1, 2], "values": [[1], [math.nan], [3]]}], "series[0].values[1]", "NaN"),
        ([{"times": [0, math.inf, 2], "values": [[1], [2], [3]]}], "series[0].times[1]", "inf"),
        ([{"times": [0, 1], "values": [[1], [2]]}], "series[0]", "2 points"),
        ([{"times": [0, 1, 2], "values": [[None], [2], [3]]}], "series[0].values[0]", "no channel"),
        ([{"times": [0, 1, 2], "values": [["a"], [2], [3]]}], "series[0].values[0]", "number"),
        ([{"times": [0, 1, 2], "values": [[0.0] * 33] * 3}], "series[0]", "33 value channels"),
    ],
)
def test_series_from_json_rejects_bad_input(items: object, field: str, needle: str) -> None:
    with pytest.raises(DataError) as info:
        series_from_json(items)
    assert info.value.field == field and needle in str(info.value) and info.value.fix


@pytest.mark.parametrize(
    ("text", "field", "needle"),
    [
        ("", "csv", "empty"),
        ("id,t,v\n", "csv.header", "series_id,time"),
        ("series_id,time,value_1\na,0,1\na,2,1\na,1,1\n", "series_id=a.times", "not sorted"),
        ("series_id,time,value_1\na,0,1\na,0,2\na,1,1\n", "series_id=a.times", "duplicate"),
        ("series_id,time,value_1\na,0,1\na,1\n", "csv line 3", "2 cells"),
        ("series_id,time,value_1\na,0,1\na,1,nan\na,2,1\n", "csv line 3", "NaN"),
        ("series_id,time,value_1\na,0,1\na,1,x\n", "csv line 3", "not a number"),
        ("series_id,time,value_1\na,0,1\na,1,2\nb,0,1\nb,1,1\nb,2,1\n", "series_id=a", "2 points"),
        ("series_id,time,value_1\n", "series", "no series"),
    ],
)
def test_series_from_csv_rejects_bad_input(text: str, field: str, needle: str) -> None:
    with pytest.raises(DataError) as info:
        series_from_csv(text)
    assert info.value.field == field and needle in str(info.value) and info.value.fix


def test_json_and_csv_agree_and_keep_missing_values() -> None:
    csv_text = "series_id,time,value_1,value_2\ns1,0,1,2\ns1,1,,3\ns1,2.5,0.5,-1\n"
    from_csv = series_from_csv(csv_text.encode(), observed_fraction=0.5)[0]
    from_json = series_from_json([GOOD], observed_fraction=0.5)[0]
    for name in ("times", "values", "mask"):
        assert torch.equal(getattr(from_csv, name), getattr(from_json, name)), name
    assert from_json.mask[1].tolist() == [0.0, 1.0] and from_json.n_observed == 2


def test_series_data_is_deterministic_and_batches_from_the_generator() -> None:
    first, second = load_series_dataset("spirals", seed=3), load_series_dataset("spirals", seed=3)
    assert len(first.train) + len(first.test) == 1000 and first.dim == 2 and first.kind == "series"
    assert torch.equal(first.test[7].values, second.test[7].values)
    a = first.batch(16, torch.Generator().manual_seed(9))
    b = second.batch(16, torch.Generator().manual_seed(9))
    assert torch.equal(a.values, b.values) and torch.equal(a.observed, b.observed)
    lengths = {len(s) for s in first.train}
    assert len(lengths) > 5 and all(0 < s.n_observed < len(s) for s in first.train)
    assert float(first.test[0].times[0]) == 0.0
    with pytest.raises(Exception, match="unknown series dataset"):
        load_series_dataset("nope")


@pytest.mark.slow
def test_spirals_extrapolation_beats_last_value_baseline() -> None:
    data = load_series_dataset("spirals", seed=0)
    model = init_model("latent_ode", {}, data.dim, SOLVER, seed=0)
    result = fit(model, data, TrainConfig(iterations=400, batch_size=100, lr=1e-2, seed=0))
    metrics = result.metrics
    assert metrics["test_rmse_extrap"] < 0.4 * metrics["test_rmse_extrap_baseline"], metrics
    assert metrics["test_mse_interp"] < 0.01, metrics


def test_mean_anchor_keeps_the_series_density_normalised() -> None:
    """Two prefix values of one channel become their mean and one residual: numerically integrating
    the density the model assigns (level term, Jacobian, the scored residual) over the plane gives 1."""
    sigma, mu = 0.3, 0.4  # the decoder's mean for the second residual
    grid = torch.linspace(-8, 8, 801, dtype=torch.float64)
    s1, s2 = torch.meshgrid(grid, grid, indexing="ij")
    level = (s1 + s2) / 2
    count = torch.full_like(level, 2.0)
    log_level = LatentODE._level_log_density(level.reshape(-1, 1, 1), count.reshape(-1, 1, 1))
    residual = (s2 - level).reshape(-1)
    log_residual = -0.5 * ((residual - mu) / sigma) ** 2 - math.log(sigma * math.sqrt(2 * math.pi))
    density = (log_level + log_residual).exp().reshape(s1.shape)
    step = float(grid[1] - grid[0])
    assert float(density.sum()) * step * step == pytest.approx(1.0, abs=1e-3)


def test_mean_anchor_forecasts_a_shifted_series_shifted() -> None:
    """With ``anchor='mean'`` a forecast moves with the level of what was observed, however far
    outside the training values (a trend); an absolute model (``'none'``) has no such guarantee."""
    series = make_spirals(4, seed=3, noise_std=0.01)

    def forecast_errors(anchor: str, shift: float) -> Tensor:
        model = init_model("latent_ode", {"anchor": anchor}, 2, SOLVER, seed=0)
        errors = []
        for s in series:
            n = s.n_observed
            values = s.values + shift
            mean, _ = model.predict(s.times[:n], values[:n], None, s.times[n:], n_samples=0)
            errors.append(mean - values[n:])
        return torch.cat(errors)

    torch.testing.assert_close(forecast_errors("mean", 25.0), forecast_errors("mean", 0.0), rtol=0, atol=2e-5)
    assert not torch.allclose(forecast_errors("none", 25.0), forecast_errors("none", 0.0), atol=1e-2)


def _levels(n: int, persistent: bool, seed: int = 0) -> list:
    """Noisy sines on a level per series (N(0, 10^2)); with ``persistent=False`` the second half
    of each series sits on a fresh, independent level."""
    g = torch.Generator().manual_seed(seed)
    times = torch.linspace(0, 10, 40, dtype=torch.float64)
    out = []
    for _ in range(n):
        first, second = 10 * torch.randn(2, generator=g)
        level = torch.where(times <= 5, first, second if not persistent else first).float()
        values = level + torch.sin(times).float() + 0.1 * torch.randn(40, generator=g)
        out.append(make_series(times, values.unsqueeze(-1), observed_fraction=0.5))
    return out


@pytest.mark.parametrize(
    ("series", "anchored"),
    [
        (_levels(50, persistent=True), [1.0]),  # like windows of a trend: anchor
        (_levels(50, persistent=False), [0.0]),  # levels that move: do not
        (make_spirals(50, seed=0, noise_std=0.02), [0.0, 0.0]),  # a level set by the dynamics
    ],
    ids=["persistent-levels", "moving-levels", "spirals"],
)
def test_auto_anchor_is_chosen_from_the_training_series(series, anchored) -> None:
    model = init_model("latent_ode", {}, series[0].dim, SOLVER, seed=0)
    model.prepare(series_data_from_list("x", series, seed=0))
    assert model.anchored.tolist() == anchored
