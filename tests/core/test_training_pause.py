"""fit() paused by its ``should_stop`` callback: checkpoint the last finished step, resume exactly."""

from __future__ import annotations

import pytest
import torch

from service.ml.errors import TrainingPaused
from service.ml.ode import SolverConfig
from service.ml.training import TrainConfig, TrainState, fit, init_model

SOLVER = SolverConfig(rtol=1e-4, atol=1e-4)
CONFIG = TrainConfig(iterations=10, batch_size=32, lr=1e-2, seed=5)


class Blob:
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.train, self.test = torch.randn(400, 2, generator=g), torch.randn(100, 2, generator=g)

    def batch(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return self.train[torch.randint(0, len(self.train), (batch_size,), generator=generator)]


def _pause_before(step: int):
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        if calls["n"] == step:
            raise TrainingPaused("shutting down")
        return False

    return should_stop


def _model() -> torch.nn.Module:
    return init_model("ffjord", {"hidden_dims": [8]}, 2, SOLVER, seed=1)


def test_pause_checkpoints_last_finished_step_and_resumes_to_identical_weights() -> None:
    data = Blob()
    reference = _model()
    fit(reference, data, CONFIG)

    paused = _model()
    saved: list[TrainState] = []
    with pytest.raises(TrainingPaused):
        fit(
            paused, data, CONFIG, should_stop=_pause_before(7), on_checkpoint=saved.append, checkpoint_every=4
        )
    assert [s.iteration for s in saved] == [4, 6]  # the periodic one, then the pause at step 6
    assert [h["iteration"] for h in saved[-1].history] == list(range(1, 7))

    resumed = _model()
    result = fit(resumed, data, CONFIG, resume=saved[-1])
    assert [h["iteration"] for h in result.history] == list(range(1, 11))
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0)


def test_pause_right_after_a_checkpoint_saves_nothing_new() -> None:
    saved: list[TrainState] = []
    with pytest.raises(TrainingPaused):
        fit(
            _model(),
            Blob(),
            CONFIG,
            should_stop=_pause_before(5),
            on_checkpoint=saved.append,
            checkpoint_every=4,
        )
    assert [s.iteration for s in saved] == [4]


def test_pause_before_the_first_step_saves_nothing() -> None:
    saved: list[TrainState] = []
    with pytest.raises(TrainingPaused):
        fit(_model(), Blob(), CONFIG, should_stop=_pause_before(1), on_checkpoint=saved.append)
    assert saved == []
