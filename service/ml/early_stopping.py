"""Early stopping on a validation score, with the learning rate halved on plateaus.

``fit`` calls :meth:`EarlyStopping.update` with the model's validation score (lower is better, e.g.
the latent ODE's forecast error on held-out series) every ``val_interval`` steps. The best weights
are kept. From step ``min_iterations`` on (latent ODEs typically predict the mean for a few hundred
steps before they learn the dynamics), a run whose score has not improved for ``lr_patience``
steps halves its learning rate (down to ``MIN_LR_FACTOR`` of the initial one, at most once per
``lr_patience`` steps), and one that has not improved for ``patience`` steps stops. The whole
state round-trips through :meth:`state_dict`, so a resumed run takes the same decisions as an
uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["MIN_LR_FACTOR", "EarlyStopping", "auto_val_interval", "cosine_lr"]

MIN_LR_FACTOR = 1 / 64
"""The plateau schedule never lowers the learning rate below this fraction of its initial value."""
MIN_IMPROVEMENT = 1e-3
"""A score counts as better only if it is this much (relative) below the best so far."""


def auto_val_interval(iterations: int) -> int:
    """Steps between validations when the config leaves it at 0: about 40 per run, 5 to 50 steps."""
    return max(5, min(50, iterations // 40))


def cosine_lr(lr: float, iteration: int, iterations: int) -> float:
    """``lr`` annealed along half a cosine from ``lr`` (step 1) to ``lr / 100`` (step ``iterations``).

    A function of the step alone, so a resumed run gets the same rates (Loshchilov & Hutter,
    arXiv:1608.03983, without restarts)."""
    progress = (iteration - 1) / max(1, iterations - 1)
    floor = lr / 100
    return floor + 0.5 * (lr - floor) * (1 + math.cos(math.pi * progress))


@dataclass
class EarlyStopping:
    """Tracks the best validation score and its weights; decides LR drops and when to stop.

    ``patience``, ``lr_patience`` and ``min_iterations`` count optimizer steps; ``patience == 0``
    never stops.
    """

    patience: int
    lr_patience: int
    min_iterations: int
    initial_lr: float
    best_score: float = math.inf
    best_iteration: int = 0
    last_drop: int = 0
    best_state: dict[str, Tensor] | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)

    def update(
        self,
        score: float,
        iteration: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        metrics: dict[str, float] | None = None,
    ) -> bool:
        """Record one validation; returns True when training should stop.

        ``optimizer`` is None for a constant learning rate. A non-finite score never counts as best.
        """
        if math.isfinite(score) and score < self.best_score * (1 - MIN_IMPROVEMENT):
            self.best_score, self.best_iteration = score, iteration
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.best_metrics = dict(metrics or {})
            return False
        if iteration < self.min_iterations:
            return False
        quiet = iteration - max(self.best_iteration, self.last_drop)
        if optimizer is not None and quiet >= self.lr_patience:
            floor = self.initial_lr * MIN_LR_FACTOR
            for group in optimizer.param_groups:
                group["lr"] = max(floor, group["lr"] * 0.5)
            self.last_drop = iteration
        return bool(self.patience) and iteration - self.best_iteration >= self.patience

    def restore_best(self, model: nn.Module) -> None:
        """Load the best weights seen into ``model`` (no-op before the first validation)."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors, floats and ints (loadable with ``torch.load(weights_only=True)``)."""
        return {
            "best_score": self.best_score,
            "best_iteration": self.best_iteration,
            "last_drop": self.last_drop,
            "best_state": self.best_state,
            "best_metrics": dict(self.best_metrics),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_score = float(state["best_score"])
        self.best_iteration = int(state["best_iteration"])
        self.last_drop = int(state["last_drop"])
        self.best_state = state["best_state"]
        self.best_metrics = dict(state.get("best_metrics", {}))
