"""The GPU matrix: training on CUDA draws the same random streams as on the CPU, for every trace
estimator and gradient method. Skipped where CUDA is absent; run on a GPU machine with
``pytest -m gpu``. The CPU half (one stream on every device) runs everywhere."""

from __future__ import annotations

import math

import pytest
import torch

from service.ml.data import PointData
from service.ml.divergence import sample_noise, standard_normal
from service.ml.ode import SolverConfig
from service.ml.training import TrainConfig, fit, init_model

needs_cuda = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

CASES = {
    "exact": ({"divergence": "exact"}, {}),
    "hutchinson_gaussian": ({"divergence": "hutchinson", "hutchinson_noise": "gaussian"}, {}),
    "hutchinson_rademacher": ({"divergence": "hutchinson", "hutchinson_noise": "rademacher"}, {}),
    "adjoint": ({"divergence": "exact"}, {"adjoint": True}),
}


def _gaussian_points(device: str) -> PointData:
    g = torch.Generator().manual_seed(5)
    train, test = torch.randn(512, 2, generator=g) * 0.5 + 1.0, torch.randn(256, 2, generator=g) * 0.5
    entropy = 2 * 0.5 * (1 + math.log(2 * math.pi * 0.25))
    return PointData("gauss", train.to(device), (test + 1.0).to(device), entropy=entropy)


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_noise_follows_the_generator_not_the_target_dtype(kind: str) -> None:
    like = torch.zeros(1, dtype=torch.float64)
    drawn = sample_noise((64, 3), kind, torch.Generator().manual_seed(0), like)
    again = sample_noise((64, 3), kind, torch.Generator().manual_seed(0), like)
    assert drawn.dtype == torch.float64 and torch.equal(drawn, again)
    assert set(drawn.unique().tolist()) == {-1.0, 1.0} if kind == "rademacher" else drawn.std() > 0.5


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_one_seed_gives_one_noise_stream_on_every_device(kind: str, device: str) -> None:
    cpu = sample_noise((32, 2), kind, torch.Generator().manual_seed(1), torch.zeros(1))
    there = sample_noise((32, 2), kind, torch.Generator().manual_seed(1), torch.zeros(1, device=device))
    assert there.device.type == device
    assert torch.equal(there.cpu(), cpu)
    base = standard_normal((8, 2), torch.Generator().manual_seed(2), torch.float32, torch.device(device))
    assert torch.equal(base.cpu(), torch.randn(8, 2, generator=torch.Generator().manual_seed(2)))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=needs_cuda)])
def test_training_on_cuda_matches_the_cpu(case: str, device: str) -> None:
    model_config, solver_update = CASES[case]
    solver = SolverConfig(rtol=1e-5, atol=1e-5).model_copy(update=solver_update)
    config = TrainConfig(iterations=3, batch_size=64, lr=1e-2, seed=0)
    losses = {}
    for where in ("cpu", device):
        model = init_model("ffjord", {"hidden_dims": [16, 16], **model_config}, 2, solver, seed=0)
        result = fit(model.to(where), _gaussian_points(where), config)
        losses[where] = [h["loss"] for h in result.history]
        assert math.isfinite(result.metrics["test_nll"])
        assert next(model.parameters()).device.type == where
        samples = model.sample(16, torch.Generator().manual_seed(0))
        assert samples.device.type == where and torch.isfinite(samples).all()
    assert losses[device] == pytest.approx(losses["cpu"], rel=1e-3, abs=1e-3)
