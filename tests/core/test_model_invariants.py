"""One invariant test over every registered model (a new model is covered by its registry line).

Shapes, finiteness, gradients reaching every parameter, samples scored as finite log-densities,
and a save/load round trip that reproduces outputs exactly.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from service.ml.checkpoint import load_checkpoint, save_checkpoint
from service.ml.data import load_dataset
from service.ml.models import MODELS, DensityModel
from service.ml.ode import SolverConfig
from service.ml.series import collate, load_series_dataset
from service.ml.training import init_model

SOLVER = SolverConfig(rtol=1e-4, atol=1e-4)


def _data(kind: str) -> Any:
    """Small, fixed example data for a model's data kind."""
    if kind == "points":
        return load_dataset("8gaussians", seed=0, n_train=256, n_test=64)
    return load_series_dataset("periodic", seed=0, n_series=40)


def _queries(model: DensityModel, data: Any) -> Any:
    return data.test[:16] if model.data_kind == "points" else collate(data.test[:4])


def _outputs(model: DensityModel, data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        log_prob = model.log_prob(_queries(model, data))
        samples = model.sample(5, torch.Generator().manual_seed(0))
    return log_prob, samples


@pytest.fixture(params=sorted(MODELS))
def trained(request: pytest.FixtureRequest) -> tuple[DensityModel, Any]:
    cls = MODELS[request.param]
    data = _data(cls.data_kind)
    model = init_model(request.param, {}, data.dim, SOLVER, seed=0)
    model.prepare(data)
    return model, data


def test_outputs_have_the_right_shapes_and_are_finite(trained) -> None:
    model, data = trained
    log_prob, samples = _outputs(model, data)
    n_queries = 16 if model.data_kind == "points" else 4
    assert log_prob.shape == (n_queries,) and torch.isfinite(log_prob).all()
    assert samples.shape[0] == 5 and samples.shape[-1] == data.dim
    assert torch.isfinite(samples).all()


def test_gradients_reach_every_parameter(trained) -> None:
    model, data = trained
    generator = torch.Generator().manual_seed(0)
    out = model.training_loss(data.batch(16, generator), generator, iteration=1)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None, f"{name} received no gradient"
            assert torch.isfinite(param.grad).all(), name


def test_evaluate_reports_a_finite_test_nll(trained) -> None:
    model, data = trained
    metrics = model.evaluate(
        data.test[:16] if model.data_kind == "points" else data.test[:8], torch.Generator().manual_seed(0)
    )
    assert "test_nll" in metrics and torch.isfinite(torch.tensor(metrics["test_nll"]))


def test_samples_are_deterministic_given_a_generator(trained) -> None:
    model, _ = trained
    with torch.no_grad():
        a = model.sample(4, torch.Generator().manual_seed(7))
        b = model.sample(4, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_save_load_round_trip_reproduces_outputs(trained, tmp_path) -> None:
    model, data = trained
    model.eval()
    digest = save_checkpoint(tmp_path / "ck", model)
    loaded = load_checkpoint(tmp_path / "ck", expected_digest=digest)
    assert loaded.model.name == model.name and loaded.model.config == model.config
    before, after = _outputs(model, data), _outputs(loaded.model, data)
    for x, y in zip(before, after, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
