"""fit(): progress, cancellation, exact resume, divergence handling; checkpoints: integrity."""

from __future__ import annotations

import json
import math

import pytest
import torch

from service.ml.checkpoint import checkpoint_digest, discard_previous, load_checkpoint, save_checkpoint
from service.ml.errors import CheckpointError, SolverError, TrainingCanceled
from service.ml.ode import SolverConfig
from service.ml.training import ProgressEvent, TrainConfig, TrainState, fit, init_model

SOLVER = SolverConfig(rtol=1e-4, atol=1e-4)
SMALL = {"hidden_dims": [16, 16]}


class GaussianData:
    """N(mean, 0.5^2 I) in 2-D with a fixed train/test split and known entropy."""

    def __init__(self, seed: int = 1) -> None:
        g = torch.Generator().manual_seed(seed)
        self.train = torch.randn(1000, 2, generator=g) * 0.5 + 1.0
        self.test = torch.randn(300, 2, generator=g) * 0.5 + 1.0
        self.entropy = 2 * 0.5 * (1 + math.log(2 * math.pi * 0.25))

    def batch(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return self.train[torch.randint(0, len(self.train), (batch_size,), generator=generator)]


CONFIG = TrainConfig(iterations=24, batch_size=64, lr=1e-2, seed=3)


def _weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([v.flatten() for v in model.state_dict().values()])


def test_fit_reports_progress_and_learns() -> None:
    data = GaussianData()
    model = init_model("ffjord", SMALL, 2, SOLVER, seed=0)
    before = model.evaluate(data.test, torch.Generator())["test_nll"]
    events: list[ProgressEvent] = []
    result = fit(model, data, CONFIG, on_progress=events.append)
    assert [e.iteration for e in events] == list(range(1, 25))
    assert all(e.nfe_forward > 0 and e.nfe_backward > 0 and e.total == 24 for e in events)
    assert [h["iteration"] for h in result.history] == list(range(1, 25))
    assert result.metrics["test_nll"] < before - 0.1
    assert result.metrics["kl_to_truth"] == pytest.approx(result.metrics["test_nll"] - data.entropy)


def test_resume_from_interrupted_run_gives_identical_weights() -> None:
    data = GaussianData()
    uninterrupted = init_model("ffjord", SMALL, 2, SOLVER, seed=3)
    fit(uninterrupted, data, CONFIG)

    interrupted = init_model("ffjord", SMALL, 2, SOLVER, seed=3)
    snapshots: list[TrainState] = []
    calls = iter(range(1000))
    with pytest.raises(TrainingCanceled):
        fit(
            interrupted,
            data,
            CONFIG,
            should_stop=lambda: next(calls) >= 14,
            checkpoint_every=5,
            on_checkpoint=snapshots.append,
        )
    assert [s.iteration for s in snapshots] == [5, 10]

    fresh = init_model("ffjord", SMALL, 2, SOLVER, seed=99)  # weights come from the snapshot
    result = fit(fresh, data, CONFIG, resume=snapshots[-1])
    assert torch.equal(_weights(fresh), _weights(uninterrupted))
    assert [h["iteration"] for h in result.history] == list(range(1, 25))


def test_resume_through_a_checkpoint_directory(tmp_path) -> None:
    data = GaussianData()
    reference = init_model("ffjord", SMALL, 2, SOLVER, seed=3)
    fit(reference, data, CONFIG)
    model = init_model("ffjord", SMALL, 2, SOLVER, seed=3)
    saved: list[str] = []

    def save(state: TrainState) -> None:
        saved.append(save_checkpoint(tmp_path / "ck", model, train_config=CONFIG, state=state))

    with pytest.raises(TrainingCanceled):
        calls = iter(range(1000))
        fit(
            model,
            data,
            CONFIG,
            should_stop=lambda: next(calls) >= 12,
            checkpoint_every=6,
            on_checkpoint=save,
        )
    loaded = load_checkpoint(tmp_path / "ck", expected_digest=saved[-1], with_state=True)
    assert loaded.state is not None and loaded.state.iteration == 12
    assert loaded.train_config == CONFIG
    fit(loaded.model, data, CONFIG, resume=loaded.state)
    assert torch.equal(_weights(loaded.model), _weights(reference))


def test_exhausted_step_budget_in_training_raises_solver_error() -> None:
    data = GaussianData()
    solver = SolverConfig(rtol=1e-9, atol=1e-9, max_num_steps=2)
    model = init_model("ffjord", SMALL, 2, solver, seed=0)
    with pytest.raises(SolverError, match="max_num_steps"):
        fit(model, data, TrainConfig(iterations=3, batch_size=32, seed=0))


def test_non_finite_loss_raises_solver_error() -> None:
    data = GaussianData()
    data.train = data.train * float("nan")
    model = init_model("ffjord", SMALL, 2, SolverConfig(method="rk4", step_size=0.25), seed=0)
    with pytest.raises(SolverError, match="NaN|non-finite"):
        fit(model, data, TrainConfig(iterations=3, batch_size=32, seed=0))


def test_tampered_checkpoint_is_rejected(tmp_path) -> None:
    model = init_model("ffjord", SMALL, 2, SOLVER, seed=0)
    digest = save_checkpoint(tmp_path / "ck", model)
    assert checkpoint_digest(tmp_path / "ck") == digest
    with pytest.raises(CheckpointError, match="digest"):
        load_checkpoint(tmp_path / "ck", expected_digest="0" * 64)
    weights = tmp_path / "ck" / "model.pt"
    weights.write_bytes(weights.read_bytes()[:-8] + b"corrupt!")
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(tmp_path / "ck")


def test_unknown_format_and_missing_checkpoint(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(tmp_path / "nothing")
    model = init_model("ffjord", SMALL, 2, SOLVER, seed=0)
    save_checkpoint(tmp_path / "ck", model)
    manifest = tmp_path / "ck" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format_version": 99}))
    with pytest.raises(CheckpointError, match="format"):
        load_checkpoint(tmp_path / "ck")


def test_saving_replaces_previous_checkpoint_atomically(tmp_path) -> None:
    model = init_model("ffjord", SMALL, 2, SOLVER, seed=0)
    first = save_checkpoint(tmp_path / "ck", model, metrics={"step": 1})
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    second = save_checkpoint(tmp_path / "ck", model, metrics={"step": 2})
    assert first != second
    # the replaced one is kept, by digest, until the caller has committed the new digest
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".ck.prev-{first}", "ck"]
    assert load_checkpoint(tmp_path / "ck").metrics == {"step": 2}
    assert discard_previous(tmp_path / "ck") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_nfe_means_cover_every_iteration_across_a_resume() -> None:
    """Means over the whole history, the resumed part included; the last count is kept apart."""
    data = GaussianData()
    solver = SolverConfig(method="rk4", step_size=0.5)
    checked = {**SMALL, "step_check_interval": 8}  # iterations 8, 16 and 24 also run the check
    whole = fit(init_model("ffjord", checked, 2, solver, seed=3), data, CONFIG)
    forward = [h["nfe_forward"] for h in whole.history]
    assert whole.nfe_forward_mean == pytest.approx(sum(forward) / 24)
    assert whole.nfe_backward_mean == pytest.approx(sum(h["nfe_backward"] for h in whole.history) / 24)
    assert whole.nfe_forward == forward[-1] > whole.nfe_forward_mean  # the last step ran the check

    model = init_model("ffjord", checked, 2, solver, seed=3)
    snapshots: list[TrainState] = []
    calls = iter(range(1000))
    with pytest.raises(TrainingCanceled):
        fit(model, data, CONFIG, should_stop=lambda: next(calls) >= 14, checkpoint_every=5,
            on_checkpoint=snapshots.append)  # fmt: skip
    events: list[ProgressEvent] = []
    resumed = fit(model, data, CONFIG, resume=snapshots[-1], on_progress=events.append)
    assert [e.iteration for e in events] == list(range(11, 25))
    assert resumed.nfe_metrics() == whole.nfe_metrics()
    assert events[-1].nfe_forward_mean == resumed.nfe_forward_mean
    assert events[0].nfe_forward_mean == pytest.approx(sum(forward[:11]) / 11)
