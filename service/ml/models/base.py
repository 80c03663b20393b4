"""The one model contract: every registered model is a ``DensityModel``.

A model is built from ``(config, dim, solver)``; it reports log-densities (or a likelihood bound),
draws samples with an explicit ``torch.Generator``, computes its own training loss on a batch and
evaluates itself on held-out data. The training loop, checkpoints, API and worker use nothing else,
so adding a model is one file plus one registry line.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from service.ml.ode import NfeCounter, SolverConfig

__all__ = ["LOG_2PI", "DensityModel", "LossOutput", "Width", "standard_normal_log_prob"]

Width = Annotated[int, Field(ge=1, le=1024)]
"""A hidden-layer width accepted in model configs."""

LOG_2PI = math.log(2 * math.pi)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """``log N(z; 0, I)`` summed over the last axis: ``(..., D) -> (...)``."""
    return -0.5 * (z.square() + LOG_2PI).sum(-1)


@dataclass
class LossOutput:
    """A scalar loss to minimise plus named floats for the progress log."""

    loss: Tensor
    stats: dict[str, float] = field(default_factory=dict)


class DensityModel(nn.Module, ABC):
    """Base class. Subclasses set ``name``, ``config_class`` and ``data_kind``."""

    name: ClassVar[str]
    config_class: ClassVar[type[BaseModel]]
    data_kind: ClassVar[str] = "points"
    # The solver a run gets when its request names none (per model: the measured winner).
    default_solver: ClassVar[SolverConfig] = SolverConfig()
    # Set by serving: the bounded solver of no-grad queries (None: ``solver``, as in training).
    query_solver: SolverConfig | None = None

    def __init__(self, config: BaseModel, dim: int, solver: SolverConfig) -> None:
        super().__init__()
        self.config = config
        self.dim = dim
        self.solver = solver
        self.nfe = NfeCounter()

    @abstractmethod
    def log_prob(self, x: Any) -> Tensor:
        """Log-density (or its lower bound) of each item of a batch, shape ``(B,)``."""

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator | None = None, **kwargs: Any) -> Tensor:
        """``n`` samples drawn with ``generator``."""

    @abstractmethod
    def training_loss(self, batch: Any, generator: torch.Generator, iteration: int) -> LossOutput:
        """Loss of one training batch; randomness only from ``generator``."""

    @abstractmethod
    def evaluate(self, data: Any, generator: torch.Generator) -> dict[str, float]:
        """Held-out metrics, at least ``test_nll`` (nats per item)."""

    @classmethod
    def training_bytes_per_item(cls, config: BaseModel, dim: int, solver: SolverConfig) -> int | None:
        """Estimated peak bytes one batch item adds to a training step (None: no estimate).

        Checked against ``ODESERVE_TRAIN_MEMORY_BYTES`` when a run is accepted (``service.ml.memory``)."""
        return None

    def query_bytes_per_item(self, kind: str) -> int:
        """Estimated peak bytes one point (``kind`` "density") or one sample ("sample") adds to a
        no-grad query; serving splits larger queries into chunks within its budget (0: unbounded)."""
        return 0

    # Training objectives ``fit`` accepts for this model (``TrainConfig.objective``); a model that
    # lists "flow_matching" implements ``standardise``, ``velocity`` and ``end_time``.
    objectives: ClassVar[tuple[str, ...]] = ("likelihood",)

    @classmethod
    def training_defaults(cls, objective: str) -> dict[str, float]:
        """``TrainConfig`` values this model takes where a run leaves them null (``lr``, ``grad_clip``)."""
        return {"lr": 3e-3, "grad_clip": 0.0}

    # True for models whose ``validate`` scores held-out items; ``fit`` then early-stops on it.
    can_validate: ClassVar[bool] = False

    def validate(self, items: Any) -> dict[str, float]:
        """Held-out score of ``items``: at least ``val_score`` (lower is better), other ``val_*`` keys.

        Only called when ``can_validate``; the model may record the numbers (e.g. in buffers) so a
        checkpoint of the best weights carries them.
        """
        raise NotImplementedError(f"{self.name} does not validate")

    def prepare(self, data: Any) -> None:  # noqa: B027 - optional hook
        """Called by ``fit`` once before the first step (e.g. to fit a data normalisation)."""

    def describe(self) -> dict[str, Any]:
        """What a checkpoint needs to rebuild this model."""
        return {
            "model": self.name,
            "dim": self.dim,
            "model_config": self.config.model_dump(mode="json"),
            "solver": self.solver.model_dump(mode="json"),
        }
