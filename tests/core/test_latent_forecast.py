"""Latent ODE forecasting on series unlike the built-ins: any time offset and scale, early stopping.

The synthetic set lives on ``t`` in [100, 160] with values around 50 (the built-ins start at 0 and
are centred near 0): a model must normalise times and values from its training data, keep the maps
in its checkpoint, and beat the naive forecasts of a series' second half by a wide margin.
"""

from __future__ import annotations

import math

import pytest
import torch

from service.ml.checkpoint import load_checkpoint, save_checkpoint
from service.ml.early_stopping import EarlyStopping
from service.ml.models.latent_ode import LatentODE
from service.ml.series import Series, make_series, series_data_from_list
from service.ml.training import TrainConfig, fit, init_model

SMALL = {"latent_dim": 4, "encoder_hidden": 16, "dynamics_hidden": [32], "decoder_hidden": [16]}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def offset_waves(n: int, seed: int) -> tuple[list[Series], list[torch.Tensor]]:
    """``50 + A sin(2 pi (t - 100) / 20 + phi)`` on 40 random points of an 80-point grid of [100, 160].

    ``A ~ U[3, 5]``, ``phi ~ U[0, 2 pi]``, noise std 0.3; the first half of the span is observed.
    Returns the noisy series and their clean values (T, 1).
    """
    generator = torch.Generator().manual_seed(seed)
    grid = torch.linspace(100, 160, 80, dtype=torch.float64)
    series, clean = [], []
    for _ in range(n):
        times = grid[torch.randperm(80, generator=generator)[:40].sort().values]
        amp = 3 + 2 * float(torch.rand(1, generator=generator))
        phase = 2 * math.pi * float(torch.rand(1, generator=generator))
        truth = (50 + amp * torch.sin(2 * math.pi * (times - 100) / 20 + phase)).float().unsqueeze(-1)
        noisy = truth + 0.3 * torch.randn(truth.shape, generator=generator)
        series.append(make_series(times, noisy, observed_fraction=0.5))
        clean.append(truth)
    return series, clean


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = series_data_from_list("offset", offset_waves(150, seed=0)[0], seed=0)
    model = init_model("latent_ode", SMALL, 1, None, seed=0)
    result = fit(model, data, TrainConfig(iterations=500, batch_size=64, seed=0))
    directory = tmp_path_factory.mktemp("ckpt") / "run"
    save_checkpoint(directory, model)
    loaded = load_checkpoint(directory).model
    assert isinstance(loaded, LatentODE)
    return model, loaded, result


def _forecast_rmse(model: LatentODE, series: list[Series], clean: list[torch.Tensor]) -> dict[str, float]:
    """RMSE of the model's second-half forecast and of three naive ones, against the clean curve."""
    sums = dict.fromkeys(["model", "last_value", "prefix_mean", "zero"], 0.0)
    count = 0
    for s, truth in zip(series, clean, strict=True):
        k = s.n_observed
        mean, _ = model.predict(
            s.times[:k], s.values[:k], None, s.times[k:], 16, torch.Generator().manual_seed(0)
        )
        tail = truth[k:]
        for name, guess in [
            ("model", mean),
            ("last_value", s.values[k - 1]),
            ("prefix_mean", s.values[:k].mean(0)),
            ("zero", torch.zeros(1)),
        ]:
            sums[name] += float((guess - tail).square().sum())
        count += tail.numel()
    return {name: math.sqrt(total / count) for name, total in sums.items()}


def test_forecast_of_offset_series_beats_naive_baselines_by_half(trained) -> None:
    _, loaded, result = trained
    # The maps are fitted on the training data: times [100, 160] span 60 -> 4 model units.
    assert float(loaded.loc) == pytest.approx(50, abs=1)
    assert float(loaded.time_scale) == pytest.approx(60 / 4, rel=0.05)
    series, clean = offset_waves(60, seed=99)
    rmse = _forecast_rmse(loaded, series, clean)
    best_naive = min(rmse["last_value"], rmse["prefix_mean"], rmse["zero"])
    assert rmse["model"] <= 0.5 * best_naive, rmse
    # The model's own validation numbers travel in the checkpoint and tell the same story.
    assert float(loaded.val_rmse) <= 0.5 * float(loaded.val_rmse_last_value)
    assert result.metrics["val_rmse"] == pytest.approx(float(loaded.val_rmse))


def test_best_validated_weights_are_kept(trained) -> None:
    model, _, result = trained
    validated = [h for h in result.history if "val_score" in h]
    assert len(validated) >= 10 and result.best_iteration == result.metrics["best_iteration"]
    best = min(validated, key=lambda h: h["val_score"])
    assert best["iteration"] == result.best_iteration
    assert float(model.val_rmse) == pytest.approx(best["val_rmse"])


def test_plateau_schedule_halves_lr_then_stops_and_restores_the_best() -> None:
    net = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
    stopper = EarlyStopping(patience=30, lr_patience=10, min_iterations=20, initial_lr=1.0)
    scores = {5: 1.0, 10: 0.5, 15: 0.6, 20: 0.6, 25: 0.7, 30: 0.6, 35: 0.6, 40: 0.6}
    decisions = {}
    for iteration, score in scores.items():
        with torch.no_grad():
            net.weight.fill_(score)
        decisions[iteration] = stopper.update(score, iteration, net, optimizer)
        if iteration == 15:
            assert optimizer.param_groups[0]["lr"] == 1.0  # before min_iterations
        if iteration == 25:
            assert optimizer.param_groups[0]["lr"] == 0.5  # halved at 20, not again at 25
        if iteration == 30:
            assert optimizer.param_groups[0]["lr"] == 0.25  # 10 more quiet steps
    assert optimizer.param_groups[0]["lr"] == 0.125
    assert [i for i, stop in decisions.items() if stop] == [40]
    stopper.restore_best(net)
    assert float(net.weight) == 0.5 and stopper.best_iteration == 10
    clone = EarlyStopping(patience=30, lr_patience=10, min_iterations=20, initial_lr=1.0)
    clone.load_state_dict(stopper.state_dict())
    assert clone.state_dict()["best_score"] == 0.5 and clone.last_drop == stopper.last_drop


def test_resume_mid_run_takes_the_same_early_stopping_decisions() -> None:
    data = series_data_from_list("offset", offset_waves(30, seed=3)[0], seed=0)
    config = TrainConfig(
        iterations=40,
        batch_size=8,
        lr=1e-2,
        seed=0,
        val_interval=5,
        min_iterations=10,
        patience=15,
        lr_patience=5,
    )
    states = []
    full_model = init_model("latent_ode", SMALL, 1, None, seed=0)
    full = fit(full_model, data, config, checkpoint_every=20, on_checkpoint=states.append)
    resumed_model = init_model("latent_ode", SMALL, 1, None, seed=0)
    resumed = fit(resumed_model, data, config, resume=states[0])
    assert states[0].early_stopping is not None and states[0].early_stopping["best_state"] is not None
    assert resumed.best_iteration == full.best_iteration
    assert resumed.iterations == full.iterations
    for name, value in full_model.state_dict().items():
        torch.testing.assert_close(resumed_model.state_dict()[name], value, rtol=0, atol=0, msg=name)
