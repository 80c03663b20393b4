"""The configuration of an FFJORD model (``FFJORDConfig``) and what it implies for memory.

Split from :mod:`service.ml.models.ffjord`, which re-exports ``FFJORDConfig``: the architecture,
divergence estimator, RNODE penalties, integration time and step check of a flow, validated when
built, and the per-point float counts the memory budgets use.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.ml.models.base import Width
from service.ml.trace import supports_closed_form

__all__ = ["DEFAULT_MAX_INTEGRATION_TIME", "FFJORDConfig", "closed_form_trace", "lean_floats"]

# A learnt T stops here unless configured otherwise: 4 rk4 steps of the default 0.5
# (benchmarks/bench_train.py: as good as an unbounded T, with fewer NFE once T would pass it).
DEFAULT_MAX_INTEGRATION_TIME = 2.0
MIN_DEFAULT_WIDTH, MAX_DEFAULT_WIDTH, DEFAULT_LAYERS = 64, 512, 2
# hidden_dims=None: two layers of 4 D, at least 64. digits (D = 64) with flow matching and fresh
# dequantisation in 60 s (benchmarks/bench_tabular.py): 2x64 0.855 nats/dim, 2x256 0.713, 2x512
# overfits sooner; below D = 16 the width stays the measured 2x64 of the toys.


class FFJORDConfig(BaseModel):
    """Architecture and estimator choices of an FFJORD model."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    hidden_dims: tuple[Width, ...] | None = Field(
        None,
        min_length=1,
        max_length=8,
        description=(
            "Widths of the hidden layers. null: two layers of max(64, 4 D) for D-dimensional data "
            "(64 up to D = 16, 256 at D = 64)."
        ),
    )
    time_conditioning: Literal["concatsquash", "positional"] = Field(
        "concatsquash",
        description="How t enters the net: concat-squash layers or sin/cos encoding.",
    )
    num_frequencies: int = Field(4, ge=1, le=16, description="Frequencies of the positional encoding.")
    activation: Literal["tanh", "softplus", "elu", "relu"] = "tanh"
    divergence: Literal["exact", "hutchinson"] = Field(
        "exact", description="Trace estimator used in training (serving always uses exact)."
    )
    hutchinson_noise: Literal["gaussian", "rademacher"] = "gaussian"
    integration_time: float = Field(0.5, gt=0, le=100, description="Initial end time T.")
    learn_integration_time: bool = Field(True, description="Train T along with the net.")
    max_integration_time: float | None = Field(
        DEFAULT_MAX_INTEGRATION_TIME,
        gt=0,
        le=100,
        description="Upper bound on a learnt T (null: none; not given: 2, or integration_time if larger). "
        "The RNODE penalties favour a longer, slower flow, so a learnt T keeps growing, and with it "
        "the steps per solve.",
    )
    kinetic_weight: float = Field(0.01, ge=0, le=1e3, description="RNODE kinetic-energy weight.")
    jacobian_weight: float = Field(0.01, ge=0, le=1e3, description="RNODE Jacobian-norm weight.")
    step_check_interval: int = Field(
        100,
        ge=0,
        le=100_000,
        description="Fixed-step training: compare the batch NLL with the adaptive solver's every N "
        "steps (0: never).",
    )
    step_tolerance: float = Field(
        0.02,
        gt=0,
        le=10,
        description="Fixed-step training: shrink the step when that gap exceeds this (nats).",
    )

    # What configs stored before a field existed (checkpoints, run rows) meant: no cap on T.
    LEGACY_DEFAULTS: ClassVar[dict[str, Any]] = {"max_integration_time": None}

    @model_validator(mode="before")
    @classmethod
    def _default_cap_covers_the_start(cls, data: Any) -> Any:
        if isinstance(data, dict) and "max_integration_time" not in data:
            start = data.get("integration_time")
            if (
                isinstance(start, int | float)
                and not isinstance(start, bool)
                and start > DEFAULT_MAX_INTEGRATION_TIME
            ):
                return {**data, "max_integration_time": start}
        return data

    @model_validator(mode="after")
    def _cap_not_below_start(self) -> FFJORDConfig:
        cap = self.max_integration_time
        if cap is not None and cap < self.integration_time:
            raise ValueError(
                f"max_integration_time ({cap:g}) is below integration_time ({self.integration_time:g}): "
                "raise max_integration_time or lower integration_time"
            )
        return self

    def widths(self, dim: int) -> tuple[int, ...]:
        """The hidden widths for ``dim``-dimensional data: ``hidden_dims``, or the default for ``dim``."""
        if self.hidden_dims is not None:
            return tuple(self.hidden_dims)
        width = min(MAX_DEFAULT_WIDTH, max(MIN_DEFAULT_WIDTH, 4 * dim))
        return (width,) * DEFAULT_LAYERS

    @property
    def layers(self) -> int:
        """Number of hidden layers (the default's depth does not depend on the data dimension)."""
        return DEFAULT_LAYERS if self.hidden_dims is None else len(self.hidden_dims)

    @property
    def regularized(self) -> bool:
        return self.kinetic_weight > 0 or self.jacobian_weight > 0


def closed_form_trace(config: FFJORDConfig) -> bool:
    """Whether the exact trace of this architecture has the closed form of :mod:`service.ml.trace`."""
    return supports_closed_form(config.layers, config.time_conditioning == "concatsquash")


def lean_floats(config: FFJORDConfig, dim: int) -> int:
    """Floats per point of a no-grad exact-trace solve: the lean net's states and slopes (closed
    form: plus one bilinear-form row) or its tangent buffers, and dopri5's stages of ``(x, logdet)``."""
    hidden = sum(config.widths(dim))
    if closed_form_trace(config):
        return 3 * hidden + dim + 12 * (dim + 1)
    return (1 + dim) * (2 * dim + hidden) + hidden + 12 * (dim + 1)
