"""The training loop shared by every model: ``fit`` with progress, cancellation and exact resume.

Models that can score held-out data (``DensityModel.validate``, e.g. the latent ODE's forecast
error) train on a validation split of their data (``TrainConfig.val_fraction``): ``fit`` validates
every ``val_interval`` steps, halves the learning rate on plateaus, stops after ``patience``
validations without improvement and ends with the best weights (``service.ml.early_stopping``).
``iterations`` is then an upper bound. Other models train for exactly ``iterations`` steps. FFJORD
validates on request: ``val_points`` held-out training points scored by their exact NLL.

Objectives (``TrainConfig.objective``): ``likelihood`` minimises the model's own loss
(``DensityModel.training_loss``); ``flow_matching`` regresses a CNF's field onto straight
noise-to-data paths (``service.ml.flow_matching``), for models that list it in ``objectives``.
``ema_decay`` keeps an average of the weights (``service.ml.ema``) that is validated, evaluated,
checkpointed and kept at the end; ``max_seconds`` ends a run early on a time budget (like an early
stop: evaluated and saved as usual); ``lr_schedule="cosine"`` anneals the rate over ``iterations``.

All randomness of a run (batches, Hutchinson probes, posterior samples) comes from one
``torch.Generator`` seeded by ``TrainConfig.seed``; its state is part of ``TrainState``. A run stopped
after iteration ``k`` and resumed from that state therefore ends with exactly the weights of an
uninterrupted run.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from pydantic import BaseModel

from service.ml.early_stopping import EarlyStopping, auto_val_interval, cosine_lr
from service.ml.ema import EMA, averaged
from service.ml.errors import SolverError, TrainingCanceled, TrainingPaused
from service.ml.flow_matching import objective_loss
from service.ml.models import MODELS, DensityModel, build_model
from service.ml.ode import SolverConfig, solver_errors
from service.ml.train_config import TrainConfig

__all__ = [
    "FitResult",
    "ProgressEvent",
    "TrainConfig",
    "TrainState",
    "TrainingData",
    "fit",
    "init_model",
    "resolve_training",
]

EVAL_SEED_OFFSET = 7919  # evaluation draws from its own stream so it never shifts training's


class TrainingData(Protocol):
    """What ``fit`` needs from a dataset (``PointData`` and series data implement it)."""

    test: Any

    def batch(self, batch_size: int, generator: torch.Generator) -> Any: ...


@dataclass(frozen=True)
class ProgressEvent:
    """Reported after every iteration."""

    iteration: int
    total: int
    loss: float
    nfe_forward: int
    nfe_backward: int
    wall_s: float
    stats: Mapping[str, float] = field(default_factory=dict)
    # Means over every iteration of the run so far (a resumed run's earlier ones included).
    nfe_forward_mean: float = 0.0
    nfe_backward_mean: float = 0.0


@dataclass
class TrainState:
    """Everything needed to continue a run bit-for-bit."""

    iteration: int
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    generator_state: torch.Tensor
    history: list[dict[str, float]]
    wall_s: float
    early_stopping: dict[str, Any] | None = None
    ema: dict[str, Any] | None = None  # EMA.state_dict(); model_state then holds the raw weights


@dataclass
class FitResult:
    """``nfe_forward``/``nfe_backward`` are the last iteration's counts; the ``_mean`` ones average
    every recorded iteration (``history``, which a resumed run carries over from its checkpoint)."""

    history: list[dict[str, float]]
    final_loss: float
    metrics: dict[str, float]
    iterations: int
    wall_s: float
    nfe_forward: int
    nfe_backward: int
    state: TrainState
    best_iteration: int = 0
    stopped_early: bool = False
    nfe_forward_mean: float = 0.0
    nfe_backward_mean: float = 0.0

    def nfe_metrics(self) -> dict[str, float]:
        """The run's NFE metrics: ``nfe_{forward,backward}_mean`` and ``nfe_{forward,backward}_last``."""
        return {
            "nfe_forward_mean": self.nfe_forward_mean,
            "nfe_backward_mean": self.nfe_backward_mean,
            "nfe_forward_last": self.nfe_forward,
            "nfe_backward_last": self.nfe_backward,
        }


class _NfeSums:
    """Running NFE totals over a run's history, so means cost O(1) per iteration."""

    def __init__(self, history: list[dict[str, float]]) -> None:
        self.count = len(history)
        self.forward = sum(float(h.get("nfe_forward", 0)) for h in history)
        self.backward = sum(float(h.get("nfe_backward", 0)) for h in history)

    def add(self, forward: int, backward: int) -> None:
        self.count, self.forward, self.backward = (
            self.count + 1,
            self.forward + forward,
            self.backward + backward,
        )

    def means(self) -> tuple[float, float]:
        n = max(1, self.count)
        return self.forward / n, self.backward / n


def init_model(
    name: str,
    model_config: Mapping[str, Any] | BaseModel | None,
    dim: int,
    solver: SolverConfig | None,
    seed: int,
) -> DensityModel:
    """Build a model whose initial weights depend only on ``seed`` (global RNG left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(name, model_config, dim, solver)


def resolve_training(config: TrainConfig, model: type[DensityModel] | str) -> TrainConfig:
    """``config`` with the settings it leaves null (``lr``, ``grad_clip``) set to the model's
    defaults for its objective (``DensityModel.training_defaults``); ``model``: class or name."""
    cls = MODELS[model] if isinstance(model, str) else model
    return config.with_defaults(cls.training_defaults(config.objective))


def _optimizer(model: DensityModel, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    assert config.lr is not None, "resolve_training first"
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def _snapshot(
    model: DensityModel,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    iteration: int,
    history: list[dict[str, float]],
    wall_s: float,
    stopper: EarlyStopping | None,
    ema: EMA | None = None,
) -> TrainState:
    return TrainState(
        iteration=iteration,
        model_state={k: v.detach().clone() for k, v in model.state_dict().items()},
        optimizer_state=copy.deepcopy(optimizer.state_dict()),  # Adam mutates in place
        generator_state=generator.get_state(),
        history=list(history),
        wall_s=wall_s,
        early_stopping=copy.deepcopy(stopper.state_dict()) if stopper is not None else None,
        ema=ema.state_dict() if ema is not None else None,
    )


def _with_validation(model: DensityModel, data: TrainingData, config: TrainConfig) -> TrainingData:
    """``data`` with a validation split when the model can score one and the data can split.

    Point data split off ``val_points`` points (opt-in), series data ``val_fraction`` of the series.
    """
    if not model.can_validate:
        return data
    if model.data_kind == "points":
        split_points = getattr(data, "with_validation_points", None)
        if config.val_points <= 0 or split_points is None:
            return data
        return split_points(config.val_points, config.seed)
    split = getattr(data, "with_validation", None)
    if config.val_fraction <= 0 or split is None:
        return data
    return split(config.val_fraction, config.seed)


def _validate(model: DensityModel, data: TrainingData) -> dict[str, float]:
    was_training = model.training
    model.eval()
    try:
        return dict(model.validate(data.val))  # type: ignore[attr-defined]
    finally:
        model.train(was_training)


def _evaluate(model: DensityModel, data: TrainingData, config: TrainConfig) -> dict[str, float]:
    generator = torch.Generator(device="cpu").manual_seed(config.seed + EVAL_SEED_OFFSET)
    was_training = model.training
    model.eval()
    try:
        metrics = dict(model.evaluate(data.test, generator))
    finally:
        model.train(was_training)
    entropy = getattr(data, "entropy", None)
    if entropy is not None and "test_nll" in metrics:
        metrics["kl_to_truth"] = metrics["test_nll"] - float(entropy)
    return metrics


def fit(
    model: DensityModel,
    data: TrainingData,
    config: TrainConfig,
    *,
    on_progress: Callable[[ProgressEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[TrainState], None] | None = None,
    resume: TrainState | None = None,
) -> FitResult:
    """Train ``model`` on ``data`` for at most ``config.iterations`` steps (see the module doc).

    With a validation split the model ends with its best validated weights, ``metrics`` include
    the best validation metrics plus ``best_iteration``, and the progress event of a step that
    stops the run early has ``total == iteration``.

    Raises:
        TrainingCanceled: ``should_stop()`` returned True (checked before every step).
        TrainingPaused: ``should_stop()`` raised it; the last finished step was checkpointed first.
        SolverError: the ODE solver failed or the loss became non-finite.
    """
    config = resolve_training(config, type(model))
    assert config.lr is not None and config.grad_clip is not None
    data = _with_validation(model, data, config)
    step_loss = objective_loss(model, config.objective, config.coupling)
    optimizer = _optimizer(model, config)
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    held_out = getattr(data, "val", None)
    validating = held_out is not None and len(held_out) > 0
    stopper = (
        EarlyStopping(config.patience, config.lr_patience, config.min_iterations, config.lr)
        if validating
        else None
    )
    val_interval = config.val_interval or auto_val_interval(config.iterations)
    history: list[dict[str, float]] = []
    start_iteration, wall_offset = 0, 0.0
    if resume is not None:
        model.load_state_dict(resume.model_state)
        optimizer.load_state_dict(resume.optimizer_state)
        generator.set_state(resume.generator_state)
        history = list(resume.history)
        start_iteration, wall_offset = resume.iteration, resume.wall_s
        if stopper is not None and resume.early_stopping is not None:
            stopper.load_state_dict(copy.deepcopy(resume.early_stopping))
    else:
        model.prepare(data)
    ema = EMA(model, config.resolved_ema_decay) if config.resolved_ema_decay > 0 else None
    if ema is not None and resume is not None and resume.ema is not None:
        ema.load_state_dict(resume.ema)
    model.train()
    sums = _NfeSums(history)
    started = time.perf_counter()
    metrics: dict[str, float] = {}
    iteration, stopped, last_checkpoint = start_iteration, False, start_iteration
    for iteration in range(start_iteration + 1, config.iterations + 1):
        try:
            stop = should_stop is not None and should_stop()
        except TrainingPaused:
            if on_checkpoint is not None and iteration - 1 > last_checkpoint:
                wall = wall_offset + time.perf_counter() - started
                state = _snapshot(model, optimizer, generator, iteration - 1, history, wall, stopper, ema)
                with averaged(ema, model):
                    on_checkpoint(state)
            raise
        if stop:
            raise TrainingCanceled(f"run canceled before iteration {iteration}", value=iteration)
        optimizer.zero_grad(set_to_none=True)
        if config.lr_schedule == "cosine":
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(config.lr, iteration, config.iterations)
        out = step_loss(data.batch(config.batch_size, generator), generator, iteration)
        loss_value = float(out.loss.detach())
        if not math.isfinite(loss_value):
            raise SolverError(
                f"training diverged: loss is {loss_value} at iteration {iteration}",
                value=loss_value,
                fix="lower training.lr or tighten solver tolerances",
                field="training.lr",
            )
        with solver_errors(model.solver):
            out.loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        if ema is not None:
            ema.update(model)
        nfe_forward, nfe_backward = model.nfe.forward, model.nfe.backward  # before evaluation
        stats = dict(out.stats)
        wall = wall_offset + time.perf_counter() - started
        out_of_time = config.max_seconds is not None and wall >= config.max_seconds
        last = iteration == config.iterations or out_of_time
        if stopper is not None and (iteration % val_interval == 0 or last):
            with averaged(ema, model):  # the best state kept is then the average's
                stats |= {"lr": optimizer.param_groups[0]["lr"], **_validate(model, data)}
                schedule = optimizer if config.lr_schedule == "plateau" else None
                stopped = stopper.update(stats["val_score"], iteration, model, schedule, stats)
        stopped = stopped or out_of_time
        record = {
            "iteration": iteration,
            "wall_s": wall,
            "loss": loss_value,
            "nfe_forward": nfe_forward,
            "nfe_backward": nfe_backward,
            **{k: v for k, v in stats.items() if k not in ("loss",)},
        }
        if config.eval_interval and iteration % config.eval_interval == 0:
            with averaged(ema, model):
                metrics = _evaluate(model, data, config)
            record |= {k: v for k, v in metrics.items()}
        history.append(record)
        sums.add(nfe_forward, nfe_backward)
        if on_progress is not None:
            forward_mean, backward_mean = sums.means()
            on_progress(
                ProgressEvent(
                    iteration=iteration,
                    total=iteration if stopped else config.iterations,
                    loss=loss_value,
                    nfe_forward=nfe_forward,
                    nfe_backward=nfe_backward,
                    wall_s=wall,
                    stats=stats,
                    nfe_forward_mean=forward_mean,
                    nfe_backward_mean=backward_mean,
                )
            )
        if on_checkpoint is not None and checkpoint_every and iteration % checkpoint_every == 0:
            state = _snapshot(model, optimizer, generator, iteration, history, wall, stopper, ema)
            with averaged(ema, model):  # the callback saves the served (averaged) weights
                on_checkpoint(state)
            last_checkpoint = iteration
        if stopped:
            break
    # With an average the final state keeps the raw weights too, so training can go on from it.
    raw_weights = {k: v.detach().clone() for k, v in model.state_dict().items()} if ema else None
    if stopper is not None and stopper.best_state is not None:
        stopper.restore_best(model)
        metrics = {}  # test metrics of the restored weights, not of the last step
    elif ema is not None:
        ema.copy_to(model)
        metrics = {}
    if not metrics or not history or "test_nll" not in history[-1]:
        metrics = _evaluate(model, data, config)
    if stopper is not None:
        best = {k: v for k, v in stopper.best_metrics.items() if k.startswith("val_")}
        metrics |= best | {"best_iteration": stopper.best_iteration, "iterations_run": iteration}
    wall = wall_offset + time.perf_counter() - started
    tail = [h["loss"] for h in history[-10:]]
    last = history[-1] if history else {}
    forward_mean, backward_mean = sums.means()
    state = _snapshot(model, optimizer, generator, iteration, history, wall, stopper, ema)
    if raw_weights is not None:
        state.model_state = raw_weights
    return FitResult(
        history=history,
        final_loss=sum(tail) / len(tail) if tail else float("nan"),
        metrics=metrics,
        iterations=iteration,
        wall_s=wall,
        nfe_forward=int(last.get("nfe_forward", 0)),
        nfe_backward=int(last.get("nfe_backward", 0)),
        state=state,
        best_iteration=stopper.best_iteration if stopper is not None else iteration,
        stopped_early=stopped,
        nfe_forward_mean=forward_mean,
        nfe_backward_mean=backward_mean,
    )
