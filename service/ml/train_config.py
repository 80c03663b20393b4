"""``TrainConfig``: the validated settings of one training run (``training`` in ``POST /train``).

Split from :mod:`service.ml.training`, which re-exports it: length and batch, optimiser and
schedule, validation and early stopping, objective (likelihood or flow matching), weight average
and time budget. Frozen, ``extra="forbid"``; combinations that cannot work fail when built.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["FLOW_MATCHING_EMA", "TrainConfig"]

FLOW_MATCHING_EMA = 0.999  # ema_decay left unset: flow matching's regression targets are noisy


class TrainConfig(BaseModel):
    """Optimisation settings of a run."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    iterations: int = Field(
        1000, ge=1, le=200_000, description="Optimizer steps (an upper bound with early stopping)."
    )
    batch_size: int = Field(256, ge=1, le=65_536, description="Items per step.")
    lr: float | None = Field(
        None,
        gt=0,
        le=1,
        description=(
            "Adam learning rate. null: the model's default (FFJORD 3e-3, with objective "
            "flow_matching 1e-2; latent ODE 1e-2); the run records the rate it used."
        ),
    )
    grad_clip: float | None = Field(
        None,
        ge=0,
        le=1e6,
        description=(
            "Clip the gradient norm to this before each step (0: off). null: the model's default "
            "(latent ODE 1, FFJORD off); the run records the value it used."
        ),
    )
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW weight decay.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seeds init, batches and noise.")
    eval_interval: int = Field(
        0, ge=0, le=200_000, description="Evaluate test NLL every N steps (0: only at the end)."
    )
    val_fraction: float = Field(
        0.2,
        ge=0,
        le=0.5,
        description=(
            "Share of the training series held out for validation (series data; at most 256 "
            "series). 0: train on all and run every iteration."
        ),
    )
    val_interval: int = Field(
        0, ge=0, le=200_000, description="Validate every N steps (0: every iterations/40, 5 to 50)."
    )
    patience: int = Field(
        300,
        ge=0,
        le=200_000,
        description="Stop after this many steps without a better validation score (0: never).",
    )
    min_iterations: int = Field(
        300, ge=0, le=200_000, description="No early stop or LR drop before this step."
    )
    lr_schedule: Literal["plateau", "constant", "cosine"] = Field(
        "plateau",
        description=(
            "plateau: halve lr after lr_patience steps without a better validation score (down "
            "to lr/64; needs validation, without it lr is constant); constant: keep lr; cosine: "
            "anneal lr to lr/100 over iterations."
        ),
    )
    lr_patience: int = Field(
        100, ge=1, le=200_000, description="Steps without improvement per plateau LR halving."
    )
    objective: Literal["likelihood", "flow_matching"] = Field(
        "likelihood",
        description=(
            "likelihood: maximise the model's log-likelihood (FFJORD solves the ODE every step); "
            "flow_matching (FFJORD only): conditional flow matching on straight noise-to-data paths, "
            "one net evaluation per step and no ODE solve; served the same way."
        ),
    )
    coupling: Literal["independent", "ot"] | None = Field(
        None,
        description=(
            "flow_matching only: how base draws pair with data in a batch. ot (null: the "
            "default): exact minibatch optimal transport, straighter paths; independent: as drawn."
        ),
    )
    ema_decay: float | None = Field(
        None,
        ge=0,
        lt=1,
        description=(
            "Decay of the weight average that is validated, evaluated and served (0: off; "
            f"null: {FLOW_MATCHING_EMA} for flow_matching, off for likelihood)."
        ),
    )
    max_seconds: float | None = Field(
        None, gt=0, le=7 * 86_400, description="Time budget: stop after this many training seconds."
    )
    val_points: int = Field(
        0,
        ge=0,
        le=10_000,
        description=(
            "Point data: hold out this many training points, score their exact NLL every "
            "val_interval steps, early-stop and keep the best weights (0: no validation)."
        ),
    )

    @model_validator(mode="after")
    def _coupling_needs_flow_matching(self) -> TrainConfig:
        if self.coupling is not None and self.objective != "flow_matching":
            raise ValueError(
                f"training.coupling {self.coupling!r} applies only to objective flow_matching: "
                "set training.objective to flow_matching or drop training.coupling"
            )
        return self

    def with_defaults(self, defaults: dict[str, float]) -> TrainConfig:
        """This config with its unset (null) ``lr`` / ``grad_clip`` taken from ``defaults``."""
        update = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        return self.model_copy(update=update) if update else self

    @property
    def resolved_ema_decay(self) -> float:
        """The EMA decay in effect (0: no average)."""
        if self.ema_decay is not None:
            return self.ema_decay
        return FLOW_MATCHING_EMA if self.objective == "flow_matching" else 0.0
